//! The transform worker's side of the sandbox ([`super`]): the
//! process `hookpost-dispatcher transform-worker` that confines itself
//! (address space, no core, lower priority, death with the dispatcher) and
//! answers requests on its pipes.

use super::{CACHED_PROGRAMS, TAG_DROP, TAG_ERROR, TAG_SEND, WORKER_ARG};
use crate::transform::{Outcome, Transform};
use std::collections::HashMap;
use std::io::{Read, Write};

/// The worker process: `hookpost-dispatcher transform-worker MEMORY_BYTES
/// MAX_OUTPUT_BYTES PARENT_PID`. Sets its limits, then answers requests on
/// standard input until it closes. Returns the exit code.
pub fn worker_main(args: &[String]) -> i32 {
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let (Some(memory), Some(max_output), Some(parent)) = (number(0), number(1), number(2)) else {
        eprintln!(
            "usage: hookpost-dispatcher {WORKER_ARG} MEMORY_BYTES MAX_OUTPUT_BYTES PARENT_PID"
        );
        return 2;
    };
    if let Err(e) = confine(memory, parent) {
        eprintln!("cannot set the worker's limits: {e}");
        return 1;
    }
    // Programs compile and run on a thread whose stack is a quarter of the
    // memory limit: deep recursion ends there, as a stack overflow.
    let stack = usize::try_from(memory / 4).unwrap_or(usize::MAX);
    match std::thread::Builder::new()
        .name("transform".into())
        .stack_size(stack)
        .spawn(move || serve(max_output))
    {
        Ok(thread) => thread.join().unwrap_or(1),
        Err(e) => {
            eprintln!("cannot start the transform thread: {e}");
            1
        }
    }
}

/// Answers requests on standard input until it closes.
fn serve(max_output: u64) -> i32 {
    let mut programs: HashMap<String, Result<Transform, String>> = HashMap::new();
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    loop {
        let Ok(program) = read_part(&mut stdin) else {
            return 0;
        };
        let Ok(input) = read_part(&mut stdin) else {
            return 0;
        };
        let program = String::from_utf8_lossy(&program).into_owned();
        if programs.len() >= CACHED_PROGRAMS && !programs.contains_key(&program) {
            programs.clear();
        }
        let compiled = programs.entry(program).or_insert_with_key(|source| {
            Transform::compile_here(source).map_err(|e| e.to_string())
        });
        let (tag, bytes) = match compiled {
            Err(e) => (TAG_ERROR, e.clone().into_bytes()),
            Ok(t) => match t.apply(&input) {
                Ok(Outcome::Send(out)) if out.len() as u64 > max_output => (
                    TAG_ERROR,
                    format!(
                        "the transform's output ({} bytes) is over amqp.max_message_bytes ({max_output})",
                        out.len()
                    )
                    .into_bytes(),
                ),
                Ok(Outcome::Send(out)) => (TAG_SEND, out),
                Ok(Outcome::Drop) => (TAG_DROP, Vec::new()),
                Err(e) => (TAG_ERROR, e.to_string().into_bytes()),
            },
        };
        let written = stdout
            .write_all(&[tag])
            .and_then(|()| stdout.write_all(&(bytes.len() as u32).to_le_bytes()))
            .and_then(|()| stdout.write_all(&bytes))
            .and_then(|()| stdout.flush());
        if written.is_err() {
            return 0;
        }
    }
}

pub(super) fn read_part(from: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len)?;
    let mut buf = vec![0; u32::from_le_bytes(len) as usize];
    from.read_exact(&mut buf)?;
    Ok(buf)
}

/// Limits the worker itself: address space, no core files, a lower CPU
/// priority than the dispatcher, and death with its parent.
#[cfg(target_os = "linux")]
fn confine(memory_bytes: u64, parent: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, Signal, setrlimit};
    let limit = |n: u64| Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    setrlimit(Resource::As, limit(memory_bytes))?;
    setrlimit(Resource::Core, limit(0))?;
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    // A parent that died before the line above would never signal. (The
    // dispatcher may itself be PID 1, in a container: compare with its pid.)
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if u64::try_from(ppid).ok() != Some(parent) {
        return Err(std::io::Error::other("the dispatcher is gone"));
    }
    rustix::process::setpriority_process(None, 10)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn confine(_memory_bytes: u64, _parent: u64) -> std::io::Result<()> {
    Ok(())
}
