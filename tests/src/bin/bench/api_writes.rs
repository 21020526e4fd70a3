//! Management API writes at scale: `n` endpoints registered through the API
//! by four clients at once, then `PATCH`es one at a time at that size. The
//! API runs in this process (as `hookpost-producer serve` runs it), on
//! classic queues (`n` quorum queues need about `3 × n` open files on the
//! broker).

use crate::report::{CpuMark, Row, percentiles};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tests::Scope;
use tests::api::Api;

const OPERATOR: &str = "bench-operator-token-0123456789";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Clients creating at once.
const CLIENTS: usize = 4;
/// `PATCH`es timed at full size.
const PATCHES: usize = 100;

/// Two rows: the creates (rate and latency), then the `PATCH`es at `n`.
pub(crate) async fn api_writes(n: usize) -> anyhow::Result<Vec<Row>> {
    let scope = Scope::new().await;
    let config = scope.config_with(
        &format!("[api]\ntokens = [\"{OPERATOR}\"]\n[registry]\nsecrets_key = \"{KEY}\"\n[http]\nallowed_networks = [\"127.0.0.0/8\"]\n"),
        "queue_type = \"classic\"",
        &tests::amqp_url(),
    );
    for i in 0..n {
        scope.track_endpoint(&config, &format!("w{i}"));
    }
    let api = Api::start(&config).await;
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuMark::now();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, root, next) = (http.clone(), api.root.clone(), next.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(took);
                    }
                    let at = Instant::now();
                    let r = http
                        .post(format!("{root}/v1/endpoints"))
                        .bearer_auth(OPERATOR)
                        .header("content-type", "application/json")
                        .body(
                            serde_json::json!({
                                "id": format!("w{i}"),
                                "url": "http://127.0.0.1:9/hook",
                                "events": [format!("order.{i}")],
                            })
                            .to_string(),
                        )
                        .send()
                        .await?;
                    let status = r.status();
                    anyhow::ensure!(status == 201, "create w{i}: {status} {}", r.text().await?);
                    took.push(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
            })
        })
        .collect();
    let mut created = Vec::with_capacity(n);
    for client in clients {
        created.extend(client.await??);
    }
    let creates = cpu.filled(row(
        format!("API creates, {CLIENTS} clients, up to {n} endpoints"),
        started,
        created,
        "events = writes; latencies are per create, four at once",
    ));
    let cpu = CpuMark::now();
    let started = Instant::now();
    let mut took = Vec::with_capacity(PATCHES);
    for k in 0..PATCHES {
        let id = format!("w{}", (k * 7919) % n.max(1));
        let at = Instant::now();
        let r = http
            .patch(format!("{}/v1/endpoints/{id}", api.root))
            .bearer_auth(OPERATOR)
            .header("content-type", "application/merge-patch+json")
            .body(format!("{{\"description\":\"change {k}\"}}"))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "patch {id}: {}", r.status());
        took.push(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let patches = cpu.filled(row(
        format!("API PATCH at {n} endpoints, one at a time"),
        started,
        took,
        "events = writes",
    ));
    Ok(vec![creates, patches])
}

/// A row of writes that started at `started`, each taking `took` (ns).
fn row(scenario: String, started: Instant, took: Vec<u64>, notes: &str) -> Row {
    let seconds = started.elapsed().as_secs_f64();
    let events = took.len();
    let (p50, p95, p99) = percentiles(took);
    Row {
        scenario,
        events,
        seconds,
        events_per_s: events as f64 / seconds,
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        notes: Some(notes.into()),
        ..Row::default()
    }
}
