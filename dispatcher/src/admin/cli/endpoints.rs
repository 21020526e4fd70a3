//! `hookpost-admin endpoints …`: the endpoint table; pause, resume; create,
//! update, get, delete and rotate registered endpoints.

use super::EndpointsCmd;
use super::output::write_table;
use crate::admin::Admin;
use anyhow::bail;
use common::registry;
use common::registry::{Mode, OpError};
use common::secret::redact_url;
use std::io::Write;

/// Runs one `endpoints` subcommand (none: the table).
pub(super) async fn run(
    admin: &Admin,
    action: Option<EndpointsCmd>,
    mut stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    match action {
        Some(EndpointsCmd::Pause { id }) => hold(admin, &id, true, &mut stdout).await,
        Some(EndpointsCmd::Resume { id }) => hold(admin, &id, false, &mut stdout).await,
        Some(EndpointsCmd::Create { body }) => {
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
        Some(EndpointsCmd::Update { id, body, replace }) => {
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
        Some(EndpointsCmd::Get { id }) => {
            let state = admin.registry().state().await.map_err(op_error)?;
            let stored = state
                .endpoints
                .get(&id)
                .ok_or_else(|| anyhow::anyhow!("no registered endpoint {id:?}"))?;
            let view = registry::public_view(stored, state.holds.contains(&id));
            writeln!(stdout, "{}", serde_json::to_string_pretty(&view)?)?;
            Ok(())
        }
        Some(EndpointsCmd::Delete { id, force }) => {
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
        Some(EndpointsCmd::RotateSecret { id }) => {
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
        None | Some(EndpointsCmd::List) => {
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
