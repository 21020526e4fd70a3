//! From text to [`RawConfig`]: TOML parsing, `${VAR}` interpolation in string
//! values, then `HOOKPOST_<SECTION>_<KEY>` overrides, then deserialization
//! with the path of any bad key kept for the message.

use super::raw::RawConfig;
use std::path::{Path, PathBuf};

/// Sections that `HOOKPOST_<SECTION>_<KEY>` variables may override.
const OVERRIDABLE_SECTIONS: [&str; 7] = [
    "amqp", "metrics", "http", "defaults", "ingest", "api", "registry",
];
/// `HOOKPOST_*` variables that are not overrides.
const RESERVED_VARS: [&str; 2] = ["HOOKPOST_CONFIG", "HOOKPOST_LOG"];

/// A configuration that cannot be used. Messages name the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: cannot read the config file: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: not valid TOML: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A `${VAR}` names a variable that is not set.
    #[error("{}: key `{key}`: environment variable `{var}` is not set", file.display())]
    MissingVar {
        /// The file.
        file: PathBuf,
        /// The key whose value uses it.
        key: String,
        /// The variable.
        var: String,
    },
    /// A key is unknown, has the wrong type or a bad value.
    #[error("{}: key `{key}`: {message}", file.display())]
    Invalid {
        /// The file, or the environment variable that set the key.
        file: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses `text`, interpolating and overriding from `env`.
///
/// # Errors
/// See [`ConfigError`].
pub fn parse(
    text: &str,
    origin: &Path,
    env: &[(String, String)],
) -> Result<RawConfig, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                file: origin.to_path_buf(),
                message: syntax_message(text, &e),
            })?;
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for (key, value) in &mut table {
        interpolate_value(value, key, &lookup).map_err(|(key, var)| ConfigError::MissingVar {
            file: origin.to_path_buf(),
            key,
            var,
        })?;
    }
    let mut overridden = Vec::new();
    for (var, value) in env {
        let Some((section, key)) = override_target(var) else {
            continue;
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(ConfigError::Invalid {
                file: origin.to_path_buf(),
                key: section,
                message: "must be a table".into(),
            });
        };
        section_table.insert(key.clone(), override_value(value));
        overridden.push((format!("{section}.{key}"), var.clone()));
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        // A key set by a variable is reported against the variable, not the file.
        let file = overridden
            .iter()
            .find(|(k, _)| key == *k || key.starts_with(&format!("{k}[")))
            .map_or_else(
                || origin.to_path_buf(),
                |(_, var)| PathBuf::from(format!("environment variable {var}")),
            );
        let message = redact_strings(e.into_inner().to_string().trim_end());
        ConfigError::Invalid { file, key, message }
    })
}

/// The parser's message with line and column, without the source line
/// (which may hold a password or a token).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// Replaces every string value serde quotes in a message (`string "..."`)
/// with `string (value not shown)`: the value may be a secret.
pub fn redact_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("string (value not shown)");
        let after = &rest[at + "string \"".len()..];
        // serde writes the value with Rust escapes, so the first unescaped quote ends it.
        let mut end = after.len();
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `HOOKPOST_DEFAULTS_MAX_RETRIES` → `("defaults", "max_retries")`.
fn override_target(var: &str) -> Option<(String, String)> {
    let rest = var.strip_prefix("HOOKPOST_")?;
    if RESERVED_VARS.contains(&var) {
        return None;
    }
    let lower = rest.to_ascii_lowercase();
    OVERRIDABLE_SECTIONS.iter().find_map(|section| {
        let key = lower.strip_prefix(section)?.strip_prefix('_')?;
        (!key.is_empty()).then(|| ((*section).to_owned(), key.to_owned()))
    })
}

/// An override is read as a TOML value (`3`, `true`, `["10.0.0.0/8"]`), else taken as a string.
fn override_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// Replaces `${VAR}` (and `${VAR:-default}`) in every string under `value`;
/// `$$` is a literal `$`. Errors are `(key, variable)`.
fn interpolate_value(
    value: &mut toml::Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) => {
            *s = interpolate(s, lookup).map_err(|var| (key.to_owned(), var))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{i}]"), lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                interpolate_value(v, &format!("{key}.{k}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Interpolates one string; the error is the missing variable's name.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
        {
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.to_owned()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
