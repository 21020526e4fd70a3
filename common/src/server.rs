//! A small hyper HTTP/1 server on an already-bound listener, with graceful
//! shutdown, and the `/metrics`, `/healthz`, `/readyz` routes every hookpost
//! process serves.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A response with a full body.
pub type HttpResponse = Response<Full<Bytes>>;
/// A boxed request handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

/// Longest a server waits for open connections to finish after shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` until `shutdown` fires, then lets
/// in-flight requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve<H>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>) -> HandlerFuture + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Too many open files and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let conn = Builder::new(TokioExecutor::new())
            .http1_only()
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
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
/// runs) and `/readyz` (200 when `ready()` holds, else 503) on `listener`.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    serve(
        listener,
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
