//! Many endpoints on one dispatcher (issue 15): time to ready, time to
//! deliver one event to each, the dispatcher's RSS and CPU, the broker's
//! memory, and what one `/metrics` scrape costs.

use crate::hookpost::start_dispatcher;
use crate::raw::sink;
use crate::report::{Row, now_nanos};
use common::Event;
use producer::Publisher;
use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};

/// `k` endpoints (classic queues), one event type each; one event published
/// to every endpoint.
pub(crate) async fn scale(k: usize, size: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let endpoints: String = (0..k)
        .map(|i| {
            format!("[[endpoints]]\nid = \"e{i}\"\nurl = \"{url}\"\nevents = [\"bench.e{i}\"]\n")
        })
        .collect();
    let queue_setting = "queue_type = \"classic\"";
    let broker_before = broker_memory_mib();
    let started = Instant::now();
    let dispatcher = start_dispatcher(&scope, &endpoints, "scale", queue_setting).await?;
    let ready_s = started.elapsed().as_secs_f64();
    let broker_after = broker_memory_mib();
    let config = scope.config_with("", queue_setting, &amqp_url());
    let publisher = Publisher::connect(&config).await?;
    let pad = "x".repeat(size.saturating_sub(150));
    let events: Vec<Event> = (0..k)
        .map(|i| {
            Event::new(
                &format!("bench.e{i}"),
                serde_json::json!({ "t": now_nanos(), "pad": pad }),
            )
            .expect("valid")
        })
        .collect();
    let started = Instant::now();
    publisher.publish_many(&events).await?;
    sink.wait_for(k as u64, Duration::from_secs(600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let scrape = reqwest::get(format!("{}/metrics", dispatcher.metrics))
        .await?
        .text()
        .await?;
    let series = scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let (rss, cpu) = dispatcher.stats();
    dispatcher.stop();
    publisher.close().await;
    let broker = match (broker_before, broker_after) {
        (Some(b), Some(a)) => format!("broker memory {b:.0} → {a:.0} MiB with the queues declared"),
        _ => "broker memory not measured (rabbitmqctl unavailable)".to_owned(),
    };
    Ok(Row {
        scenario: format!("{k} endpoints, one event each (classic queues)"),
        events: k,
        deliveries: k,
        seconds,
        events_per_s: 0.0,
        dispatcher_peak_rss_mib: rss,
        dispatcher_cpu_s: cpu,
        notes: Some(format!(
            "ready in {ready_s:.1} s; all delivered in {seconds:.1} s; one /metrics scrape: {series} series, {:.1} MB; {broker}",
            scrape.len() as f64 / 1e6
        )),
        ..Row::default()
    })
}

/// The broker node's total memory (`rabbitmqctl status`), in MiB.
fn broker_memory_mib() -> Option<f64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["status", "--formatter", "json"])
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let total = &status["memory"]["total"];
    let bytes = total["rss"]
        .as_f64()
        .or_else(|| total["erlang"].as_f64())
        .or_else(|| total.as_f64())?;
    Some(bytes / (1024.0 * 1024.0))
}
