//! The HTTP ingest against a real broker: every status it promises.

use common::Event;
use std::time::Duration;
use tests::proxy::{Proxy, broker_addr};
use tests::{Scope, amqp_url, eventually};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789";

struct Server {
    base: String,
    metrics: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(scope: &Scope, url: &str, extra_ingest: &str) -> Server {
    let config = scope.config_with(
        &format!("[ingest]\ntokens = [\"{TOKEN}\"]\n{extra_ingest}"),
        "publish_timeout_ms = 1500\nmax_reconnect_delay_ms = 200",
        url,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let metrics = format!("http://{}", metrics_listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let listeners = producer::Listeners {
        ingest: listener,
        metrics: metrics_listener,
        api: None,
    };
    let task = tokio::spawn(producer::serve(config, listeners, shutdown.clone()));
    let server = Server {
        base,
        metrics,
        shutdown,
        task,
    };
    let client = tests::http_client();
    eventually(Duration::from_secs(10), "ingest ready", || async {
        let r = client
            .get(format!("{}/readyz", server.metrics))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    server
}

async fn post(
    server: &Server,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let mut req = tests::http_client()
        .post(format!("{}/v1/events", server.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let response = req.send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn accepted_events_are_in_the_broker() {
    let scope = Scope::new().await;
    let server = start(&scope, &amqp_url(), "").await;
    let all = scope
        .observe(&format!("{}.events", scope.prefix), "#")
        .await;

    let (status, body) = post(
        &server,
        Some(TOKEN),
        r#"{"type":"order.created","data":{"n":1},"source":"shop"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let single = body["ids"][0].as_str().expect("an id").to_owned();

    let (status, body) = post(
        &server,
        Some(TOKEN),
        r#"[{"type":"a.one","id":"mine-1"},{"type":"a.two","timestamp":"2026-01-02T03:04:05Z","data":[1,2]}]"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ids"].as_array().expect("ids").len(), 2);
    assert_eq!(body["ids"][0], "mine-1");

    let got = scope.take(&all, 3).await;
    let events: Vec<Event> = got
        .iter()
        .map(|m| Event::from_slice(&m.delivery.data).expect("envelope"))
        .collect();
    let first = events
        .iter()
        .find(|e| e.id == single)
        .expect("single event stored");
    assert_eq!(first.event_type, "order.created");
    assert_eq!(first.source.as_deref(), Some("shop"));
    assert_eq!(first.data["n"], 1);
    let second = events
        .iter()
        .find(|e| e.event_type == "a.two")
        .expect("batch event stored");
    assert_eq!(second.timestamp.unix_timestamp(), 1_767_323_045);

    let text = tests::http_client()
        .get(format!("{}/metrics", server.metrics))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("hookpost_ingest_events_total{outcome=\"accepted\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("hookpost_ingest_requests_total{status=\"202\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("hookpost_events_published_total{outcome=\"confirmed\"} 3"),
        "{text}"
    );
    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn bad_requests_get_the_promised_status() {
    let scope = Scope::new().await;
    let server = start(&scope, &amqp_url(), "max_body_bytes = 2048\nmax_events = 3").await;
    let all = scope
        .observe(&format!("{}.events", scope.prefix), "#")
        .await;

    let (status, body) = post(&server, None, r#"{"type":"a"}"#).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = post(&server, Some("wrong-token-0123456789"), r#"{"type":"a"}"#).await;
    assert_eq!(status, 401);

    let (status, body) = post(&server, Some(TOKEN), "not json").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().expect("error").contains("not JSON"),
        "{body}"
    );

    let (status, body) = post(&server, Some(TOKEN), r#"{"type":"Bad Type"}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("type")),
        "{body}"
    );

    let (status, body) = post(
        &server,
        Some(TOKEN),
        r#"[{"type":"ok"},{"type":"ok","timestamp":"noon"}]"#,
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("[1].timestamp")),
        "{body}"
    );

    let (status, body) = post(&server, Some(TOKEN), r#"{"data":1}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("type")),
        "{body}"
    );

    // hookpost's own operational event types cannot be published.
    let (status, body) = post(
        &server,
        Some(TOKEN),
        r#"{"type":"hookpost.endpoint.paused","tenant":"acme"}"#,
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("type")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("operational")),
        "{body}"
    );

    let (status, body) = post(&server, Some(TOKEN), r#"{"type":"a","colour":"red"}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("colour")),
        "{body}"
    );

    let (status, body) = post(&server, Some(TOKEN), r#"{"type":"a","id":7}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("id")),
        "{body}"
    );

    let (status, _) = post(&server, Some(TOKEN), "[]").await;
    assert_eq!(status, 400);

    let (status, body) = post(
        &server,
        Some(TOKEN),
        r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#,
    )
    .await;
    assert_eq!(status, 413, "{body}");

    let big = format!(r#"{{"type":"a","data":"{}"}}"#, "x".repeat(4096));
    let (status, _) = post(&server, Some(TOKEN), big).await;
    assert_eq!(status, 413);

    let client = tests::http_client();
    let r = client
        .post(format!("{}/v1/events", server.base))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 415);
    let r = client
        .get(format!("{}/v1/events", server.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 405);
    let r = client
        .post(format!("{}/v2/things", server.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);

    // Nothing of that reached the broker.
    let (status, _) = post(&server, Some(TOKEN), r#"{"type":"good.one"}"#).await;
    assert_eq!(status, 202);
    let got = scope.take(&all, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(scope.depth(&all).await, 0);
    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn broker_down_is_503_and_readiness_follows() {
    let scope = Scope::new().await;
    let proxy = Proxy::start(broker_addr(&amqp_url())).await;
    let server = start(&scope, &proxy.amqp_url(&amqp_url()), "").await;
    let (status, _) = post(&server, Some(TOKEN), r#"{"type":"before"}"#).await;
    assert_eq!(status, 202);

    proxy.down();
    let (status, body) = post(&server, Some(TOKEN), r#"{"type":"during"}"#).await;
    assert_eq!(status, 503, "{body}");
    let client = tests::http_client();
    let ready = client
        .get(format!("{}/readyz", server.metrics))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let health = client
        .get(format!("{}/healthz", server.metrics))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "alive while the broker is away");

    proxy.up();
    // Readiness recovers by itself, before any publish.
    eventually(
        Duration::from_secs(10),
        "ready again after the broker returns",
        || async {
            let r = client
                .get(format!("{}/readyz", server.metrics))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    let (status, body) = post(&server, Some(TOKEN), r#"{"type":"after"}"#).await;
    assert_eq!(status, 202, "{body}");
    server.shutdown.cancel();
    server.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn serve_refuses_to_run_without_tokens() {
    let scope = Scope::new().await;
    let config = scope.config("");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let listeners = producer::Listeners {
        ingest: listener,
        metrics: metrics_listener,
        api: None,
    };
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        producer::serve(config, listeners, CancellationToken::new()),
    )
    .await
    .expect("serve refuses the config at once")
    .expect_err("no tokens");
    assert!(err.to_string().contains("ingest.tokens"), "{err}");
}

/// Ingest, metrics and API listeners on loopback, the API's address.
async fn three_listeners() -> (producer::Listeners, std::net::SocketAddr) {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let api = bind().await.expect("bind");
    let api_addr = api.local_addr().expect("addr");
    let listeners = producer::Listeners {
        ingest: bind().await.expect("bind"),
        metrics: bind().await.expect("bind"),
        api: Some(api),
    };
    (listeners, api_addr)
}

#[tokio::test]
async fn serve_runs_the_api_on_its_listener_and_stops_it_with_the_ingest() {
    let scope = Scope::new().await;
    let config = scope.config(&format!(
        "[ingest]\ntokens = [\"{TOKEN}\"]\n[api]\ntokens = [\"api-{TOKEN}\"]\n"
    ));
    let (listeners, api) = three_listeners().await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(producer::serve(config, listeners, shutdown.clone()));
    let r = tests::http_client()
        .get(format!("http://{api}/v1/endpoints"))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns after shutdown")
        .expect("join")
        .expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(api).await.is_err(),
        "the API still listens after serve returned"
    );
}

#[tokio::test]
async fn an_ingest_that_refuses_to_start_stops_the_api_too() {
    let scope = Scope::new().await;
    let config = scope.config(&format!("[api]\ntokens = [\"api-{TOKEN}\"]\n"));
    let (listeners, api) = three_listeners().await;
    let serve = producer::serve(config, listeners, CancellationToken::new());
    let err = tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .expect("serve returns at once")
        .expect_err("no ingest tokens");
    assert!(err.to_string().contains("ingest.tokens"), "{err}");
    assert!(
        tokio::net::TcpStream::connect(api).await.is_err(),
        "the API still listens after serve returned"
    );
}

#[tokio::test]
async fn tenant_and_environment_are_routed_and_checked() {
    let scope = Scope::new().await;
    let server = start(&scope, &amqp_url(), "").await;
    let scoped = scope
        .observe(&format!("{}.events.scoped", scope.prefix), "t=acme.#")
        .await;
    let (status, body) = post(
        &server,
        Some(TOKEN),
        r#"{"type":"order.created","tenant":"acme","environment":"prd"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let got = scope.take(&scoped, 1).await;
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        "t=acme.e=prd.order.created"
    );
    for (body, field) in [
        (r#"{"type":"a","tenant":"ACME"}"#, "tenant"),
        (r#"{"type":"a","tenant":""}"#, "tenant"),
        (r#"{"type":"a","environment":"snd box"}"#, "environment"),
        (r#"{"type":"a","tenant":7}"#, "tenant"),
    ] {
        let (status, answer) = post(&server, Some(TOKEN), body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(field), "{body}: {answer}");
    }
    server.shutdown.cancel();
}
