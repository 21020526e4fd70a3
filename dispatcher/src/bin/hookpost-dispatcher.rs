//! `hookpost-dispatcher --config hookpost.toml`: deliver events to endpoints.
//! SIGHUP reloads the config; SIGTERM or Ctrl-C drains and exits 0.

use anyhow::Context;
use clap::Parser;
use common::Config;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "hookpost-dispatcher",
    version,
    about = "Deliver hookpost events to webhook endpoints"
)]
struct Cli {
    /// Config file.
    #[arg(long, env = "HOOKPOST_CONFIG")]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    // A transform worker (dispatcher::sandbox) is this binary started by a
    // dispatcher; it logs nothing and answers on its pipes.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(dispatcher::delivery::transform::WORKER_ARG) {
        let code = dispatcher::delivery::transform::worker_main(&args[1..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    common::logging::init("info");
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    dispatcher::validate(&config)?;
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (metrics.listen)",
                config.metrics_listen
            )
        })?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(4);
    tokio::spawn(signals(cli.config.clone(), reload_tx, shutdown.clone()));
    dispatcher::run(config, listener, reload_rx, shutdown).await
}

/// SIGTERM/Ctrl-C cancel `shutdown`; SIGHUP reloads the file and sends it on
/// if it is valid (an invalid one is logged and ignored).
async fn signals(path: PathBuf, reloads: mpsc::Sender<Config>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("Cannot install signal handlers; stop with Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                match Config::load(&path).map_err(anyhow::Error::from).and_then(|c| dispatcher::validate(&c).map(|()| c)) {
                    Ok(config) => {
                        tracing::info!(file = %path.display(), "Reloading the config.");
                        let _ = reloads.send(config).await;
                    }
                    Err(e) => tracing::error!(error = %e, "The new config is invalid; keeping the running one."),
                }
            }
        }
    }
    tracing::info!("Shutdown requested; finishing in-flight deliveries.");
    shutdown.cancel();
}
