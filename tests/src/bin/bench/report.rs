//! The result table: one row per scenario, percentiles, progress lines.

use common::Event;
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) events: usize,
    pub(crate) deliveries: usize,
    pub(crate) seconds: f64,
    pub(crate) events_per_s: f64,
    pub(crate) ratio_to_raw_broker: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) dispatcher_peak_rss_mib: Option<f64>,
    pub(crate) dispatcher_cpu_s: Option<f64>,
    /// What the table has no column for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) notes: Option<String>,
}

pub(crate) fn progress(row: &Row) {
    eprintln!(
        "  {}: {:.0} events/s, p99 {:?} ms, RSS {:?} MiB ({:.1} s)",
        row.scenario, row.events_per_s, row.p99_ms, row.dispatcher_peak_rss_mib, row.seconds
    );
}

pub(crate) fn progress_of(row: Row) -> Row {
    progress(&row);
    row
}

pub(crate) fn print_table(rows: &[Row]) {
    println!(
        "\n| scenario | events | deliveries | events/s | ratio to raw broker | p50 ms | p95 ms | p99 ms | dispatcher peak RSS MiB | dispatcher CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.events,
            r.deliveries,
            if r.events_per_s > 0.0 {
                format!("{:.0}", r.events_per_s)
            } else {
                "-".into()
            },
            f(r.ratio_to_raw_broker.map(|v| v * 100.0), 0)
                + if r.ratio_to_raw_broker.is_some() {
                    "%"
                } else {
                    ""
                },
            f(r.p50_ms, 1),
            f(r.p95_ms, 1),
            f(r.p99_ms, 1),
            f(r.dispatcher_peak_rss_mib, 1),
            f(r.dispatcher_cpu_s, 2),
        );
    }
    for r in rows {
        if let Some(notes) = &r.notes {
            println!("\n- {}: {notes}", r.scenario);
        }
    }
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An event of about `size` JSON bytes carrying its publish time.
pub(crate) fn event(size: usize) -> Event {
    let pad = "x".repeat(size.saturating_sub(150));
    Event::new(
        "bench.event",
        serde_json::json!({ "t": now_nanos(), "pad": pad }),
    )
    .expect("valid")
}

pub(crate) fn percentiles(mut v: Vec<u64>) -> (Option<f64>, Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None, None);
    }
    v.sort_unstable();
    let at =
        |q: f64| Some(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e6);
    (at(0.50), at(0.95), at(0.99))
}
