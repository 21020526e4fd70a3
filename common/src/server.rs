//! A small hyper HTTP/1 server on an already-bound listener, with graceful
//! shutdown, limits that keep slow or idle clients from holding connections
//! ([`Limits`]), and the `/metrics`, `/healthz`, `/readyz` routes every
//! hookpost process serves.

use crate::idle::{Activity, Tracked};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A response with a full body.
pub type HttpResponse = Response<Full<Bytes>>;
/// A boxed request handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

/// Longest a server waits for open connections to finish after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take and how many connections a listener holds
/// (each listener's `header_read_timeout_ms`, `idle_timeout_ms` and
/// `max_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the moment the server waits for a request (a new connection, or
    /// a kept-alive one after a response) until its head (request line and
    /// headers) is complete; past it the connection is closed. This is also
    /// how long a kept-alive connection may sit between requests.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved either way for this long, while
    /// none of its requests is being handled, is closed (a client that stops
    /// reading its response, or stalls a body the handler does not read).
    pub idle_timeout: Duration,
    /// Connections open at once. At the cap the server stops accepting:
    /// new connections wait in the listen backlog (they are not refused)
    /// until a held one finishes or times out.
    pub max_connections: usize,
}

impl Limits {
    /// The defaults of every listener, with `max_connections` given.
    pub const fn with_max_connections(max_connections: usize) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections,
        }
    }
}

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves `handler` on `listener` within `limits` until `shutdown` fires,
/// then lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve<H>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> HandlerFuture + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's header-read timeout does nothing without a timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = builder.http1_only();
    let mut accept_failures =
        crate::logging::Throttle::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        // At the cap, wait for a slot before accepting: the kernel keeps
        // new connections in the backlog meanwhile, so a real client is
        // served as soon as a slow one times out rather than refused.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Too many open files and the like: back off briefly, keep
                    // serving; logged with backoff, not every 50 ms.
                    if let Some(failures) = accept_failures.hit() {
                        tracing::warn!(error = %e, failures, "Accept failed (logged with backoff).");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let activity = Activity::new();
        let handler = handler.clone();
        let tracked = activity.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let busy = tracked.busy();
            let fut = handler(req);
            async move {
                let response = fut.await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let io = TokioIo::new(Tracked::new(stream, activity.clone()));
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let conn = graceful.watch(conn);
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = conn => {}
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!("Closing an idle connection.");
                }
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Readiness probe: true when the process can do its work.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves `/metrics` (Prometheus text), `/healthz` (200 while the process
/// runs) and `/readyz` (200 when `ready()` holds, else 503) on `listener`
/// within `limits`.
pub async fn serve_metrics(
    listener: TcpListener,
    limits: Limits,
    registry: Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    serve(
        listener,
        limits,
        move |req: Request<Incoming>| {
            let response = match (req.method(), req.uri().path()) {
                (&hyper::Method::GET, "/metrics") => {
                    let mut r = text(StatusCode::OK, crate::metrics::encode(&registry));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    r
                }
                (&hyper::Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
                (&hyper::Method::GET, "/readyz") if ready() => text(StatusCode::OK, "ready\n"),
                (&hyper::Method::GET, "/readyz") => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
                (&hyper::Method::GET, _) => text(StatusCode::NOT_FOUND, "not found\n"),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            };
            Box::pin(async move { response })
        },
        shutdown,
    )
    .await;
}
