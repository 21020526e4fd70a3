//! `hookpost-producer`: publish events from the command line, or serve the HTTP ingest.

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::{Config, EventDraft};
use producer::Publisher;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "hookpost-producer",
    version,
    about = "Publish events to hookpost"
)]
struct Cli {
    /// Config file. Without one, defaults and HOOKPOST_* variables apply.
    #[arg(long, global = true, env = "HOOKPOST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish an event (or --count copies); prints each published id.
    Publish {
        /// Event type, such as order.created.
        #[arg(long = "type")]
        event_type: String,
        /// Payload: inline JSON, @FILE, or @- for standard input.
        #[arg(long, default_value = "null")]
        data: String,
        /// The publishing service's name.
        #[arg(long)]
        source: Option<String>,
        /// Event id (only with --count 1); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// How many events to publish (each with its own id).
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Serve the HTTP ingest (POST /v1/events) and /metrics.
    Serve,
}

fn main() -> std::process::ExitCode {
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
    let config = Config::load_optional(cli.config.as_deref())?;
    match cli.command {
        Command::Publish {
            event_type,
            data,
            source,
            id,
            count,
        } => {
            anyhow::ensure!(count >= 1, "--count must be at least 1");
            anyhow::ensure!(
                id.is_none() || count == 1,
                "--id can only be used with --count 1"
            );
            let data = read_data(&data)?;
            let events = (0..count)
                .map(|_| {
                    EventDraft {
                        id: id.clone(),
                        event_type: event_type.clone(),
                        timestamp: None,
                        source: source.clone(),
                        data: data.clone(),
                    }
                    .into_event()
                })
                .collect::<Result<Vec<_>, _>>()
                .context("invalid event")?;
            let publisher = Publisher::connect(&config).await?;
            let result = publisher.publish_many(&events).await;
            publisher.close().await;
            result?;
            for event in &events {
                println!("{}", event.id);
            }
            Ok(())
        }
        Command::Serve => {
            let listeners = producer::Listeners {
                ingest: bind(config.ingest.listen, "ingest.listen").await?,
                metrics: bind(config.metrics_listen, "metrics.listen").await?,
                // The API is off unless it has tokens.
                api: if config.api.tokens.is_empty() {
                    None
                } else {
                    Some(bind(config.api.listen, "api.listen").await?)
                },
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            producer::serve(config, listeners, shutdown).await
        }
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

fn read_data(arg: &str) -> anyhow::Result<serde_json::Value> {
    let text = match arg.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading --data from standard input")?;
            s
        }
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading --data file {path}"))?
        }
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).context("--data is not valid JSON")
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("Shutdown requested.");
    shutdown.cancel();
}
