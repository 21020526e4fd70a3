//! `hookpost-admin log`: what the attempt log says about an endpoint, an
//! event, a tenant, an outcome or a status, within a time window; or a live
//! tail (`--follow`).

use super::output::write_table;
use crate::admin::Admin;
use anyhow::bail;
use common::history::{Attempt, Outcome, Query};
use std::io::Write;

/// How far back a query reaches without `--since`.
const DEFAULT_SINCE: &str = "1h";

/// The records shown without `--limit`.
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, clap::Args)]
pub(super) struct LogArgs {
    /// Only this endpoint's attempts (its environments' `<id>~<env>` too).
    #[arg(long)]
    endpoint: Option<String>,
    /// Only this event's attempts.
    #[arg(long)]
    event: Option<String>,
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this outcome: delivered, retry, dead_lettered, filtered or dropped.
    #[arg(long)]
    outcome: Option<String>,
    /// Only this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Attempts that began at or after: RFC 3339, or a duration ago (30m,
    /// 2h, 7d). Default: 1h. The read starts at this time's place in the
    /// log, so a wider window costs more.
    #[arg(long)]
    since: Option<String>,
    /// Attempts that began before: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Show at most this many (the newest). Default: 100.
    #[arg(long)]
    limit: Option<usize>,
    /// JSON lines (one record each) instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep printing matching attempts as they happen, until Ctrl-C.
    #[arg(long)]
    follow: bool,
}

impl LogArgs {
    /// The query these arguments ask for, checked before any broker work.
    pub(super) fn query(&self) -> anyhow::Result<Query> {
        let (since, until) = super::window(
            self.since.as_deref().unwrap_or(DEFAULT_SINCE),
            self.until.as_deref(),
        )?;
        let outcome = match self.outcome.as_deref() {
            None => None,
            Some(o) => Some(Outcome::parse(o).ok_or_else(|| {
                anyhow::anyhow!(
                    "--outcome {o:?} is not one of {}",
                    Outcome::ALL.map(Outcome::as_str).join(", ")
                )
            })?),
        };
        if let Some(t) = &self.tenant
            && !common::routing::is_valid_scope(t)
        {
            bail!("--tenant {t:?} must be 1 to 64 characters of [a-z0-9_-]");
        }
        if self.follow && self.until.is_some() {
            bail!("--follow shows attempts as they happen: it takes no --until");
        }
        Ok(Query {
            endpoint: self.endpoint.clone(),
            endpoints_in: None,
            event: self.event.clone(),
            tenant: self.tenant.clone(),
            outcome,
            status: self.status,
            since,
            until,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT),
        })
    }
}

/// Prints the newest matching attempts; with `--follow`, then each new one.
pub(super) async fn run(
    admin: &Admin,
    args: &LogArgs,
    query: &Query,
    stdout: &mut std::io::StdoutLock<'_>,
) -> anyhow::Result<()> {
    let (found, scanned) = if args.follow {
        let stop = super::stop_on_signal();
        let json = args.json;
        let mut each = move |a: &Attempt| {
            let mut out = std::io::stdout().lock();
            let _ = print(&mut out, std::slice::from_ref(a), json, false);
        };
        // The newest first, then the tail.
        let head = admin.log(query, None).await?;
        print(stdout, &head.0, args.json, true)?;
        stdout.flush()?;
        let tail_query = Query {
            since: time::OffsetDateTime::now_utc(),
            ..query.clone()
        };
        admin.log(&tail_query, Some((&stop, &mut each))).await?;
        head
    } else {
        admin.log(query, None).await?
    };
    if !args.follow {
        print(stdout, &found, args.json, true)?;
    }
    if !args.json {
        writeln!(
            stdout,
            "{} of {} matching attempts shown ({} records read)",
            found.len(),
            scanned.matched,
            scanned.records
        )?;
    }
    Ok(())
}

fn print(
    out: &mut dyn Write,
    attempts: &[Attempt],
    json: bool,
    header: bool,
) -> anyhow::Result<()> {
    if json {
        for a in attempts {
            writeln!(out, "{}", serde_json::to_string(a)?)?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            vec![
                a.started_at.clone(),
                a.endpoint.clone(),
                a.event_id.clone(),
                a.attempt.to_string(),
                a.outcome.as_str().to_owned(),
                a.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                format!("{} ms", a.duration_ms),
                one_line(&match (&a.error, &a.response) {
                    (Some(e), Some(r)) => format!("{e}: {r}"),
                    (Some(e), None) => e.clone(),
                    (None, Some(r)) => r.clone(),
                    (None, None) => String::new(),
                }),
            ]
        })
        .collect();
    if header {
        write_table(
            out,
            &[
                "started",
                "endpoint",
                "event",
                "attempt",
                "outcome",
                "status",
                "took",
                "error / response",
            ],
            &rows,
        )
    } else {
        for row in rows {
            writeln!(out, "{}", row.join("  "))?;
        }
        Ok(())
    }
}

/// `s` on one line, at most 80 characters.
fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > 80 {
        format!("{}…", flat.chars().take(79).collect::<String>())
    } else {
        flat
    }
}
