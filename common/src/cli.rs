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

/// The variable that sets a binary's runtime worker threads (tokio's own
/// name); without it, one per core.
pub const WORKER_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// The worker threads on `cores` cores (one per core), or the count `var`
/// (the value of [`WORKER_THREADS_VAR`], when set) asks for.
///
/// # Errors
/// `var` is not a whole number from 1.
pub fn worker_threads(cores: usize, var: Option<&str>) -> anyhow::Result<usize> {
    match var {
        None => Ok(cores.max(1)),
        Some(value) => match value.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => anyhow::bail!("{WORKER_THREADS_VAR} must be a whole number from 1, not {value:?}"),
        },
    }
}

/// The cores this process may use (its CPU affinity and cgroup quota
/// counted), at least one.
#[must_use]
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A multi-threaded runtime with [`worker_threads`] workers on [`cores`].
///
/// # Errors
/// A bad [`WORKER_THREADS_VAR`], or the runtime cannot start.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = cores();
    let var = match std::env::var(WORKER_THREADS_VAR) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(value)) => Some(value.to_string_lossy().into_owned()),
    };
    let threads = worker_threads(cores, var.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    Ok(runtime)
}

/// A binary's `main`: logging at `default_level` (`RUST_LOG` overrides),
/// a multi-threaded runtime ([`runtime`]; its worker count logged at
/// debug), `run` on it, and the exit code: 0, or 1 after `error: …` with
/// the whole cause chain on standard error.
pub fn main<F>(default_level: &str, run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    main_with(default_level, tracing::Level::DEBUG, run)
}

/// [`main`], logging the runtime's worker count at INFO: the dispatcher's
/// (`Runtime started. threads=N cores=M`; its throughput depends on it).
pub fn main_announcing_threads<F>(default_level: &str, run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    main_with(default_level, tracing::Level::INFO, run)
}

fn main_with<F>(default_level: &str, threads_at: tracing::Level, run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init(default_level);
    let result = runtime().and_then(|rt| {
        let (threads, cores) = (rt.metrics().num_workers(), cores());
        if threads_at == tracing::Level::INFO {
            tracing::info!(threads, cores, "Runtime started.");
        } else {
            tracing::debug!(threads, cores, "Runtime started.");
        }
        rt.block_on(run)
    });
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
    use super::worker_threads;

    #[test]
    fn one_worker_per_core_unless_the_variable_says() {
        assert_eq!(worker_threads(1, None).unwrap(), 1);
        assert_eq!(worker_threads(2, None).unwrap(), 2);
        assert_eq!(worker_threads(16, None).unwrap(), 16);
        // No count of cores to be had counts as one.
        assert_eq!(worker_threads(0, None).unwrap(), 1);
        assert_eq!(worker_threads(2, Some("1")).unwrap(), 1);
        assert_eq!(worker_threads(8, Some("3")).unwrap(), 3);
    }

    #[test]
    fn a_bad_count_is_refused_naming_the_variable() {
        for bad in ["0", "-1", "two", "", "1.5", " 3 "] {
            let e = worker_threads(4, Some(bad)).unwrap_err();
            assert!(
                e.to_string()
                    .contains("TOKIO_WORKER_THREADS must be a whole number from 1"),
                "{bad:?}: {e}"
            );
        }
    }
}
