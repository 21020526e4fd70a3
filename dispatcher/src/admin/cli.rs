//! The `hookpost-admin` command line: its arguments ([`Cli`]) and [`run`],
//! which validates them, executes them through [`crate::admin::Admin`] and
//! the registry operations, and renders the answer. The binary only parses,
//! sets up logging and calls [`run`].

use crate::admin::record::Record;
use crate::admin::view::{DeadLetterView, Filter, parse_time};
use crate::admin::{Action, Admin};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use common::Config;
use common::registry;
use common::registry_ops::{Mode, OpError};
use common::secret::redact_url;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "hookpost-admin",
    version,
    about = "Inspect and replay hookpost's dead-letter queue"
)]
pub struct Cli {
    /// Config file (the dispatcher's). Without one, defaults and HOOKPOST_* variables apply.
    #[arg(long, global = true, env = "HOOKPOST_CONFIG")]
    config: Option<PathBuf>,
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
    },
    /// Declare the topology, or show every hookpost queue with its depth.
    Topology {
        #[arg(value_parser = ["declare", "status"])]
        action: String,
    },
}

#[derive(Debug, Subcommand)]
enum EndpointsCmd {
    /// Each endpoint: URL, patterns, queue depth, consumers, state (the default).
    List,
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
        let time =
            |t: &Option<String>, flag: &str| -> anyhow::Result<Option<time::OffsetDateTime>> {
                t.as_deref()
                    .map(|t| parse_time(t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                    .transpose()
            };
        let filter = Filter {
            endpoint: self.endpoint.clone(),
            type_pattern: self.type_pattern.clone(),
            reason: self.reason.clone(),
            since: time(&self.since, "--since")?,
            until: time(&self.until, "--until")?,
        };
        Ok((filter, self.limit))
    }
}

/// An operation's error as one line.
fn op_error(e: OpError) -> anyhow::Error {
    match e {
        OpError::Invalid(f) => anyhow::anyhow!("{}: {}", f.field, f.message),
        other => anyhow::anyhow!("{other}"),
    }
}

/// `endpoints pause|resume ID`.
async fn hold(admin: &Admin, id: &str, paused: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if !common::config::is_valid_endpoint_id(id) {
        bail!("{id:?} is not an endpoint id ([a-z0-9_-], 1 to 100 characters)");
    }
    let what = if paused { "pause" } else { "resume" };
    if admin.config().endpoint(id).is_none() {
        eprintln!(
            "warning: endpoint {id:?} is not in {}; recording the {what} anyway",
            admin.config().origin.display()
        );
    }
    admin.hold(id, paused).await?;
    writeln!(
        out,
        "{what}d endpoint {id} on every dispatcher (recorded in {})",
        admin.topology().control()
    )?;
    Ok(())
}

/// Runs one `hookpost-admin` command.
///
/// # Errors
/// Bad arguments, config or broker errors, with what was involved.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load_optional(cli.config.as_deref())?;
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
        Command::Dlq(Dlq::List { json, .. }) => {
            let views = admin.list(&filter, limit).await?;
            if json {
                for v in &views {
                    writeln!(stdout, "{}", serde_json::to_string(v)?)?;
                }
            } else {
                print_table(&mut stdout, &views)?;
            }
            Ok(())
        }
        Command::Dlq(Dlq::Stats { .. }) => {
            let views = admin.list(&filter, limit).await?;
            let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
            for v in &views {
                *counts
                    .entry((v.endpoint.clone(), v.reason.clone()))
                    .or_default() += 1;
            }
            let rows: Vec<Vec<String>> = counts
                .iter()
                .map(|((e, r), n)| vec![e.clone(), r.clone(), n.to_string()])
                .collect();
            write_table(&mut stdout, &["ENDPOINT", "REASON", "COUNT"], &rows)?;
            writeln!(stdout, "total: {}", views.len())?;
            Ok(())
        }
        Command::Dlq(Dlq::Show { event_id }) => {
            let mut found = Vec::new();
            admin
                .browse(|msg, view| {
                    if view.id == event_id {
                        found.push((
                            msg.delivery.routing_key.to_string(),
                            msg.delivery.properties.clone(),
                            msg.delivery.data.clone(),
                        ));
                    }
                })
                .await?;
            if found.is_empty() {
                bail!("no dead letter has event id {event_id:?}");
            }
            for (routing_key, properties, body) in found {
                let body = match std::str::from_utf8(&body) {
                    Ok(text) => serde_json::from_str::<serde_json::Value>(text)
                        .unwrap_or_else(|_| serde_json::Value::String(text.to_owned())),
                    Err(_) => {
                        serde_json::json!({ "base64": Record::new(String::new(), String::new(), Default::default(), &body).body_base64 })
                    }
                };
                let shown = serde_json::json!({ "routing_key": routing_key, "properties": properties, "body": body });
                writeln!(stdout, "{}", serde_json::to_string_pretty(&shown)?)?;
            }
            Ok(())
        }
        Command::Dlq(Dlq::Replay {
            dry_run: true,
            to_endpoint,
            ..
        }) => {
            let views = admin.list(&filter, limit).await?;
            for v in &views {
                writeln!(
                    stdout,
                    "would replay {} -> {}",
                    v.id,
                    to_endpoint.as_deref().unwrap_or(&v.endpoint)
                )?;
            }
            summary(&mut stdout, "would replay", views.len())
        }
        Command::Dlq(Dlq::Purge { dry_run: true, .. }) => {
            let views = admin.list(&filter, limit).await?;
            for v in &views {
                writeln!(
                    stdout,
                    "would purge {} ({}, {})",
                    v.id, v.endpoint, v.reason
                )?;
            }
            summary(&mut stdout, "would purge", views.len())
        }
        Command::Dlq(Dlq::Replay {
            rate, to_endpoint, ..
        }) => {
            let report = admin
                .apply(
                    &filter,
                    limit,
                    &Action::Replay {
                        to: to_endpoint,
                        rate,
                    },
                    &mut stdout,
                )
                .await?;
            writeln!(
                stdout,
                "replayed {}, kept {} in the dead-letter queue",
                report.done, report.kept
            )?;
            if report.failed > 0 {
                bail!(
                    "{} matching messages could not be replayed and stay in the dead-letter queue",
                    report.failed
                );
            }
            summary(&mut stdout, "replayed", report.done)
        }
        Command::Dlq(Dlq::Purge { .. }) => {
            let report = admin
                .apply(&filter, limit, &Action::Purge, &mut stdout)
                .await?;
            writeln!(stdout, "purged {}, kept {}", report.done, report.kept)?;
            summary(&mut stdout, "purged", report.done)
        }
        Command::Dlq(Dlq::Export { out, .. }) => {
            let records = admin.export(&filter, limit).await?;
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?,
            );
            for record in &records {
                writeln!(file, "{}", serde_json::to_string(record)?)?;
            }
            file.flush()
                .with_context(|| format!("writing {}", out.display()))?;
            writeln!(
                stdout,
                "exported {} dead letters to {}",
                records.len(),
                out.display()
            )?;
            summary(&mut stdout, "exported", records.len())
        }
        Command::Dlq(Dlq::Import { file }) => {
            let records = records.unwrap_or_default();
            let n = admin.import(&records).await?;
            writeln!(stdout, "imported {n} dead letters from {}", file.display())?;
            Ok(())
        }
        Command::Endpoints {
            action: Some(EndpointsCmd::Pause { id }),
        } => hold(&admin, &id, true, &mut stdout).await,
        Command::Endpoints {
            action: Some(EndpointsCmd::Resume { id }),
        } => hold(&admin, &id, false, &mut stdout).await,
        Command::Endpoints {
            action: Some(EndpointsCmd::Create { body }),
        } => {
            let (stored, secret) = admin
                .registry()
                .create(body.read()?)
                .await
                .map_err(op_error)?;
            let mut view = registry::public_view(&stored, false);
            if let (Some(secret), Some(v)) = (secret, view.as_object_mut()) {
                v.insert("secret".into(), secret.into());
            }
            writeln!(stdout, "{}", serde_json::to_string_pretty(&view)?)?;
            Ok(())
        }
        Command::Endpoints {
            action: Some(EndpointsCmd::Update { id, body, replace }),
        } => {
            let mode = if replace { Mode::Replace } else { Mode::Merge };
            let stored = admin
                .registry()
                .update(&id, body.read()?, mode)
                .await
                .map_err(op_error)?;
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&registry::public_view(&stored, false))?
            )?;
            Ok(())
        }
        Command::Endpoints {
            action: Some(EndpointsCmd::Get { id }),
        } => {
            let state = admin.registry().state().await.map_err(op_error)?;
            let stored = state
                .endpoints
                .get(&id)
                .ok_or_else(|| anyhow::anyhow!("no registered endpoint {id:?}"))?;
            let view = registry::public_view(stored, state.holds.contains(&id));
            writeln!(stdout, "{}", serde_json::to_string_pretty(&view)?)?;
            Ok(())
        }
        Command::Endpoints {
            action: Some(EndpointsCmd::Delete { id, force }),
        } => {
            let d = admin
                .registry()
                .delete(&id, force)
                .await
                .map_err(op_error)?;
            writeln!(
                stdout,
                "deleted endpoint {} (queue deleted: {}, dead-lettered: {})",
                d.id, d.queue_deleted, d.dead_lettered
            )?;
            Ok(())
        }
        Command::Endpoints {
            action: Some(EndpointsCmd::RotateSecret { id }),
        } => {
            let (stored, secret) = admin
                .registry()
                .rotate_secret(&id)
                .await
                .map_err(op_error)?;
            let until = stored
                .secrets
                .get(1)
                .and_then(|s| s.expires_at.clone())
                .unwrap_or_else(|| "-".into());
            writeln!(stdout, "{secret}")?;
            eprintln!("new secret for {id} (shown once); the previous ones sign until {until}");
            Ok(())
        }
        Command::Endpoints { .. } => {
            let holds = admin.holds().await?;
            let mut rows = Vec::new();
            // (id, url, patterns, source) of the file's endpoints, then the registry's.
            let mut all: Vec<(String, String, Vec<String>, &str)> = admin
                .config()
                .endpoints
                .iter()
                .map(|e| (e.id.clone(), e.url.to_string(), e.events.clone(), "file"))
                .collect();
            for s in holds.endpoints.values() {
                if admin.config().is_file_endpoint(&s.id) {
                    continue;
                }
                all.push((s.id.clone(), s.url().to_owned(), s.events(), "registry"));
            }
            for (id, url, events, source) in &all {
                let status = admin
                    .queue_status(&admin.topology().endpoint_queue(id))
                    .await?;
                let (depth, consumers) = status
                    .map_or(("-".to_owned(), "-".to_owned()), |(d, c)| {
                        (d.to_string(), c.to_string())
                    });
                let state = match status {
                    _ if holds.holds.contains(id) => "paused by an operator",
                    None => "not declared",
                    Some((_, 0)) => "not consumed (no dispatcher, or paused)",
                    Some(_) => "consumed",
                };
                rows.push(vec![
                    id.clone(),
                    redact_url(url),
                    events.join(","),
                    depth,
                    consumers,
                    state.to_owned(),
                    (*source).to_owned(),
                ]);
            }
            write_table(
                &mut stdout,
                &[
                    "ID",
                    "URL",
                    "EVENTS",
                    "QUEUED",
                    "CONSUMERS",
                    "STATE",
                    "SOURCE",
                ],
                &rows,
            )?;
            Ok(())
        }
        Command::Topology { action } if action == "declare" => {
            admin.declare().await?;
            writeln!(
                stdout,
                "declared the topology for {} endpoints under prefix {}",
                admin.config().endpoints.len(),
                admin.topology().prefix()
            )?;
            Ok(())
        }
        Command::Topology { .. } => {
            let rows: Vec<Vec<String>> = admin
                .topology_status()
                .await?
                .into_iter()
                .map(|(name, kind, status)| match status {
                    Some((depth, consumers)) => vec![
                        name,
                        kind.to_owned(),
                        depth.to_string(),
                        consumers.to_string(),
                    ],
                    None => vec![name, kind.to_owned(), "missing".into(), "-".into()],
                })
                .collect();
            write_table(
                &mut stdout,
                &["QUEUE", "KIND", "MESSAGES", "CONSUMERS"],
                &rows,
            )?;
            Ok(())
        }
    };
    admin.close().await;
    result
}

/// Fails (non-zero exit) when nothing matched, after saying so.
fn summary(out: &mut dyn Write, verb: &str, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        bail!(
            "no dead letter matches the filters; nothing {}",
            verb.trim_start_matches("would ")
        );
    }
    let _ = out.flush();
    Ok(())
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

fn print_table(out: &mut dyn Write, views: &[DeadLetterView]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.event_type.clone(),
                v.endpoint.clone(),
                v.reason.clone(),
                v.attempts.to_string(),
                v.last_status.map_or_else(|| "-".into(), |s| s.to_string()),
                v.failed_at
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    write_table(
        out,
        &[
            "EVENT ID",
            "TYPE",
            "ENDPOINT",
            "REASON",
            "ATTEMPTS",
            "LAST STATUS",
            "FAILED AT",
        ],
        &rows,
    )
}

fn write_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
