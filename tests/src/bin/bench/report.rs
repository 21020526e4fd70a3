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
    /// CPU seconds of every RabbitMQ node on this machine during the
    /// scenario ([`CpuMark`]).
    pub(crate) broker_cpu_s: Option<f64>,
    /// CPU seconds of the bench process itself (publisher, consumer or
    /// receiver; not its dispatcher child) during the scenario.
    pub(crate) bench_cpu_s: Option<f64>,
    /// The scale scenario's one `/metrics` scrape: series and bytes.
    #[serde(skip)]
    pub(crate) scrape: Option<(usize, usize)>,
    /// What the table has no column for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) notes: Option<String>,
}

impl Row {
    /// A throughput row: `n` events delivered once each in `seconds`, with
    /// the peak RSS and CPU of the process that delivered them.
    pub(crate) fn delivered(
        scenario: String,
        n: usize,
        seconds: f64,
        (rss, cpu): (Option<f64>, Option<f64>),
    ) -> Self {
        Self {
            scenario,
            events: n,
            deliveries: n,
            seconds,
            events_per_s: n as f64 / seconds,
            dispatcher_peak_rss_mib: rss,
            dispatcher_cpu_s: cpu,
            ..Self::default()
        }
    }
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
        "\n| scenario | events | deliveries | events/s | ratio to raw broker | p50 ms | p95 ms | p99 ms | dispatcher peak RSS MiB | dispatcher CPU s | broker CPU s | bench CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            f(r.broker_cpu_s, 2),
            f(r.bench_cpu_s, 2),
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

/// CPU seconds used so far by the broker and by this process: taken before
/// a scenario, [`CpuMark::fill`] after it writes the difference into its row.
///
/// Every process on the machine shares its cores, so a rate is set by the
/// CPU each path costs per event, summed over the processes (BENCHMARKS.md,
/// "where the CPU goes"). The broker's is that of every `beam.smp` process
/// on this machine (the bench assumes one RabbitMQ node, the shared one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    broker: Option<f64>,
    bench: Option<f64>,
}

impl CpuMark {
    pub(crate) fn now() -> Self {
        Self {
            broker: broker_cpu(),
            bench: cpu_of("/proc/self/stat"),
        }
    }

    /// Sets `row`'s broker and bench CPU to what they used since `self`.
    pub(crate) fn fill(&self, row: &mut Row) {
        let now = Self::now();
        row.broker_cpu_s = now.broker.zip(self.broker).map(|(b, a)| b - a);
        row.bench_cpu_s = now.bench.zip(self.bench).map(|(b, a)| b - a);
    }

    /// [`CpuMark::fill`], returning the row.
    pub(crate) fn filled(&self, mut row: Row) -> Row {
        self.fill(&mut row);
        row
    }
}

/// `utime + stime` in seconds from a `/proc/<pid>/stat` file.
pub(crate) fn cpu_of(stat: &str) -> Option<f64> {
    ticks_at(stat, 11)
}

/// CPU seconds of this process's children that have been waited for
/// (`cutime + cstime`): around one child's run and wait, that child's.
pub(crate) fn waited_children_cpu() -> Option<f64> {
    ticks_at("/proc/self/stat", 13)
}

/// The two clock-tick fields of `stat` starting at `first` (counted after
/// the command name), summed, in seconds.
fn ticks_at(stat: &str, first: usize) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 =
        fields.get(first)?.parse::<f64>().ok()? + fields.get(first + 1)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux the bench runs on.
    Some(ticks / 100.0)
}

/// The CPU seconds of every RabbitMQ node (`beam.smp` running `rabbit`)
/// on this machine; `None` when there is none (a remote broker).
fn broker_cpu() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "beam.smp")
            && std::fs::read(dir.join("cmdline"))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"rabbit\0boot"))
            && let Some(cpu) = cpu_of(&dir.join("stat").to_string_lossy())
        {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

/// Waits (up to 20 s) until the local broker has been quiet, not one CPU
/// clock tick (10 ms) in each of three 100 ms samples in a row (an idle
/// broker here uses none for seconds), so that a round does not pay
/// for the previous one's background work (a deleted queue's files, the
/// write-ahead log's segments): both sides of a comparison start alike.
/// Returns at once for a remote broker.
pub(crate) async fn broker_quiet() {
    let Some(mut last) = broker_cpu() else {
        return;
    };
    let (started, mut calm) = (std::time::Instant::now(), 0);
    while calm < 3 && started.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Some(now) = broker_cpu() else {
            return;
        };
        calm = if now - last < 0.005 { calm + 1 } else { 0 };
        last = now;
    }
    if std::env::var_os("BENCH_DEBUG_QUIET").is_some() {
        eprintln!(
            "broker quiet after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}
