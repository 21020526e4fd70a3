//! Slow and idle clients do not hold the HTTP servers' connections: every
//! listener (ingest, management API, metrics) closes a connection whose
//! request head does not arrive within `header_read_timeout_ms` or that sits
//! silent past `idle_timeout_ms`, holds at most `max_connections` at once,
//! and a real client still gets its answer while a flood of slow ones is
//! timed out.

use common::server::Limits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tests::{Scope, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const INGEST_TOKEN: &str = "ingest-token-0123456789";
const API_TOKEN: &str = "management-token-0123456789";
/// A request head that never ends.
const PARTIAL: &[u8] = b"POST /v1/events HTTP/1.1\r\nHost: x\r\n";

/// A connection that sent `head` and nothing more.
async fn send_partial(addr: SocketAddr, head: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    stream
}

/// How long until the server closes `stream` (end of stream or reset),
/// reading and dropping whatever it answers first.
///
/// # Panics
/// When the connection is still open after `within`.
async fn closed_after(mut stream: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after {within:?}");
    started.elapsed()
}

/// A metrics server on loopback within `limits`.
async fn metrics_server(limits: Limits, shutdown: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(common::server::serve_metrics(
        listener,
        limits,
        prometheus::Registry::new(),
        Arc::new(|| true),
        shutdown.clone(),
    ));
    addr
}

/// Ingest (with its metrics listener) and the management API, with `limits`
/// (TOML keys) in each listener's table and `body` in ingest's and the API's.
struct Servers {
    ingest: SocketAddr,
    metrics: SocketAddr,
    api: SocketAddr,
    shutdown: CancellationToken,
}

async fn start(scope: &Scope, limits: &str, body: &str) -> Servers {
    let config = scope.config(&format!(
        "[metrics]\n{limits}\n[ingest]\ntokens = [\"{INGEST_TOKEN}\"]\n{limits}\n{body}\n[api]\ntokens = [\"{API_TOKEN}\"]\n{limits}\n{body}\n"
    ));
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (ingest, metrics, api) = (
        bind().await.expect("bind"),
        bind().await.expect("bind"),
        bind().await.expect("bind"),
    );
    let servers = Servers {
        ingest: ingest.local_addr().expect("addr"),
        metrics: metrics.local_addr().expect("addr"),
        api: api.local_addr().expect("addr"),
        shutdown: CancellationToken::new(),
    };
    let listeners = producer::Listeners {
        ingest,
        metrics,
        api: Some(api),
    };
    tokio::spawn(producer::serve(config, listeners, servers.shutdown.clone()));
    let client = tests::http_client();
    let ready = format!("http://{}/readyz", servers.metrics);
    eventually(Duration::from_secs(10), "ingest ready", || async {
        let r = client.get(&ready).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    servers
}

#[tokio::test]
async fn every_listener_closes_a_partial_request_after_the_header_read_timeout() {
    let scope = Scope::new().await;
    let servers = start(
        &scope,
        "header_read_timeout_ms = 500\nidle_timeout_ms = 60000",
        "",
    )
    .await;
    let within = Duration::from_secs(4);
    let (ingest, api, metrics) = tokio::join!(
        async { closed_after(send_partial(servers.ingest, PARTIAL).await, within).await },
        async {
            let head = b"POST /v1/endpoints HTTP/1.1\r\nHost: x\r\n";
            closed_after(send_partial(servers.api, head).await, within).await
        },
        async {
            let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";
            closed_after(send_partial(servers.metrics, head).await, within).await
        },
    );
    eprintln!("closed after: ingest {ingest:?}, api {api:?}, metrics {metrics:?}");
    for (name, after) in [("ingest", ingest), ("api", api), ("metrics", metrics)] {
        assert!(
            after >= Duration::from_millis(400),
            "{name}: closed after {after:?}, before the timeout"
        );
    }
    servers.shutdown.cancel();
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let shutdown = CancellationToken::new();
    let addr = metrics_server(
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(300),
            max_connections: 8,
        },
        &shutdown,
    )
    .await;
    // Sends nothing at all.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let after = closed_after(silent, Duration::from_secs(5)).await;
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );

    // A kept-alive connection is served, then closed once silent.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 256];
    let n = kept.read(&mut answer).await.expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    closed_after(kept, Duration::from_secs(5)).await;
    shutdown.cancel();
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_for_a_slot() {
    let shutdown = CancellationToken::new();
    let addr = metrics_server(
        Limits {
            header_read_timeout: Duration::from_millis(1000),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2,
        },
        &shutdown,
    )
    .await;
    let held = [
        send_partial(addr, b"GET /metrics HTTP/1.1\r\n").await,
        send_partial(addr, b"GET /metrics HTTP/1.1\r\n").await,
    ];
    // Give the server the time to accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut third = send_partial(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer))
        .await
        .expect("answered within 5 s")
        .expect("read");
    let waited = started.elapsed();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    // Served once a held connection timed out (at about 0.9 s), not at once.
    assert!(
        waited >= Duration::from_millis(600),
        "answered after {waited:?}, before a slot was free"
    );
    for stream in held {
        closed_after(stream, Duration::from_secs(2)).await;
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_flood_of_slow_clients_does_not_keep_a_real_client_out() {
    let scope = Scope::new().await;
    let servers = start(
        &scope,
        "header_read_timeout_ms = 500\nidle_timeout_ms = 60000\nmax_connections = 50",
        "",
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(send_partial(servers.ingest, PARTIAL).await);
    }
    let started = Instant::now();
    let response = tests::http_client()
        .post(format!("http://{}/v1/events", servers.ingest))
        .bearer_auth(INGEST_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"type":"flood.test","data":{}}"#)
        .timeout(Duration::from_secs(8))
        .send()
        .await
        .expect("the real client is answered");
    let answered = started.elapsed();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    eprintln!("real client answered after {answered:?} behind 200 slow clients");
    // And every slow client was let go.
    let deadline = Instant::now() + Duration::from_secs(5);
    for stream in flood {
        closed_after(stream, deadline.saturating_duration_since(Instant::now())).await;
    }
    servers.shutdown.cancel();
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_closed() {
    let scope = Scope::new().await;
    let servers = start(&scope, "", "body_read_timeout_ms = 500").await;
    let head = |path: &str, token: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"type\":"
        )
    };
    for (name, addr, request) in [
        ("ingest", servers.ingest, head("/v1/events", INGEST_TOKEN)),
        ("api", servers.api, head("/v1/endpoints", API_TOKEN)),
    ] {
        let started = Instant::now();
        let mut stream = send_partial(addr, request.as_bytes()).await;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(4), stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer and not closed within 4 s"))
            .expect("read");
        let after = started.elapsed();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{name}: {text}");
        assert!(
            after >= Duration::from_millis(400),
            "{name}: after {after:?}"
        );
    }
    servers.shutdown.cancel();
}
