//! `hookpost-producer`: publish events from the command line, or serve the HTTP ingest.

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::EventDraft;
use producer::Publisher;
use std::io::Read;
use tokio_util::sync::CancellationToken;

// mimalloc rather than the system allocator: publishing allocates a few
// dozen small blocks per event (BENCHMARKS.md, session 24).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "hookpost-producer",
    version,
    about = "Publish events to hookpost"
)]
struct Cli {
    #[command(flatten)]
    config: common::cli::ConfigArg,
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
        /// The customer the event belongs to ([a-z0-9_-], 1 to 64): only that
        /// tenant's endpoints and global ones receive it.
        #[arg(long)]
        tenant: Option<String>,
        /// The environment (such as prd or snd): only endpoint variants
        /// declared for it receive it.
        #[arg(long)]
        environment: Option<String>,
        /// Event id (only with --count 1); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// How many events to publish (each with its own id).
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Serve the HTTP ingest (POST /v1/events), /metrics, and the management API (/v1/endpoints) when api.tokens is set.
    Serve,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    common::cli::main("info", run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.load()?;
    match cli.command {
        Command::Publish {
            event_type,
            data,
            source,
            tenant,
            environment,
            id,
            count,
        } => {
            anyhow::ensure!(count >= 1, "--count must be at least 1");
            anyhow::ensure!(
                id.is_none() || count == 1,
                "--id can only be used with --count 1"
            );
            let draft = EventDraft {
                id,
                event_type,
                timestamp: None,
                source,
                tenant,
                environment,
                data: read_data(&data)?,
            };
            // Checked before connecting: bad input publishes nothing.
            draft.clone().into_event().context("invalid event")?;
            let publisher = Publisher::connect(&config).await?;
            let result = producer::count::publish_count(&publisher, &draft, count).await;
            publisher.close().await;
            result
        }
        Command::Serve => {
            let listeners = producer::Listeners {
                ingest: common::cli::bind(config.ingest.listen, "ingest.listen").await?,
                metrics: common::cli::bind(config.metrics_listen, "metrics.listen").await?,
                // The API is off unless it has tokens.
                api: if config.api.tokens.is_empty() {
                    None
                } else {
                    Some(common::cli::bind(config.api.listen, "api.listen").await?)
                },
            };
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                common::cli::stop_requested().await;
                tracing::info!("Shutdown requested.");
                stop.cancel();
            });
            producer::serve(config, listeners, shutdown).await
        }
    }
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
