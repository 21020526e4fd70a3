//! `hookpost-admin dlq …`: list, stats, show, replay, purge, export, import.

use super::Dlq;
use super::output::{print_table, summary, write_table};
use crate::admin::record::Record;
use crate::admin::view::Filter;
use crate::admin::{Action, Admin};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::io::Write;

/// Runs one `dlq` subcommand on the dead letters `filter` and `limit` select
/// (`records`: what `dlq import` read, checked before connecting).
pub(super) async fn run(
    admin: &Admin,
    cmd: Dlq,
    filter: Filter,
    limit: Option<usize>,
    records: Option<Vec<Record>>,
    mut stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    match cmd {
        Dlq::List { json, .. } => {
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
        Dlq::Stats { .. } => {
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
        Dlq::Show { event_id } => {
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
        Dlq::Replay {
            dry_run: true,
            to_endpoint,
            ..
        } => {
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
        Dlq::Purge { dry_run: true, .. } => {
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
        Dlq::Replay {
            rate, to_endpoint, ..
        } => {
            let report = admin
                .apply(
                    &filter,
                    limit,
                    &Action::Replay {
                        to: to_endpoint,
                        rate,
                    },
                    // The same buffer as `stdout` (its lock is reentrant).
                    &mut std::io::stdout(),
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
        Dlq::Purge { .. } => {
            let report = admin
                .apply(&filter, limit, &Action::Purge, &mut std::io::stdout())
                .await?;
            writeln!(stdout, "purged {}, kept {}", report.done, report.kept)?;
            summary(&mut stdout, "purged", report.done)
        }
        Dlq::Export { out, .. } => {
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
        Dlq::Import { file } => {
            let records = records.unwrap_or_default();
            let n = admin.import(&records).await?;
            writeln!(stdout, "imported {n} dead letters from {}", file.display())?;
            Ok(())
        }
    }
}
