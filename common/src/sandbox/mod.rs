//! The transform sandbox: endpoint transforms (jq programs, which an API
//! user may write) run in child processes of the dispatcher's own binary
//! (`hookpost-dispatcher transform-worker`), never inside the dispatcher.
//!
//! jq has no step or depth limit, so a program can recurse until the stack
//! overflows (which aborts a process), loop forever, or allocate without
//! bound. A worker process confines each of these: it has an address-space
//! limit (`transforms.memory_mb`), runs at a lower CPU priority than the
//! dispatcher, dies with it, and is killed and replaced when a run exceeds
//! `transforms.timeout_ms` or when it crashes. The event is then
//! dead-lettered with `transform_error` and the reason (`exceeded 2000 ms`,
//! `recursion too deep`, `memory limit`). At most `transforms.workers` runs
//! happen at once, and at most `transforms.per_endpoint` per endpoint, so a
//! hostile endpoint holds a bounded share of the workers.
//!
//! The pipe protocol (all lengths little-endian u32):
//! request `[program len][program][input len][input]`, answer
//! `[tag][len][bytes]` with tag 0 = send these bytes, 1 = drop, 2 = error text.

use crate::config::TransformsConfig;
use crate::transform::{Outcome, Transform};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

/// The argument that turns `hookpost-dispatcher` into a transform worker.
pub const WORKER_ARG: &str = "transform-worker";

/// A worker is replaced after this many runs, so whatever a program leaves
/// behind (its compiled form, allocator fragmentation) stays bounded.
const RUNS_PER_WORKER: u32 = 10_000;

/// Compiled programs a worker keeps.
pub(super) const CACHED_PROGRAMS: usize = 64;

/// Endpoints remembered before idle ones are forgotten.
const PRUNE_ABOVE: usize = 1024;

/// Most bytes of a worker's standard error read after it died.
const STDERR_CAP: usize = 8 * 1024;

pub(super) const TAG_SEND: u8 = 0;
pub(super) const TAG_DROP: u8 = 1;
pub(super) const TAG_ERROR: u8 = 2;

/// Why a transform produced nothing to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The program failed or broke a limit: the event is dead-lettered.
    #[error("{0}")]
    Program(String),
    /// No worker could be started: an operator problem, not the event's.
    #[error("the transform sandbox is unavailable: {0}")]
    Unavailable(String),
}

/// Runs transforms in worker processes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The worker executable, or why there is none.
    program: Result<PathBuf, SandboxError>,
    limits: TransformsConfig,
    max_output_bytes: usize,
    /// One permit per worker process.
    slots: Semaphore,
    idle: Mutex<Vec<Worker>>,
    per_endpoint: Mutex<HashMap<String, Arc<Semaphore>>>,
}

#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: ChildStderr,
    runs: u32,
}

impl Sandbox {
    /// A sandbox starting `program` (a `hookpost-dispatcher` executable,
    /// from [`Sandbox::locate`]) as workers, within `limits`; outputs over
    /// `max_output_bytes` are errors. Workers start on first use.
    pub fn new(
        program: Result<PathBuf, SandboxError>,
        limits: TransformsConfig,
        max_output_bytes: usize,
    ) -> Self {
        let slots = Semaphore::new(limits.workers.max(1));
        Self {
            inner: Arc::new(Inner {
                program,
                limits,
                max_output_bytes,
                slots,
                idle: Mutex::default(),
                per_endpoint: Mutex::default(),
            }),
        }
    }

    /// The worker executable: `transforms.worker_path`, else this process's
    /// own executable when it is `hookpost-dispatcher`, else a
    /// `hookpost-dispatcher` beside it or one folder up (where cargo puts
    /// binaries next to test executables).
    ///
    /// # Errors
    /// None of these exists.
    pub fn locate(configured: Option<&PathBuf>) -> Result<PathBuf, SandboxError> {
        if let Some(path) = configured {
            return Ok(path.clone());
        }
        let exe = std::env::current_exe()
            .map_err(|e| SandboxError::Unavailable(format!("cannot find this executable: {e}")))?;
        let is_dispatcher = exe
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("hookpost-dispatcher"));
        if is_dispatcher {
            // The running image, even if the file was replaced by an upgrade.
            let me = PathBuf::from("/proc/self/exe");
            return Ok(if me.exists() { me } else { exe });
        }
        let name = format!("hookpost-dispatcher{}", std::env::consts::EXE_SUFFIX);
        let dir = exe.parent();
        dir.into_iter()
            .chain(dir.and_then(|d| d.parent()))
            .map(|d| d.join(&name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                SandboxError::Unavailable(format!(
                    "no {name} next to {}; build it (cargo build -p dispatcher) or set transforms.worker_path",
                    exe.display()
                ))
            })
    }

    /// Runs `transform` on `input` for `endpoint`, waiting for a free worker.
    ///
    /// # Errors
    /// [`SandboxError::Program`] when the program fails or breaks a limit,
    /// [`SandboxError::Unavailable`] when no worker can be started.
    pub async fn run(
        &self,
        endpoint: &str,
        transform: &Transform,
        input: &[u8],
    ) -> Result<Outcome, SandboxError> {
        let inner = &self.inner;
        let mine = {
            let mut map = inner
                .per_endpoint
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if map.len() > PRUNE_ABOVE {
                // Endpoints no run holds any more (deleted, renamed).
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            map.entry(endpoint.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(inner.limits.per_endpoint.max(1))))
                .clone()
        };
        let _endpoint_turn = mine
            .acquire()
            .await
            .map_err(|_| SandboxError::Unavailable("closed".into()))?;
        let _slot = inner
            .slots
            .acquire()
            .await
            .map_err(|_| SandboxError::Unavailable("closed".into()))?;
        let idle = inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut worker = match idle {
            Some(w) => w,
            None => self.spawn()?,
        };
        let request = frame_request(transform.source(), input);
        let exchange = async {
            worker.stdin.write_all(&request).await?;
            worker.stdin.flush().await?;
            read_answer(&mut worker.stdout, inner.max_output_bytes).await
        };
        match tokio::time::timeout(inner.limits.timeout, exchange).await {
            Ok(Ok(answer)) => {
                worker.runs += 1;
                if worker.runs < RUNS_PER_WORKER {
                    inner
                        .idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(worker);
                }
                answer
            }
            Ok(Err(_)) => Err(SandboxError::Program(died(worker, inner).await)),
            Err(_) => {
                // Dropping the child kills it (kill_on_drop); reap it so no
                // zombie is left.
                let _ = worker.child.start_kill();
                let _ = worker.child.wait().await;
                Err(SandboxError::Program(format!(
                    "the transform exceeded its {} ms time limit",
                    inner.limits.timeout.as_millis()
                )))
            }
        }
    }

    /// How many transforms of `endpoint` are running now (at most
    /// `transforms.per_endpoint`).
    pub fn running(&self, endpoint: &str) -> usize {
        let map = self
            .inner
            .per_endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(endpoint).map_or(0, |s| {
            self.inner
                .limits
                .per_endpoint
                .max(1)
                .saturating_sub(s.available_permits())
        })
    }

    /// Runs `.` once, so a dispatcher with transforms fails at start, with
    /// a clear message, when no worker can run.
    ///
    /// # Errors
    /// The worker could not be started or did not answer.
    pub async fn check(&self) -> Result<(), SandboxError> {
        let identity =
            Transform::compile(".").map_err(|e| SandboxError::Unavailable(e.to_string()))?;
        match self.run("", &identity, b"{}").await {
            Ok(_) => Ok(()),
            Err(SandboxError::Program(e)) => Err(SandboxError::Unavailable(e)),
            Err(e) => Err(e),
        }
    }

    fn spawn(&self) -> Result<Worker, SandboxError> {
        let inner = &self.inner;
        let program = inner.program.as_ref().map_err(Clone::clone)?;
        let mut child = Command::new(program)
            .arg(WORKER_ARG)
            .arg(inner.limits.memory_bytes.to_string())
            .arg(inner.max_output_bytes.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                SandboxError::Unavailable(format!("cannot start {}: {e}", program.display()))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SandboxError::Unavailable("worker pipes missing".into()));
        };
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr,
            runs: 0,
        })
    }
}

/// The reason a worker that stopped answering gives, from how it ended.
async fn died(mut worker: Worker, inner: &Inner) -> String {
    let _ = worker.child.start_kill();
    let status = worker.child.wait().await.ok();
    let mut text = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        (&mut worker.stderr)
            .take(STDERR_CAP as u64)
            .read_to_end(&mut text),
    )
    .await;
    let text = String::from_utf8_lossy(&text);
    reason(&text, status.and_then(signal_of), inner.limits.memory_bytes)
}

#[cfg(unix)]
fn signal_of(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_: std::process::ExitStatus) -> Option<i32> {
    None
}

/// Names the limit a dead worker hit from what it printed.
fn reason(stderr: &str, signal: Option<i32>, memory_bytes: u64) -> String {
    if stderr.contains("has overflowed its stack") {
        "recursion too deep: the transform overflowed its stack".to_owned()
    } else if stderr.contains("memory allocation of") {
        format!(
            "memory limit: the transform needed more than {} MiB",
            memory_bytes >> 20
        )
    } else if let Some(sig) = signal {
        format!("the transform worker died (signal {sig})")
    } else {
        "the transform worker died".to_owned()
    }
}

fn frame_request(program: &str, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + program.len() + input.len());
    for part in [program.as_bytes(), input] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

async fn read_answer(
    from: &mut BufReader<ChildStdout>,
    max: usize,
) -> std::io::Result<Result<Outcome, SandboxError>> {
    let tag = from.read_u8().await?;
    let len = from.read_u32_le().await? as usize;
    if len > max.max(STDERR_CAP) {
        return Err(std::io::Error::other("answer too long"));
    }
    let mut bytes = vec![0; len];
    from.read_exact(&mut bytes).await?;
    Ok(match tag {
        TAG_SEND => Ok(Outcome::Send(bytes)),
        TAG_DROP => Ok(Outcome::Drop),
        _ => Err(SandboxError::Program(
            String::from_utf8_lossy(&bytes).into_owned(),
        )),
    })
}

mod worker;
pub use worker::worker_main;

#[cfg(test)]
mod tests {
    use super::worker::read_part;
    use super::*;

    #[test]
    fn reasons_name_the_limit() {
        assert!(
            reason(
                "\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow",
                Some(6),
                256 << 20
            )
            .starts_with("recursion too deep")
        );
        assert_eq!(
            reason(
                "memory allocation of 123 bytes failed\n",
                Some(6),
                256 << 20
            ),
            "memory limit: the transform needed more than 256 MiB"
        );
        assert_eq!(
            reason("", Some(9), 1),
            "the transform worker died (signal 9)"
        );
    }

    #[test]
    fn requests_frame_program_then_input() {
        let framed = frame_request(".", b"{}");
        let mut cursor = std::io::Cursor::new(framed);
        assert_eq!(read_part(&mut cursor).expect("program"), b".");
        assert_eq!(read_part(&mut cursor).expect("input"), b"{}");
        assert!(read_part(&mut cursor).is_err());
    }
}
