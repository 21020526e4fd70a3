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

/// A binary's `main`: logging at `default_level` (`RUST_LOG` overrides),
/// a multi-threaded runtime, `run` on it, and the exit code: 0, or 1 after
/// `error: …` with the whole cause chain on standard error.
pub fn main<F>(default_level: &str, run: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init(default_level);
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(run));
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
