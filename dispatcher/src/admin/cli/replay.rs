//! `hookpost-admin replay`: send again every archived event of a window that
//! an endpoint takes, at a bounded rate, reporting progress on stderr and
//! what it sent on stdout.

use crate::admin::Admin;
use anyhow::bail;
use common::archive::replay::{DEFAULT_RATE, Note, Request, check_rate};
use std::io::Write;

#[derive(Debug, clap::Args)]
pub(super) struct ReplayArgs {
    /// The endpoint to send to (file or registered; its environments'
    /// variants `<id>~<env>` get the events of their environment).
    #[arg(long)]
    endpoint: String,
    /// Events archived at or after: RFC 3339, or a duration ago (30m, 2h, 7d).
    #[arg(long)]
    since: String,
    /// Events archived before: RFC 3339, or a duration ago. Default: now.
    #[arg(long)]
    until: Option<String>,
    /// Only events whose type matches this pattern (`order.*`, `order.#`).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Events per second (default 500; never above the endpoint's rate limit).
    #[arg(long)]
    rate: Option<f64>,
    /// Count what would be sent; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// The final report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also print each event sent (on a dry run: each that would be), one line each.
    #[arg(long)]
    ids: bool,
}

impl ReplayArgs {
    /// The request these arguments ask for, checked before any broker work.
    pub(super) fn request(&self) -> anyhow::Result<Request> {
        let (since, until) = super::window(&self.since, self.until.as_deref())?;
        if let Some(p) = &self.event_type
            && !common::config::is_valid_pattern(p)
        {
            bail!("--type {p:?} is not a pattern (dot-separated words, `*` or `#`)");
        }
        if let Some(t) = &self.tenant
            && !common::routing::is_valid_scope(t)
        {
            bail!("--tenant {t:?} must be 1 to 64 characters of [a-z0-9_-]");
        }
        let rate =
            check_rate(self.rate.unwrap_or(DEFAULT_RATE)).map_err(|e| anyhow::anyhow!("--{e}"))?;
        Ok(Request {
            since,
            until,
            event_type: self.event_type.clone(),
            tenant: self.tenant.clone(),
            rate,
            dry_run: self.dry_run,
        })
    }
}

/// Runs the replay; Ctrl-C stops it after the event being sent.
pub(super) async fn run(
    admin: &Admin,
    args: &ReplayArgs,
    request: &Request,
    stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    let stop = super::stop_on_signal();
    let verb = if args.dry_run { "would send" } else { "sent" };
    let mut report = |note: Note<'_>| match note {
        Note::Sent { event_id, queue } => {
            if args.ids {
                println!("{verb} {event_id} -> {queue}");
            }
        }
        Note::Progress(p) if !p.finished => {
            eprintln!(
                "replay {}: read {}, matched {}, sent {}{}",
                args.endpoint,
                p.scanned,
                p.matched,
                p.sent,
                p.position
                    .as_deref()
                    .map(|at| format!(", at {at}"))
                    .unwrap_or_default()
            );
        }
        Note::Progress(_) => {}
    };
    let progress = admin
        .replay(&args.endpoint, request, &stop, &mut report)
        .await?;
    if args.json {
        let mut value = serde_json::to_value(&progress)?;
        value["endpoint"] = args.endpoint.clone().into();
        value["dry_run"] = args.dry_run.into();
        writeln!(stdout, "{value}")?;
    } else if args.dry_run {
        writeln!(
            stdout,
            "dry run: {} of {} archived events in the window would be sent to {}; nothing was sent",
            progress.matched, progress.scanned, args.endpoint
        )?;
    } else {
        writeln!(
            stdout,
            "sent {} of {} matching events to {} ({} archived events read){}",
            progress.sent,
            progress.matched,
            args.endpoint,
            progress.scanned,
            if progress.finished {
                ""
            } else {
                "; stopped before the end of the window"
            }
        )?;
    }
    Ok(())
}
