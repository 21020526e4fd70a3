//! `hookpost-dispatcher --config hookpost.toml`: deliver events to endpoints.
//! SIGHUP reloads the config; SIGTERM or Ctrl-C drains and exits 0.

use clap::Parser;
use common::Config;
use common::cli::RequiredConfigArg;
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
    #[command(flatten)]
    config: RequiredConfigArg,
}

fn main() -> std::process::ExitCode {
    // A transform worker (dispatcher::sandbox) is this binary started by a
    // dispatcher; it logs nothing and answers on its pipes.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(dispatcher::delivery::transform::WORKER_ARG) {
        let code = dispatcher::delivery::transform::worker_main(&args[1..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    common::cli::main_announcing_threads("info", run(cli.config.config))
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    dispatcher::validate(&config)?;
    let listener = common::cli::bind(config.metrics_listen, "metrics.listen").await?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(4);
    tokio::spawn(signals(path, reload_tx, shutdown.clone()));
    dispatcher::run(config, listener, reload_rx, shutdown).await
}

/// SIGTERM/Ctrl-C cancel `shutdown`; SIGHUP reloads the file and sends it on
/// if it is valid (an invalid one is logged and ignored).
async fn signals(path: PathBuf, reloads: mpsc::Sender<Config>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = common::cli::stop_requested();
    tokio::pin!(stop);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => loop {
            tokio::select! {
                () = &mut stop => break,
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
        },
        Err(e) => {
            tracing::error!(error = %e, "Cannot install the SIGHUP handler; reloads need a restart.");
            stop.await;
        }
    }
    tracing::info!("Shutdown requested; finishing in-flight deliveries.");
    shutdown.cancel();
}
