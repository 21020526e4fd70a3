//! Per-endpoint transforms: a jq program (run by `jaq`) that turns the
//! envelope into the envelope to send, or drops the event for that endpoint.
//!
//! A program is compiled once, when the config is loaded; an invalid one is a
//! config error. Running it yields at most one value: `null` or no output
//! drops the event, an object is the envelope to send, anything else (or a
//! second output, or a jq error) is a transform error.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use std::fmt;

type Data = data::JustLut<Val>;

/// Native filters transforms may not use.
const DENIED: [&str; 6] = [
    "env",
    "halt",
    "input",
    "inputs",
    "stderr_empty",
    "debug_empty",
];

/// What replaces them.
const SANDBOX: &str = r#"
def env: error("env is not available in hookpost transforms");
def halt($code): error("halt is not available in hookpost transforms");
def input: error("input is not available in hookpost transforms");
def inputs: error("inputs is not available in hookpost transforms");
def stderr_empty: empty;
def debug_empty: empty;
"#;

/// A compiled jq program.
pub struct Transform {
    source: String,
    filter: jaq_core::compile::Filter<jaq_core::Native<Data>>,
}

/// What a transform made of one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send this JSON (an object) instead of the original envelope.
    Send(Vec<u8>),
    /// Drop the event for this endpoint.
    Drop,
}

/// Why a transform could not be compiled or failed on an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(String);

/// Longest program accepted, in bytes. With `COMPILE_STACK_BYTES` it
/// bounds how deeply a program can nest: jaq parses and compiles
/// recursively, and a program of thousands of nested brackets would
/// overflow an ordinary thread's stack, which aborts the process.
pub const MAX_PROGRAM_BYTES: usize = 16 * 1024;

/// Stack of the thread that compiles a program (reserved, touched only as
/// deep as the program nests; 8,000 nested brackets, the most that fit in
/// [`MAX_PROGRAM_BYTES`], need about half of it in a debug build).
const COMPILE_STACK_BYTES: usize = 256 << 20;

impl Transform {
    /// Parses and compiles `source` on a thread of its own with a large
    /// stack, so no program text can overflow the caller's stack.
    ///
    /// # Errors
    /// A program over [`MAX_PROGRAM_BYTES`], a syntax error or an undefined
    /// name, with the offending text.
    pub fn compile(source: &str) -> Result<Self, TransformError> {
        if source.len() > MAX_PROGRAM_BYTES {
            return Err(TransformError(format!(
                "the program is {} bytes; the limit is {MAX_PROGRAM_BYTES}",
                source.len()
            )));
        }
        let owned = source.to_owned();
        std::thread::Builder::new()
            .name("jq-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || Self::compile_here(&owned))
            .map_err(|e| TransformError(format!("cannot start the compiler thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(TransformError("the compiler failed".to_owned())))
    }

    /// Compiles on the calling thread, which needs a deep enough stack (the
    /// transform sandbox's worker, whose memory is limited, uses this).
    ///
    /// # Errors
    /// As [`Transform::compile`]; a program that nests too deeply for the
    /// stack overflows it.
    pub fn compile_here(source: &str) -> Result<Self, TransformError> {
        // Filters that reach outside the event (the process environment,
        // standard error, further inputs) or end the process are replaced by
        // definitions that fail or do nothing.
        let sandbox = jaq_core::load::parse(SANDBOX, |p| p.defs())
            .unwrap_or_else(|| unreachable!("the sandbox definitions parse"));
        let defs = jaq_core::defs()
            .chain(sandbox)
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !DENIED.contains(name));
        let arena = Arena::default();
        let program = File {
            code: source,
            path: (),
        };
        let modules = Loader::new(defs)
            .load(&arena, program)
            .map_err(|errors| TransformError(describe_load(&errors)))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let names: Vec<String> = errors
                    .iter()
                    .flat_map(|(_, errs)| errs.iter())
                    .map(|(name, kind)| format!("undefined {} `{name}`", undefined_kind(kind)))
                    .collect();
                TransformError(names.join("; "))
            })?;
        Ok(Self {
            source: source.to_owned(),
            filter,
        })
    }

    /// The program as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the program on one envelope (JSON bytes).
    ///
    /// # Errors
    /// The input is not JSON, jq raised an error, or the output is not one
    /// object (or `null`).
    pub fn apply(&self, envelope: &[u8]) -> Result<Outcome, TransformError> {
        let input = jaq_json::read::parse_single(envelope)
            .map_err(|e| TransformError(format!("input is not JSON: {e}")))?;
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input)).map(unwrap_valr);
        let first = match outputs.next() {
            None => return Ok(Outcome::Drop),
            Some(Err(e)) => return Err(TransformError(format!("jq error: {e}"))),
            Some(Ok(v)) => v,
        };
        if outputs.next().is_some() {
            return Err(TransformError(
                "the program produced more than one value (wrap it in [...] or use first(...))"
                    .to_owned(),
            ));
        }
        match first {
            Val::Null => Ok(Outcome::Drop),
            Val::Obj(_) => Ok(Outcome::Send(first.to_string().into_bytes())),
            other => Err(TransformError(format!(
                "the program must produce an object or null, not {}",
                kind_of(&other)
            ))),
        }
    }
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Transform").field(&self.source).finish()
    }
}

impl PartialEq for Transform {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn kind_of(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "a boolean",
        Val::Obj(_) => "an object",
        Val::Arr(_) => "an array",
        Val::Num(_) => "a number",
        _ => "a string",
    }
}

fn undefined_kind(kind: &jaq_core::compile::Undefined) -> &'static str {
    use jaq_core::compile::Undefined;
    match kind {
        Undefined::Mod => "module",
        Undefined::Var => "variable",
        Undefined::Label => "label",
        Undefined::Filter(_) => "filter",
        _ => "name",
    }
}

fn describe_load(errors: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_, error) in errors {
        match error {
            Error::Io(errs) => out.extend(errs.iter().map(|(path, e)| format!("{path}: {e}"))),
            Error::Lex(errs) => {
                out.extend(errs.iter().map(|(expect, at)| {
                    format!("expected {} at `{}`", expect.as_str(), snippet(at))
                }))
            }
            Error::Parse(errs) => {
                out.extend(errs.iter().map(|(expect, at)| {
                    format!("expected {} at `{}`", expect.as_str(), snippet(at))
                }))
            }
        }
    }
    if out.is_empty() {
        "invalid program".to_owned()
    } else {
        format!("syntax error: {}", out.join("; "))
    }
}

/// The start of the text where an error was found (or "end of program").
fn snippet(at: &str) -> String {
    if at.is_empty() {
        return "end of program".to_owned();
    }
    at.chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn run(program: &str, input: &Value) -> Result<Option<Value>, TransformError> {
        let t = Transform::compile(program).expect("compiles");
        match t.apply(&serde_json::to_vec(input).expect("json"))? {
            Outcome::Drop => Ok(None),
            Outcome::Send(bytes) => Ok(Some(serde_json::from_slice(&bytes).expect("json out"))),
        }
    }

    fn envelope() -> Value {
        json!({"id": "e1", "type": "order.created", "timestamp": "2026-11-29T00:00:00Z",
               "data": {"order": 7, "email": "a@b.c", "total": 120}})
    }

    #[test]
    fn adds_deletes_renames_fields() {
        let out = run(".data.source = \"shop\" | del(.data.email) | .data.amount = .data.total | del(.data.total)", &envelope())
            .expect("runs")
            .expect("kept");
        assert_eq!(
            out["data"],
            json!({"order": 7, "source": "shop", "amount": 120})
        );
        assert_eq!(out["id"], "e1");
    }

    #[test]
    fn filters_by_type_and_data() {
        assert_eq!(
            run("select(.type == \"order.paid\")", &envelope()),
            Ok(None)
        );
        assert!(
            run("select(.data.total > 100)", &envelope())
                .expect("runs")
                .is_some()
        );
        assert_eq!(
            run("if .data.total > 500 then . else null end", &envelope()),
            Ok(None)
        );
        assert_eq!(run("empty", &envelope()), Ok(None));
    }

    #[test]
    fn readme_examples_run() {
        let out = run(
            "{id, type, order: .data.order, at: .timestamp}",
            &envelope(),
        )
        .expect("runs")
        .expect("kept");
        assert_eq!(
            out,
            json!({"id": "e1", "type": "order.created", "order": 7, "at": "2026-11-29T00:00:00Z"})
        );
        // "e1" = 101 + 49 = 150: kept by a 1-in-10 sample, dropped by 1-in-7.
        assert!(
            run("select((.id | explode | add) % 10 == 0)", &envelope())
                .expect("runs")
                .is_some()
        );
        assert_eq!(
            run("select((.id | explode | add) % 7 == 0)", &envelope()),
            Ok(None)
        );
        let out = run("del(.data.email, .data.total)", &envelope())
            .expect("runs")
            .expect("kept");
        assert_eq!(out["data"], json!({"order": 7}));
    }

    #[test]
    fn errors_are_reported() {
        let e = run("error(\"boom\")", &envelope()).expect_err("jq error");
        assert!(e.to_string().contains("boom"), "{e}");
        let e = run(".data.total", &envelope()).expect_err("not an object");
        assert!(e.to_string().contains("a number"), "{e}");
        let e = run(".[]", &envelope()).expect_err("several outputs");
        assert!(e.to_string().contains("more than one"), "{e}");
        let e = run(".data.order + \"x\"", &envelope()).expect_err("type error");
        assert!(e.to_string().starts_with("jq error"), "{e}");
    }

    #[test]
    fn invalid_programs_do_not_compile() {
        let e = Transform::compile(".data | ").expect_err("syntax");
        assert!(e.to_string().contains("syntax error"), "{e}");
        let e = Transform::compile("nosuchfilter(1)").expect_err("undefined");
        assert!(e.to_string().contains("nosuchfilter"), "{e}");
        let e = Transform::compile("$nope").expect_err("undefined variable");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn cannot_reach_outside_the_event_or_end_the_process() {
        for (program, words) in [
            (".data.env = env", "env is not available"),
            ("{e: $ENV}", "ENV"),
            ("halt", "halt is not available"),
            ("halt_error", "halt is not available"),
            ("halt_error(1)", "halt is not available"),
            ("input", "input is not available"),
            ("[inputs]", "inputs is not available"),
        ] {
            let e = match Transform::compile(program) {
                Err(e) => e,
                Ok(t) => t.apply(br#"{"id":"e1","data":{}}"#).expect_err(program),
            };
            assert!(e.to_string().contains(words), "{program}: {e}");
        }
        // debug and stderr are accepted and write nothing.
        let out = run("debug | stderr | .data.ok = true", &envelope())
            .expect("runs")
            .expect("kept");
        assert_eq!(out["data"]["ok"], true);
    }

    #[test]
    fn deeply_nested_programs_compile_without_overflowing_the_stack() {
        // Each of these aborted the process (stack overflow) when compiled
        // on an ordinary 2 MiB thread.
        let half = MAX_PROGRAM_BYTES / 2;
        for program in [
            format!("{}.{}", "[".repeat(half - 1), "]".repeat(half - 1)),
            format!("{}1", "-".repeat(MAX_PROGRAM_BYTES - 1)),
            format!("{}.", "try ".repeat(MAX_PROGRAM_BYTES / 4 - 1)),
            format!("{}.", ". | ".repeat(MAX_PROGRAM_BYTES / 4 - 1)),
        ] {
            assert!(program.len() <= MAX_PROGRAM_BYTES);
            let _ = Transform::compile(&program);
        }
        let e = Transform::compile(&".".repeat(MAX_PROGRAM_BYTES + 1)).expect_err("too long");
        assert!(e.to_string().contains("limit is 16384"), "{e}");
    }

    #[test]
    fn is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Transform>();
    }
}
