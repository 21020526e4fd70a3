//! Many endpoints on one dispatcher (issue 15): time to ready, time to
//! deliver one event to each, the dispatcher's RSS and CPU, the broker's
//! memory, and what one `/metrics` scrape costs.

use crate::hookpost::start_dispatcher;
use crate::report::{Row, now_nanos};
use crate::sink::sink;
use common::Event;
use producer::Publisher;
use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};

/// `k` endpoints (`queue_type` queues), one event type each; one event
/// published to every endpoint.
pub(crate) async fn scale(k: usize, size: usize, queue_type: &str) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    let endpoints: String = (0..k)
        .map(|i| {
            format!("[[endpoints]]\nid = \"e{i}\"\nurl = \"{url}\"\nevents = [\"bench.e{i}\"]\n")
        })
        .collect();
    let queue_setting = format!("queue_type = \"{queue_type}\"");
    let broker_before = broker_status();
    let started = Instant::now();
    let dispatcher = start_dispatcher(&scope, &endpoints, "scale", &queue_setting).await?;
    let ready_s = started.elapsed().as_secs_f64();
    let broker_after = broker_status();
    let config = scope.config_with("", &queue_setting, &amqp_url());
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
    let broker = describe_broker(broker_before, broker_after, k);
    Ok(Row {
        scenario: format!("{k} endpoints, one event each ({queue_type} queues)"),
        events: k,
        deliveries: k,
        seconds,
        events_per_s: 0.0,
        dispatcher_peak_rss_mib: rss,
        dispatcher_cpu_s: cpu,
        scrape: Some((series, scrape.len())),
        notes: Some(format!(
            "ready in {ready_s:.1} s; all delivered in {seconds:.1} s; one /metrics scrape: {series} series, {:.1} MB; {broker}",
            scrape.len() as f64 / 1e6
        )),
        ..Row::default()
    })
}

/// What the broker node holds (`rabbitmqctl status`; the node `AMQP_URL`
/// reaches must be the one `rabbitmqctl` talks to, `RABBITMQ_NODENAME`).
#[derive(Debug, Clone, Copy)]
struct BrokerStatus {
    /// Memory allocated by the Erlang VM, MiB.
    erlang_mib: f64,
    /// The node's RSS, MiB (never shrinks after a run: the VM keeps its pages).
    rss_mib: f64,
    /// Open file descriptors (files and sockets).
    fds: u64,
}

fn broker_status() -> Option<BrokerStatus> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["status", "--formatter", "json"])
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let total = &status["memory"]["total"];
    let mib = |v: &serde_json::Value| v.as_f64().map(|b| b / (1024.0 * 1024.0));
    Some(BrokerStatus {
        erlang_mib: mib(&total["erlang"])?,
        rss_mib: mib(&total["rss"]).unwrap_or(0.0),
        fds: status["file_descriptors"]["total_used"]
            .as_u64()
            .unwrap_or(0),
    })
}

fn describe_broker(before: Option<BrokerStatus>, after: Option<BrokerStatus>, k: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!(
            "broker with the queues declared and consumed: Erlang memory {:.0} → {:.0} MiB ({:.1} KiB per endpoint), RSS {:.0} → {:.0} MiB, open files {} → {}",
            b.erlang_mib,
            a.erlang_mib,
            (a.erlang_mib - b.erlang_mib) * 1024.0 / k.max(1) as f64,
            b.rss_mib,
            a.rss_mib,
            b.fds,
            a.fds
        ),
        _ => "broker not measured (rabbitmqctl unavailable)".to_owned(),
    }
}
