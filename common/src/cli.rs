//! What the three binaries (`hookpost-producer`, `hookpost-dispatcher`,
//! `hookpost-admin`) share around their library's `run`: the `--config`
//! argument, `main`'s runtime and exit code, binding a listener with an error
//! that names its key, and the stop signals.

use anyhow::Context;
use clap::Args;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::net::TcpListener;

/// `--config FILE` (or `HOOKPOST_CONFIG`), optional: without it the defaults
/// and `HOOKPOST_*` variables apply.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Config file. Without one, defaults and HOOKPOST_* variables apply.
    #[arg(long, global = true, env = "HOOKPOST_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads the file, or the defaults with the environment's overrides.
    ///
    /// # Errors
    /// A config error naming the file and the key.
    pub fn load(&self) -> anyhow::Result<crate::Config> {
        Ok(crate::Config::load_optional(self.config.as_deref())?)
    }
}

/// `--config FILE` (or `HOOKPOST_CONFIG`), required (the dispatcher).
#[derive(Debug, Clone, Args)]
pub struct RequiredConfigArg {
    /// Config file.
    #[arg(long, env = "HOOKPOST_CONFIG")]
    pub config: PathBuf,
}

/// How many worker threads a binary's runtime runs, unless
/// [`WORKER_THREADS_VAR`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per core (tokio's default): the producer and the admin tool.
    PerCore,
    /// One per core but one, and at least one: the dispatcher. Its broker
    /// connection's reads and writes run on a thread of lapin's own, outside
    /// the runtime and busy for every delivery; with a worker per core
    /// besides, its busy threads outnumber the cores, and the hand-offs
    /// between them cost context switches (BENCHMARKS.md, session 31).
    SpareOneCore,
}

/// The variable that sets a binary's worker threads (tokio's own name).
pub const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// The worker threads for `workers` on `cores` cores, or the count `var`
/// (the value of [`WORKER_THREADS_VAR`], when set) asks for.
///
/// # Errors
/// `var` is not a whole number from 1.
pub fn worker_threads(workers: Workers, cores: usize, var: Option<&str>) -> anyhow::Result<usize> {
    if let Some(value) = var {
        return match value.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => anyhow::bail!("{WORKER_THREADS_VAR} must be a whole number from 1, not {value:?}"),
        };
    }
    let cores = cores.max(1);
    Ok(match workers {
        Workers::PerCore => cores,
        Workers::SpareOneCore => (cores - 1).max(1),
    })
}

/// A multi-threaded runtime with [`worker_threads`] workers on the cores
/// this process may use (its CPU affinity and cgroup quota counted).
///
/// # Errors
/// A bad [`WORKER_THREADS_VAR`], or the runtime cannot start.
pub fn runtime(workers: Workers) -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let var = std::env::var(WORKER_THREADS_VAR).ok();
    let threads = worker_threads(workers, cores, var.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    tracing::info!(threads, cores, "Runtime started.");
    Ok(runtime)
}

/// A binary's `main`: logging at `default_level` (`RUST_LOG` overrides),
/// a multi-threaded runtime of `workers` ([`runtime`]), `run` on it, and the
/// exit code: 0, or 1 after `error: …` with the whole cause chain on
/// standard error.
pub fn main<F>(default_level: &str, workers: Workers, run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init(default_level);
    let result = runtime(workers).and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr`; the error names the config key it came from.
///
/// # Errors
/// The address is taken or not allowed: `cannot listen on ADDR (KEY)`.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Returns when the process is asked to stop: SIGTERM or Ctrl-C (SIGINT).
/// If the SIGTERM handler cannot be installed, an ERROR says so and only
/// Ctrl-C stops.
pub async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot install the SIGTERM handler; stop with Ctrl-C.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Workers, worker_threads};

    #[test]
    fn the_dispatcher_leaves_a_core_for_the_broker_connection() {
        let spare = |cores| worker_threads(Workers::SpareOneCore, cores, None).unwrap();
        assert_eq!(spare(1), 1);
        assert_eq!(spare(2), 1);
        assert_eq!(spare(4), 3);
        assert_eq!(spare(16), 15);
        let per_core = |cores| worker_threads(Workers::PerCore, cores, None).unwrap();
        assert_eq!(per_core(1), 1);
        assert_eq!(per_core(2), 2);
        assert_eq!(per_core(16), 16);
        // No count of cores to be had counts as one.
        assert_eq!(spare(0), 1);
        assert_eq!(per_core(0), 1);
    }

    #[test]
    fn the_variable_sets_the_count_or_is_refused() {
        assert_eq!(
            worker_threads(Workers::SpareOneCore, 2, Some("2")).unwrap(),
            2
        );
        assert_eq!(worker_threads(Workers::PerCore, 8, Some(" 1 ")).unwrap(), 1);
        for bad in ["0", "-1", "two", "", "1.5"] {
            let e = worker_threads(Workers::SpareOneCore, 4, Some(bad)).unwrap_err();
            assert!(
                e.to_string()
                    .contains("TOKIO_WORKER_THREADS must be a whole number from 1"),
                "{bad:?}: {e}"
            );
        }
    }
}
