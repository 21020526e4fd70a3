//! The exposition passes `promtool check metrics`, and every metric the
//! Grafana dashboard and the alert rules query is one hookpost exports.

use common::Event;
use producer::Publisher;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool is needed for this test: apt-get install prometheus (Debian), or see README",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names in an exposition (histogram series folded into their family).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `hookpost_*` names a PromQL expression uses, without histogram suffixes.
fn queried(expr: &str, families: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("hookpost_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|base| families.contains(*base)))
            .map_or(name.clone(), str::to_owned);
        out.push(family);
    }
    out
}

#[tokio::test]
async fn exposition_is_valid_and_covers_the_dashboard_and_alerts() {
    let scope = Scope::new().await;
    let ok = Receiver::start().await;
    let failing = Receiver::with(Arc::new(|_, _| Reply::Status(500, vec![]))).await;
    let config = scope.config(&format!(
        "[metrics]\nqueue_poll_interval_ms = 100\n[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[ingest]\ntokens = [\"observability-token-0123\"]\n[[endpoints]]\nid = \"ok\"\nurl = \"{}\"\nevents = [\"#\"]\n[[endpoints]]\nid = \"failing\"\nurl = \"{}\"\nevents = [\"#\"]\nmax_retries = 1\nretry_delay_ms = 50\n",
        ok.url, failing.url
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let event = Event::new("order.created", serde_json::Value::Null).expect("valid");
    publisher.publish(&event).await.expect("published");
    ok.wait_ids(std::slice::from_ref(&event.id), WAIT).await;
    eventually(WAIT, "a retry and a dead letter counted", || async {
        let text = dispatcher.metrics_text().await;
        (text.contains("hookpost_dead_letters_total{endpoint=\"failing\",reason=\"exhausted\"} 1")
            && text.contains("hookpost_retries_total")
            && text.contains("hookpost_queue_messages{kind=\"dead\",name=\"dead\"}"))
        .then_some(())
    })
    .await;
    let dispatcher_text = dispatcher.metrics_text().await;

    let (listener, metrics_listener) = (
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    );
    let (ingest, ingest_metrics) = (
        listener.local_addr().expect("addr"),
        metrics_listener.local_addr().expect("addr"),
    );
    let stop = CancellationToken::new();
    let listeners = producer::Listeners {
        ingest: listener,
        metrics: metrics_listener,
        api: None,
    };
    let server = tokio::spawn(producer::serve(config.clone(), listeners, stop.clone()));
    let client = tests::http_client();
    eventually(WAIT, "an accepted ingest request", || async {
        let r = client
            .post(format!("http://{ingest}/v1/events"))
            .bearer_auth("observability-token-0123")
            .header("content-type", "application/json")
            .body(r#"{"type":"a.b"}"#)
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await;
    let ingest_text = client
        .get(format!("http://{ingest_metrics}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");

    promtool_check_metrics(&dispatcher_text);
    promtool_check_metrics(&ingest_text);

    let mut families = exported(&dispatcher_text);
    families.extend(exported(&ingest_text));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/hookpost.json"))
            .expect("dashboard"),
    )
    .expect("json");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    exprs.push(
        dashboard["templating"]["list"][0]["definition"]
            .as_str()
            .expect("variable")
            .to_owned(),
    );
    let alerts = std::fs::read_to_string(root().join("deploy/alerts.yml")).expect("alerts");
    exprs.push(alerts);
    let mut used = BTreeSet::new();
    for expr in &exprs {
        used.extend(queried(expr, &families));
    }
    assert!(
        used.len() >= 12,
        "the dashboard and alerts query hookpost metrics: {used:?}"
    );
    let missing: Vec<&String> = used.iter().filter(|m| !families.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {families:?}"
    );

    stop.cancel();
    server.await.expect("join").expect("ingest stopped");
    dispatcher.stop().await.expect("clean stop");
}

/// Per-endpoint series stay few (issue 15): an idle endpoint has only the
/// gauges readiness and alerts read (at 0 from the start); counters are born
/// at their first increment (deploy/alerts.test.yml checks that the alerts
/// fire on such a series); histograms are per endpoint only for
/// `metrics.detailed_endpoints`, the others are recorded under
/// `endpoint="*"`.
#[tokio::test]
async fn per_endpoint_series_stay_few_and_histograms_aggregate() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config(&format!(
        "[metrics]\ndetailed_endpoints = [\"detailed\"]\n{}{}{}",
        tests::fixtures::FAST,
        tests::fixtures::endpoint("fresh", &receiver.url, &["a.b"], ""),
        tests::fixtures::endpoint("detailed", &receiver.url, &["a.b"], "")
    ));
    let dispatcher = Running::start(config.clone()).await;
    let text = dispatcher.metrics_text().await;
    let series_of = |text: &str, id: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("endpoint=\"{id}\"")))
            .map(str::to_owned)
            .collect()
    };
    let mut idle = series_of(&text, "fresh");
    idle.sort();
    assert_eq!(
        idle,
        [
            "hookpost_circuit_breaker_state{endpoint=\"fresh\"} 0",
            "hookpost_consuming{endpoint=\"fresh\"} 1",
            "hookpost_endpoint_paused{endpoint=\"fresh\"} 0",
        ],
        "an idle endpoint costs three series"
    );
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = tests::fixtures::publish(&publisher, "a.b", 3).await;
    publisher.close().await;
    receiver.wait_requests(6, Duration::from_secs(20)).await;
    let _ = ids;
    // Outcomes are counted once each event is settled, after its response:
    // wait for all of them, not just the request durations.
    let expected = [
        "hookpost_http_request_duration_seconds_count{endpoint=\"*\"} 3",
        "hookpost_http_request_duration_seconds_count{endpoint=\"detailed\"} 3",
        "hookpost_end_to_end_latency_seconds_count{endpoint=\"*\"} 3",
        "hookpost_end_to_end_latency_seconds_count{endpoint=\"detailed\"} 3",
        "hookpost_batch_size_count{endpoint=\"detailed\"} 3",
        "hookpost_deliveries_total{endpoint=\"fresh\",outcome=\"delivered\"} 3",
        "hookpost_deliveries_total{endpoint=\"detailed\",outcome=\"delivered\"} 3",
        "hookpost_delivery_attempts_total{endpoint=\"fresh\",status_class=\"2xx\"} 3",
    ];
    let mut last = String::new();
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            last = dispatcher.metrics_text().await;
            if expected.iter().all(|line| last.lines().any(|l| l == *line)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let text = last;
    for line in expected {
        assert!(
            settled.is_ok() && text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(
        !text.contains("_bucket{endpoint=\"fresh\""),
        "no histogram of its own for an endpoint not listed"
    );
    assert!(
        series_of(&text, "fresh").len() <= 8,
        "{:?}",
        series_of(&text, "fresh")
    );
    promtool_check_metrics(&text);
    dispatcher.stop().await.expect("clean stop");
}

/// `/readyz` answers 200 only when every endpoint is consumed (or
/// deliberately not): an endpoint whose queue another client holds with an
/// exclusive consumer keeps the dispatcher unready until it is released.
#[tokio::test]
async fn readiness_waits_for_every_endpoint() {
    use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    // Classic queues: RabbitMQ 3.10 enforces exclusive consumers there.
    let config = scope.config_with(
        &format!(
            "{}{}{}",
            tests::fixtures::FAST,
            tests::fixtures::endpoint("free", &receiver.url, &["a.b"], ""),
            tests::fixtures::endpoint("taken", &receiver.url, &["a.b"], "")
        ),
        "queue_type = \"classic\"",
        &tests::amqp_url(),
    );
    let topology = common::topology::Topology::new(&config.amqp);
    topology
        .declare_base(&scope.connection, &scope.channel)
        .await
        .expect("declare base");
    topology
        .declare_endpoint(&scope.channel, "taken", &["a.b".to_owned()])
        .await
        .expect("declare endpoint");
    let holder = scope.connection.create_channel().await.expect("channel");
    let _consumer = holder
        .basic_consume(
            topology.endpoint_queue("taken").as_str().into(),
            "holder".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("exclusive consumer");
    let dispatcher = Running::spawn(config).await;
    // "free" gets consumed, "taken" cannot be: not ready.
    eventually(WAIT, "free consumed", || async {
        (dispatcher
            .metric("hookpost_consuming{endpoint=\"free\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(dispatcher.ready_status().await, 503);
    assert_eq!(
        dispatcher
            .metric("hookpost_consuming{endpoint=\"taken\"}")
            .await,
        0.0
    );
    holder
        .basic_cancel("holder".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    // The worker retries with backoff (up to 10 s between tries).
    eventually(Duration::from_secs(30), "ready once released", || async {
        (dispatcher.ready_status().await == 200).then_some(())
    })
    .await;
    dispatcher.stop().await.expect("clean stop");
}
