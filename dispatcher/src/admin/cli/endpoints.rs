//! `hookpost-admin endpoints …`: the endpoint table; pause, resume; create,
//! update, get, delete and rotate registered endpoints.

use super::output::write_table;
use super::{EndpointFilters, EndpointsCmd};
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
    filters: EndpointFilters,
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
        None => list(admin, &filters, stdout).await,
        // `endpoints --tenant T list` and `endpoints list --tenant T` alike.
        Some(EndpointsCmd::List(f)) => {
            let merged = EndpointFilters {
                tenant: f.tenant.or(filters.tenant),
                environment: f.environment.or(filters.environment),
            };
            list(admin, &merged, stdout).await
        }
    }
}

/// One row of the table: a queue (an endpoint's own, or `<id>~<env>`).
struct Row {
    id: String,
    url: String,
    events: Vec<String>,
    source: &'static str,
    tenant: Option<String>,
    environment: Option<String>,
}

/// The table: each endpoint, then each of its variants; the file's first,
/// then the registry's; filtered by tenant and environment.
async fn list(
    admin: &Admin,
    filters: &EndpointFilters,
    stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    for (flag, value) in [
        ("--tenant", &filters.tenant),
        ("--environment", &filters.environment),
    ] {
        if let Some(v) = value
            && !common::routing::is_valid_scope(v)
        {
            bail!("{flag} {v:?}: must be 1 to 64 characters of [a-z0-9_-]");
        }
    }
    let holds = admin.holds().await?;
    let mut all = Vec::new();
    // The config holds each file variant as an endpoint of its own.
    for e in &admin.config().endpoints {
        all.push(Row {
            id: e.id.clone(),
            url: e.url.to_string(),
            events: e.events.clone(),
            source: "file",
            tenant: e.tenant.clone(),
            environment: e.environment.clone(),
        });
    }
    for s in holds.endpoints.values() {
        if admin.config().is_file_endpoint(&s.id) {
            continue;
        }
        let tenant = s.tenant().map(str::to_owned);
        all.push(Row {
            id: s.id.clone(),
            url: s.url().to_owned(),
            events: s.events(),
            source: "registry",
            tenant: tenant.clone(),
            environment: None,
        });
        for env in s.environment_names() {
            let url = s
                .settings
                .get("environments")
                .and_then(|e| e.get(&env))
                .and_then(|e| e.get("url"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned();
            all.push(Row {
                id: format!("{}{}{env}", s.id, common::config::VARIANT_SEPARATOR),
                url,
                events: s.events(),
                source: "registry",
                tenant: tenant.clone(),
                environment: Some(env),
            });
        }
    }
    all.retain(|r| {
        filters
            .tenant
            .as_ref()
            .is_none_or(|t| r.tenant.as_ref() == Some(t))
            && filters
                .environment
                .as_ref()
                .is_none_or(|e| r.environment.as_ref() == Some(e))
    });
    let mut rows = Vec::new();
    for r in &all {
        let status = admin
            .queue_status(&admin.topology().endpoint_queue(&r.id))
            .await?;
        let (depth, consumers) = status.map_or(("-".to_owned(), "-".to_owned()), |(d, c)| {
            (d.to_string(), c.to_string())
        });
        let state = match status {
            // A hold on an endpoint holds its variants too.
            _ if holds.holds.contains(&r.id)
                || holds.holds.contains(common::config::base_id(&r.id)) =>
            {
                "paused by an operator"
            }
            None => "not declared",
            Some((_, 0)) => "not consumed (no dispatcher, or paused)",
            Some(_) => "consumed",
        };
        rows.push(vec![
            r.id.clone(),
            redact_url(&r.url),
            r.events.join(","),
            depth,
            consumers,
            state.to_owned(),
            r.source.to_owned(),
            r.tenant.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    write_table(
        stdout,
        &[
            "ID",
            "URL",
            "EVENTS",
            "QUEUED",
            "CONSUMERS",
            "STATE",
            "SOURCE",
            "TENANT",
        ],
        &rows,
    )?;
    Ok(())
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
