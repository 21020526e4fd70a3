//! Tenants (issue 16): `n` tenants with three endpoints each on one
//! dispatcher, events for every tenant; each endpoint must receive exactly
//! its tenant's events that match its patterns, routed by the broker.

use crate::hookpost::start_dispatcher;
use crate::report::{Row, now_nanos};
use crate::sink::sink;
use common::Event;
use producer::Publisher;
use std::time::{Duration, Instant};
use tests::{Scope, amqp_url};

/// Each tenant's endpoints: name, pattern, and how many of the tenant's
/// events (see [`EVENTS`]) it takes.
const ENDPOINTS: [(&str, &str, usize); 3] = [
    ("orders", "order.*", 2),
    ("billing", "invoice.*", 1),
    ("all", "#", 4),
];
/// Each tenant's events.
const EVENTS: [&str; 4] = [
    "order.created",
    "order.paid",
    "invoice.sent",
    "user.created",
];

pub(crate) async fn tenants(n: usize, size: usize) -> anyhow::Result<Row> {
    let scope = Scope::new().await;
    let (url, sink) = sink().await?;
    sink.record_paths();
    let mut endpoints = String::new();
    for t in 0..n {
        for (name, pattern, _) in ENDPOINTS {
            endpoints.push_str(&format!(
                "[[endpoints]]\nid = \"t{t}-{name}\"\nurl = \"{url}/t{t}/{name}\"\nevents = [\"{pattern}\"]\ntenant = \"t{t}\"\n"
            ));
        }
    }
    // Classic queues: 3 × n quorum queues need ~9 × n open files.
    let queue_setting = "queue_type = \"classic\"";
    let started = Instant::now();
    let dispatcher = start_dispatcher(&scope, &endpoints, "tenants", queue_setting).await?;
    let ready_s = started.elapsed().as_secs_f64();
    let config = scope.config_with("", queue_setting, &amqp_url());
    let publisher = Publisher::connect(&config).await?;
    let pad = "x".repeat(size.saturating_sub(180));
    let events: Vec<Event> = (0..n)
        .flat_map(|t| EVENTS.iter().map(move |ty| (t, *ty)))
        .map(|(t, ty)| {
            Event::new(ty, serde_json::json!({ "t": now_nanos(), "pad": pad }))
                .and_then(|e| e.with_scope(Some(&format!("t{t}")), None))
                .expect("valid")
        })
        .collect();
    let per_tenant: usize = ENDPOINTS.iter().map(|(_, _, k)| k).sum();
    let deliveries = n * per_tenant;
    let started = Instant::now();
    publisher.publish_many(&events).await?;
    sink.wait_for(deliveries as u64, Duration::from_secs(600))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let (rss, cpu) = dispatcher.stats();
    dispatcher.stop();
    publisher.close().await;
    // Every endpoint: exactly its count, every event of its own tenant.
    let by_path = sink.by_path.lock().expect("lock").clone();
    let mut wrong = Vec::new();
    for t in 0..n {
        for (name, _, want) in ENDPOINTS {
            let got = by_path
                .get(&format!("/hook/t{t}/{name}"))
                .cloned()
                .unwrap_or_default();
            let tenant = format!("t{t}");
            if got.len() != want || got.iter().any(|g| g.as_deref() != Some(tenant.as_str())) {
                wrong.push(format!("t{t}-{name}: {got:?}"));
            }
        }
    }
    let total = sink.received.load(std::sync::atomic::Ordering::SeqCst);
    anyhow::ensure!(
        wrong.is_empty() && total == deliveries as u64,
        "isolation broken: {} of {} endpoints got the wrong events (first: {:?}); {total} deliveries, expected {deliveries}",
        wrong.len(),
        n * ENDPOINTS.len(),
        wrong.first()
    );
    Ok(Row {
        scenario: format!("{n} tenants × {} endpoints", ENDPOINTS.len()),
        events: events.len(),
        deliveries,
        seconds,
        events_per_s: deliveries as f64 / seconds,
        dispatcher_peak_rss_mib: rss,
        dispatcher_cpu_s: cpu,
        notes: Some(format!(
            "ready in {ready_s:.1} s; each of the {} endpoints received exactly its tenant's matching events ({deliveries} deliveries of {} events)",
            n * ENDPOINTS.len(),
            events.len()
        )),
        ..Row::default()
    })
}
