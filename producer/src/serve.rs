//! `hookpost-producer serve`: the publisher, the metrics/health server, the
//! ingest and (with `[api] tokens`) the management API, started together on
//! listeners the caller bound, and stopped together.

use crate::{Publisher, api, ingest};
use common::Config;
use common::metrics::{ProcessMetrics, ProducerMetrics};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The sockets [`serve`] answers on, bound by the caller (on port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// The ingest, `POST /v1/events` (`ingest.listen`).
    pub ingest: TcpListener,
    /// `/metrics`, `/healthz` and `/readyz` (`metrics.listen`).
    pub metrics: TcpListener,
    /// The management API (`api.listen`); `None` leaves it off. The binary
    /// binds it only when `[api] tokens` is set.
    pub api: Option<TcpListener>,
}

/// Runs the ingest, the metrics/health server and, when `listeners.api` is
/// given, the management API until `shutdown` fires; in-flight requests
/// finish first.
///
/// # Errors
/// When `[ingest] tokens` is empty, or `[api] tokens` is empty with an API
/// listener given (neither server runs unauthenticated), or metrics cannot be
/// registered.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The API stops with the ingest, also when the ingest refuses to start.
    let api_stop = shutdown.child_token();
    let registry = prometheus::Registry::new();
    let metrics = ProducerMetrics::register(&registry)?;
    let api = listeners.api.map(|listener| {
        tokio::spawn(api::serve_with_metrics(
            config.clone(),
            listener,
            api_stop.clone(),
            Some(metrics.clone()),
        ))
    });
    let served = serve_ingest(
        config,
        listeners.ingest,
        listeners.metrics,
        (registry, metrics),
        shutdown,
    )
    .await;
    api_stop.cancel();
    if let Some(api) = api {
        api.await??;
    }
    served
}

/// The ingest on `listener` and the metrics/health server on
/// `metrics_listener`, until `shutdown`.
async fn serve_ingest(
    config: Config,
    listener: TcpListener,
    metrics_listener: TcpListener,
    (registry, metrics): (prometheus::Registry, ProducerMetrics),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.ingest.tokens.is_empty(),
        "{}: key `ingest.tokens`: set at least one bearer token (for example \"${{INGEST_TOKEN}}\") before serving",
        config.origin.display()
    );
    let process = ProcessMetrics::register(&registry, "ingest")?;
    let publisher = Arc::new(Publisher::new(&config).with_metrics(metrics.clone()));
    publisher
        .client()
        .report_blocked_to(process.broker_blocked.clone());
    publisher
        .client()
        .report_node_to(process.broker_node.clone());
    // Connect in the background so the server answers (503) even while the broker is down.
    {
        let publisher = publisher.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = publisher.keep_connected(&shutdown).await {
                tracing::debug!(error = %e, "Initial broker connection ended.");
            }
        });
    }
    let ready_publisher = publisher.clone();
    let ready: common::server::Readiness = Arc::new(move || {
        process
            .broker_connected
            .set(i64::from(ready_publisher.client().is_connected()));
        ready_publisher.is_ready()
    });
    tracing::info!(listen = %listener.local_addr()?, metrics = %metrics_listener.local_addr()?, "Ingest server started.");
    let ingest = Arc::new(ingest::Ingest::new(
        config.ingest.clone(),
        publisher.clone(),
        metrics,
    ));
    let metrics_server = tokio::spawn(common::server::serve_metrics(
        metrics_listener,
        config.metrics_limits,
        registry,
        ready,
        shutdown.clone(),
    ));
    ingest.serve(listener, shutdown).await;
    let _ = metrics_server.await;
    publisher.close().await;
    tracing::info!("Ingest server stopped.");
    Ok(())
}
