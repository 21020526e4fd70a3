//! The `hookpost-admin` command line: its arguments ([`Cli`]) and [`run`],
//! which validates them, executes them through [`crate::admin::Admin`] and
//! the registry operations, and renders the answer. The binary only parses,
//! sets up logging and calls [`run`].

use crate::admin::Admin;
use crate::admin::record::Record;
use crate::admin::view::{Filter, parse_time};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use common::Config;
use std::io::BufRead;
use std::path::PathBuf;

mod dlq;
mod endpoints;
mod log;
mod output;
mod replay;
mod topology;

#[derive(Debug, Parser)]
#[command(
    name = "hookpost-admin",
    version,
    about = "Inspect and replay hookpost's dead-letter queue"
)]
pub struct Cli {
    #[command(flatten)]
    config: common::cli::ConfigArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Each endpoint: URL, patterns, queue depth, consumers, state; or pause and resume one.
    Endpoints {
        #[command(subcommand)]
        action: Option<EndpointsCmd>,
        #[command(flatten)]
        filters: EndpointFilters,
    },
    /// Delivery attempts from the attempt log (`<prefix>.log`), newest last.
    Log(log::LogArgs),
    /// Send archived events (`<prefix>.archive`) of a time window again to an endpoint that takes them.
    Replay(replay::ReplayArgs),
    /// Declare the topology, or show every hookpost queue with its depth.
    Topology {
        #[arg(value_parser = ["declare", "status"])]
        action: String,
    },
}

/// A token that fires on Ctrl-C or SIGTERM (a live tail, a replay).
fn stop_on_signal() -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            common::cli::stop_requested().await;
            stop.cancel();
        }
    });
    stop
}

/// `--since` and `--until` (RFC 3339 or a duration ago) as a window, the
/// end after the start.
fn window(
    since: &str,
    until: Option<&str>,
) -> anyhow::Result<(time::OffsetDateTime, Option<time::OffsetDateTime>)> {
    let now = time::OffsetDateTime::now_utc();
    let time = |t: &str, flag: &str| parse_time(t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"));
    let since = time(since, "--since")?;
    let until = until.map(|t| time(t, "--until")).transpose()?;
    if until.is_some_and(|u| u <= since) {
        bail!("--until must be after --since");
    }
    Ok((since, until))
}

/// Which rows `endpoints [list]` shows.
#[derive(Debug, Default, Clone, clap::Args)]
struct EndpointFilters {
    /// Only endpoints of this tenant (`[a-z0-9_-]{1,64}`).
    #[arg(long)]
    tenant: Option<String>,
    /// Only the variants (`<id>~<env>` queues) of this environment.
    #[arg(long)]
    environment: Option<String>,
}

#[derive(Debug, Subcommand)]
enum EndpointsCmd {
    /// Each endpoint and each of its environments' variants: URL, patterns, queue depth, consumers, state, tenant (the default).
    List(EndpointFilters),
    /// Register an endpoint (the management API's JSON object); prints it, with a generated secret if none was given.
    Create {
        #[command(flatten)]
        body: Body,
    },
    /// Change a registered endpoint: a JSON merge patch, or the whole object with --replace.
    Update {
        /// The endpoint id.
        id: String,
        #[command(flatten)]
        body: Body,
        /// The body is the whole endpoint (secrets and header values kept when left out).
        #[arg(long)]
        replace: bool,
    },
    /// One endpoint as JSON (secrets hidden).
    Get {
        /// The endpoint id.
        id: String,
    },
    /// Remove a registered endpoint; its queue is deleted once empty.
    Delete {
        /// The endpoint id.
        id: String,
        /// Also when messages wait (they go to the dead-letter queue, reason endpoint_deleted).
        #[arg(long)]
        force: bool,
    },
    /// A new signing secret, printed once; the old ones sign on for registry.secret_overlap_ms.
    RotateSecret {
        /// The endpoint id.
        id: String,
    },
    /// Stop delivering to an endpoint on every dispatcher; its messages wait in its queue.
    Pause {
        /// The endpoint id.
        id: String,
    },
    /// Deliver to a paused endpoint again, on every dispatcher.
    Resume {
        /// The endpoint id.
        id: String,
    },
}

/// A JSON object given inline or from a file.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Body {
    /// The JSON object.
    #[arg(long)]
    json: Option<String>,
    /// A file holding it (`-`: standard input).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Body {
    fn read(&self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let text = match (&self.json, &self.file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) if path.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            (None, None) => bail!("give --json or --file"),
        };
        match serde_json::from_str(&text).context("the body is not JSON")? {
            serde_json::Value::Object(m) => Ok(m),
            _ => bail!("the body must be a JSON object"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// List dead letters (nothing is removed).
    List {
        #[command(flatten)]
        filters: Filters,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts by endpoint and reason.
    Stats {
        #[command(flatten)]
        filters: Filters,
    },
    /// One dead letter in full: properties, headers and body.
    Show {
        /// The event id.
        event_id: String,
    },
    /// Send matching dead letters back to their endpoint (fresh attempt count).
    Replay {
        #[command(flatten)]
        filters: Filters,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// At most this many messages per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Send them to this endpoint instead of their own.
        #[arg(long)]
        to_endpoint: Option<String>,
    },
    /// Delete matching dead letters.
    Purge {
        #[command(flatten)]
        filters: Filters,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Copy matching dead letters to a JSON-lines file (nothing is removed).
    Export {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        filters: Filters,
    },
    /// Put the messages of an export file into the dead-letter queue.
    Import {
        /// The file to read.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Filters {
    /// Only this endpoint's.
    #[arg(long)]
    endpoint: Option<String>,
    /// Only event types matching this pattern (`order.*`, `#`).
    #[arg(long = "type")]
    type_pattern: Option<String>,
    /// Only this reason (exhausted, rejected, gone, malformed, ...).
    #[arg(long)]
    reason: Option<String>,
    /// Failed at or after: RFC 3339, or a duration ago (30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Failed before: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Only this tenant's (the endpoint's tenant, else the event's).
    #[arg(long)]
    tenant: Option<String>,
    /// Only this environment's (the endpoint variant's, else the event's).
    #[arg(long)]
    environment: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<usize>,
}

impl Filters {
    fn build(&self, config: &Config) -> anyhow::Result<(Filter, Option<usize>)> {
        let now = time::OffsetDateTime::now_utc();
        if let Some(ep) = &self.endpoint
            && config.endpoint(ep).is_none()
        {
            bail!(
                "unknown endpoint {ep:?} (--endpoint): it is not in {}",
                config.origin.display()
            );
        }
        if let Some(p) = &self.type_pattern
            && !common::config::is_valid_pattern(p)
        {
            bail!("--type {p:?} is not a pattern (dot-separated words, `*` or `#`)");
        }
        for (value, flag) in [
            (&self.tenant, "--tenant"),
            (&self.environment, "--environment"),
        ] {
            if let Some(v) = value
                && !common::routing::is_valid_scope(v)
            {
                bail!("{flag} {v:?} must be 1 to 64 characters of [a-z0-9_-]");
            }
        }
        let time =
            |t: &Option<String>, flag: &str| -> anyhow::Result<Option<time::OffsetDateTime>> {
                t.as_deref()
                    .map(|t| parse_time(t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                    .transpose()
            };
        let filter = Filter {
            endpoint: self.endpoint.clone(),
            with_variants: false,
            type_pattern: self.type_pattern.clone(),
            reason: self.reason.clone(),
            since: time(&self.since, "--since")?,
            until: time(&self.until, "--until")?,
            tenant: self.tenant.clone(),
            environment: self.environment.clone(),
        };
        Ok((filter, self.limit))
    }
}

/// Runs one `hookpost-admin` command.
///
/// # Errors
/// Bad arguments, config or broker errors, with what was involved.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.load()?;
    // Validate flags before touching the broker.
    let filters = match &cli.command {
        Command::Dlq(
            Dlq::List { filters, .. }
            | Dlq::Stats { filters }
            | Dlq::Replay { filters, .. }
            | Dlq::Purge { filters, .. }
            | Dlq::Export { filters, .. },
        ) => Some(filters.build(&config)?),
        _ => None,
    };
    let log_query = match &cli.command {
        Command::Log(args) => Some(args.query()?),
        _ => None,
    };
    let replay_request = match &cli.command {
        Command::Replay(args) => Some(args.request()?),
        _ => None,
    };
    if let Command::Dlq(Dlq::Purge {
        yes: false,
        dry_run: false,
        ..
    }) = &cli.command
    {
        bail!(
            "purge deletes messages for good: add --yes (or --dry-run to see what it would delete)"
        );
    }
    if let Command::Dlq(Dlq::Replay {
        rate: Some(rate), ..
    }) = &cli.command
    {
        crate::admin::replay_interval(*rate).map_err(anyhow::Error::msg)?;
    }
    let records = match &cli.command {
        Command::Dlq(Dlq::Import { file }) => Some(read_records(file)?),
        _ => None,
    };
    let admin = Admin::connect(config).await?;
    let mut stdout = std::io::stdout().lock();
    let (filter, limit) = filters.unwrap_or_default();
    let result = match cli.command {
        Command::Dlq(cmd) => dlq::run(&admin, cmd, filter, limit, records, &mut stdout).await,
        Command::Endpoints { action, filters } => {
            endpoints::run(&admin, action, filters, &mut stdout).await
        }
        Command::Topology { action } => topology::run(&admin, &action, &mut stdout).await,
        Command::Log(args) => match log_query {
            Some(query) => log::run(&admin, &args, &query, &mut stdout).await,
            None => Ok(()),
        },
        Command::Replay(args) => match replay_request {
            Some(request) => replay::run(&admin, &args, &request, &mut stdout).await,
            None => Ok(()),
        },
    };
    admin.close().await;
    result
}

fn read_records(path: &PathBuf) -> anyhow::Result<Vec<Record>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}: not an export record", path.display(), i + 1))?;
        record.body().with_context(|| {
            format!(
                "{}: line {}: body_base64 is not base64",
                path.display(),
                i + 1
            )
        })?;
        records.push(record);
    }
    Ok(records)
}
