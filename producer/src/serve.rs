//! `hookpost-producer serve`: the publisher, the metrics/health server and
//! the ingest, started together and stopped together.

use crate::{Publisher, ingest};
use common::Config;
use common::metrics::{ProcessMetrics, ProducerMetrics};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs the ingest server on `listener` and the metrics/health server on
/// `metrics_listener` until `shutdown` fires.
///
/// # Errors
/// When `[ingest] tokens` is empty (the server never runs unauthenticated) or
/// metrics cannot be registered.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.ingest.tokens.is_empty(),
        "{}: key `ingest.tokens`: set at least one bearer token (for example \"${{INGEST_TOKEN}}\") before serving",
        config.origin.display()
    );
    let registry = prometheus::Registry::new();
    let process = ProcessMetrics::register(&registry, "ingest")?;
    let metrics = ProducerMetrics::register(&registry)?;
    let publisher = Arc::new(Publisher::new(&config).with_metrics(metrics.clone()));
    publisher
        .client()
        .report_blocked_to(process.broker_blocked.clone());
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
