//! The publishing side of issue 15: hookpost's publisher alone against a raw
//! publisher in the same run, and the CLI path (`hookpost-producer publish
//! --count N`, the release binary as a subprocess) through a dispatcher.

use crate::hookpost::*;
use crate::raw::*;
use crate::report::*;
use crate::sink::*;
use common::Event;
use common::topology::Topology;
use producer::Publisher;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::Scope;

/// `publish_many` of `n` events into a quorum queue (an endpoint's, no
/// dispatcher), against the raw publisher into a quorum queue by each of
/// [`CEILING_CANDIDATES`] (one channel, four, four on their own
/// connections), `rounds` times each, hookpost's publisher after each raw
/// round; the best round of each, the raw one's over every method. The
/// publisher's row carries its ratio to the raw publisher's.
pub(crate) async fn publisher_alone(
    n: usize,
    size: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    publisher_alone_with(n, size, rounds, "").await
}

/// [`publisher_alone`], the `n` events published by `n` concurrent tasks,
/// one `publish` call each (one `Publisher` shared): what many callers at
/// once cost the lane (issue 15: concurrent calls pipeline too). With
/// `extra` TOML in the publisher's config.
pub(crate) async fn concurrent_publishers(
    n: usize,
    size: usize,
    rounds: usize,
    extra: &str,
) -> anyhow::Result<Vec<Row>> {
    publisher_rounds(n, size, rounds, extra, true).await
}

/// [`publisher_alone`] with `extra` TOML in the publisher's config (say,
/// `[archive]`).
pub(crate) async fn publisher_alone_with(
    n: usize,
    size: usize,
    rounds: usize,
    extra: &str,
) -> anyhow::Result<Vec<Row>> {
    publisher_rounds(n, size, rounds, extra, false).await
}

/// The rounds of [`publisher_alone_with`]; hookpost's publishes by `n`
/// concurrent `publish` calls when `concurrent`, else one `publish_many`.
///
/// Each round runs the raw publisher by each of [`CEILING_CANDIDATES`], and
/// hookpost's publisher right after each raw round: so both sides get the
/// same number of rounds (three per round) in the same phases of the
/// machine. The raw publisher's figure is its best round over every method,
/// hookpost's its best round; the notes give every round and both medians
/// (BENCHMARKS.md, session 34: with hookpost given a third of the raw
/// publisher's rounds, its best of two stood against the raw best of six).
async fn publisher_rounds(
    n: usize,
    size: usize,
    rounds: usize,
    extra: &str,
    concurrent: bool,
) -> anyhow::Result<Vec<Row>> {
    // The CPU of the rounds of each, summed (the rows show all rounds').
    let (mut raw_cpu, mut ours_cpu) = (Row::default(), Row::default());
    let add = |total: &mut Row, one: Row| {
        let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b).or(b);
        total.broker_cpu_s = sum(total.broker_cpu_s, one.broker_cpu_s);
        total.bench_cpu_s = sum(total.bench_cpu_s, one.bench_cpu_s);
    };
    // Every round's rate: the raw one's by method, hookpost's in order.
    let mut by_method = vec![Vec::new(); CEILING_CANDIDATES.len()];
    let mut ours = Vec::new();
    let events: Vec<Event> = (0..n).map(|_| event(size)).collect();
    for _ in 0..rounds {
        for (m, method) in CEILING_CANDIDATES.iter().enumerate() {
            // The raw publisher by this method, into a queue of its own.
            let scope = Scope::new().await;
            let exchange = format!("{}.raw", scope.prefix);
            scope.quorum_queue_behind(&exchange).await;
            broker_quiet().await;
            let mark = CpuMark::now();
            by_method[m].push(n as f64 / raw_publish(&exchange, n, size, *method).await?);
            add(&mut raw_cpu, mark.filled(Row::default()));
            drop(scope);

            let (rate, cpu) = hookpost_round(&events, extra, concurrent).await?;
            ours.push(rate);
            add(&mut ours_cpu, cpu);
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    let raw_best = by_method.iter().map(|v| best(v)).fold(0.0_f64, f64::max);
    let ours_best = best(&ours);
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The fastest method's median against hookpost's: what a reader checks
    // the best-of ratio against.
    let fastest = by_method
        .iter()
        .max_by(|a, b| best(a).total_cmp(&best(b)))
        .map_or(0.0, |v| median(v));
    let samples = rounds * CEILING_CANDIDATES.len();
    let raw = progress_of(Row {
        scenario: format!(
            "raw publisher alone, fastest of three methods, best of {samples} rounds ({rounds} each)"
        ),
        events: n,
        seconds: n as f64 / raw_best,
        events_per_s: raw_best,
        broker_cpu_s: raw_cpu.broker_cpu_s,
        bench_cpu_s: raw_cpu.bench_cpu_s,
        notes: Some(
            CEILING_CANDIDATES
                .iter()
                .zip(&by_method)
                .map(|(m, r)| format!("{}: {}/s", m.name(), list(r)))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        ..Row::default()
    });
    let ours_row = progress_of(Row {
        scenario: format!(
            "hookpost publisher alone ({}{}), best of {samples} rounds, each after a raw round; ratio to the raw publisher",
            if concurrent {
                format!("{n} concurrent publish calls")
            } else {
                "publish_many".to_owned()
            },
            if extra.contains("[archive]\nenabled = false") {
                ", archive off"
            } else {
                ", archive on"
            }
        ),
        events: n,
        seconds: n as f64 / ours_best,
        events_per_s: ours_best,
        ratio_to_raw_broker: Some(ours_best / raw_best),
        broker_cpu_s: ours_cpu.broker_cpu_s,
        bench_cpu_s: ours_cpu.bench_cpu_s,
        notes: Some(format!(
            "rounds: {}/s; median {:.0}/s against the fastest method's median {fastest:.0}/s ({:.3})",
            list(&ours),
            median(&ours),
            median(&ours) / fastest
        )),
        ..Row::default()
    });
    Ok(vec![raw, ours_row])
}

/// One round of hookpost's publisher: a new publisher and endpoint queue,
/// `events` published by one `publish_many` or (when `concurrent`) one
/// `publish` call each; its rate and the CPU the broker and the bench spent
/// on it (in a row).
async fn hookpost_round(
    events: &[Event],
    extra: &str,
    concurrent: bool,
) -> anyhow::Result<(f64, Row)> {
    let n = events.len();
    let scope = Scope::new().await;
    let config = scope.config(extra);
    let publisher = std::sync::Arc::new(Publisher::connect(&config).await?);
    let ch = scope.connection.create_channel().await?;
    Topology::new(&config.amqp)
        .declare_endpoint(&ch, "bench", &["#".to_owned()])
        .await?;
    scope.track_endpoint(&config, "bench");
    // Made before the clock starts: the calls own their events.
    let owned = concurrent.then(|| events.to_vec());
    broker_quiet().await;
    let mark = CpuMark::now();
    let started = Instant::now();
    if let Some(owned) = owned {
        let mut calls = tokio::task::JoinSet::new();
        for event in owned {
            let publisher = publisher.clone();
            calls.spawn(async move { publisher.publish(&event).await });
        }
        while let Some(call) = calls.join_next().await {
            call??;
        }
    } else {
        publisher.publish_many(events).await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = mark.filled(Row::default());
    publisher.close().await;
    Ok((rate, cpu))
}

/// The median of `v` (0 when empty).
fn median(v: &[f64]) -> f64 {
    crate::targets::median(v).unwrap_or(0.0)
}

/// `hookpost-producer publish --count n` (a process of its own, the release
/// build beside this binary) → RabbitMQ → dispatcher (child) → receiver,
/// batches of `batch`. Wall time from the CLI's start to the last receipt.
pub(crate) async fn cli(n: usize, size: usize, batch: u32) -> anyhow::Result<Row> {
    let exe = std::env::current_exe()?.with_file_name("hookpost-producer");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: cargo build --release -p producer --bin hookpost-producer",
        exe.display()
    );
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let dispatcher = start_dispatcher(&scope, &endpoints_toml(1, &url, batch), "cli", "").await?;
    let config = scope.write_config("producer", "", "");
    let data = std::env::temp_dir().join(format!("{}-data.json", scope.prefix));
    std::fs::write(&data, serde_json::to_vec(&event(size).data)?)?;
    broker_quiet().await;
    let mark = CpuMark::now();
    let children_before = waited_children_cpu();
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .arg("--config")
        .arg(&config)
        .args([
            "publish",
            "--type",
            "bench.event",
            "--count",
            &n.to_string(),
        ])
        .arg("--data")
        .arg(format!("@{}", data.display()))
        .env("HOOKPOST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()?;
    let received = sink.wait_for(n as u64, Duration::from_secs(600)).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = child.wait()?;
    // The CLI's own CPU (the dispatcher child is still running, not waited).
    let cli_cpu = waited_children_cpu()
        .zip(children_before)
        .map(|(after, before)| after - before);
    let _ = std::fs::remove_file(&data);
    let stats = dispatcher.stats();
    dispatcher.stop();
    received?;
    anyhow::ensure!(status.success(), "hookpost-producer publish: {status}");
    let mut row = mark.filled(Row::delivered(
        format!("hookpost-producer publish --count {n} → dispatcher, batch {batch}"),
        n,
        seconds,
        stats,
    ));
    // Its bench CPU is the receiver's plus the CLI process's.
    row.bench_cpu_s = row.bench_cpu_s.zip(cli_cpu).map(|(a, b)| a + b);
    Ok(row)
}
