//! The supervisor: owns the broker connection's generations (connect,
//! follow the control stream, declare, run one worker per endpoint, tear
//! down and rebuild on a lost connection), applies config reloads and
//! registry changes by stopping and starting only the workers that changed,
//! and serves `/metrics`, `/healthz` and `/readyz`.

use crate::delivery::transform as sandbox;
use crate::delivery::{self, worker};
use crate::validate;
use common::Config;
use common::amqp::{AmqpClient, AmqpError};
use common::metrics::{DispatcherMetrics, ProcessMetrics};
use common::registry::control;
use common::topology::Topology;
use lapin::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod endpoints;
mod workers;

pub(crate) use endpoints::{Warned, declare, effective_config};
use endpoints::{check_reload, forget_changed_pauses, restart_only_settings};
use workers::{Workers, spawn_poller};

/// Runs the dispatcher until `shutdown` fires: stops consuming, lets
/// in-flight requests finish (each within its endpoint's timeout), and
/// returns. New configs sent on `reloads` replace the running one.
///
/// # Errors
/// Invalid config, metrics registration, or a topology conflict the broker
/// reports (an existing queue with other arguments), which needs an operator.
pub async fn run(
    config: Config,
    metrics_listener: TcpListener,
    mut reloads: mpsc::Receiver<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    validate(&config)?;
    let registry = prometheus::Registry::new();
    let process = ProcessMetrics::register(&registry, "dispatcher")?;
    let metrics = DispatcherMetrics::register(&registry)?;
    let client = AmqpClient::new(
        config.amqp.urls.clone(),
        "hookpost-dispatcher",
        config.amqp.max_reconnect_delay,
    );
    // While blocked, retry and dead-letter publishes wait (route::BROKER_TIMEOUT)
    // and the delivery stays unacked: the broker redelivers it, nothing is lost.
    client.report_blocked_to(process.broker_blocked.clone());
    client.report_node_to(process.broker_node.clone());
    let consuming = Arc::new(AtomicBool::new(false));
    // The endpoints this dispatcher should consume now.
    let expected: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let ready: common::server::Readiness = {
        let (client, consuming, expected, metrics) = (
            client.clone(),
            consuming.clone(),
            expected.clone(),
            metrics.clone(),
        );
        Arc::new(move || {
            let connected = client.is_connected();
            process.broker_connected.set(i64::from(connected));
            let expected = expected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            connected
                && consuming.load(Ordering::SeqCst)
                && expected.iter().all(|id| endpoint_settled(&metrics, id))
        })
    };
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(common::server::serve_metrics(
        metrics_listener,
        config.metrics_limits,
        registry,
        ready,
        server_stop.clone(),
    ));
    let paused = Arc::default();
    let channel_failures = Arc::new(std::sync::Mutex::new(
        common::logging::Throttle::for_failures(),
    ));
    let sandbox = sandbox::Sandbox::new(
        sandbox::Sandbox::locate(config.transforms.worker_path.as_ref()),
        config.transforms.clone(),
        config.amqp.max_message_bytes,
    );
    if config.endpoints.iter().any(|e| e.transform.is_some()) {
        sandbox.check().await?;
    }
    // The attempt log's writer lives as long as the process: it stops after
    // the workers, so their last attempts are written.
    let log_stop = CancellationToken::new();
    let (log, log_writer) = if config.log.enabled {
        let (log, task) = delivery::log::AttemptLog::start(
            client.clone(),
            Topology::for_config(&config),
            config.log.clone(),
            metrics.log_records.clone(),
            log_stop.clone(),
        );
        (log, Some(task))
    } else {
        (
            delivery::log::AttemptLog::disabled(metrics.log_records.clone()),
            None,
        )
    };
    let (notices, notices_writer) = delivery::notices::Notices::start(
        client.clone(),
        Topology::for_config(&config),
        metrics.operational_events.clone(),
        log_stop.clone(),
    );
    // Operator holds and registered endpoints, from the control stream; kept across reconnects.
    let (holds_tx, holds) = tokio::sync::watch::channel(control::Holds::default());
    let mut config = config;
    let result = loop {
        let conn = match client.connection(None, &shutdown).await {
            Ok(conn) => conn,
            Err(AmqpError::Shutdown) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        // One `Shared` for every worker of this connection, by reference
        // count: at 10,000 endpoints a copy each cost megabytes.
        let shared = Arc::new(worker::Shared {
            topology: Topology::for_config(&config),
            http: delivery::http_client::HttpClient::new(&config.http, log.keep_body())?,
            metrics: metrics.clone(),
            prefetch: config.amqp.prefetch,
            max_message_bytes: config.amqp.max_message_bytes,
            paused: Arc::clone(&paused),
            holds: holds.clone(),
            sandbox: sandbox.clone(),
            channels: delivery::channels::Channels::new(
                conn.clone(),
                config.amqp.consume_channels,
                config.amqp.publish_channels,
                metrics.amqp_channels.clone(),
            ),
            channel_failures: channel_failures.clone(),
            log: log.clone(),
            notices: notices.clone(),
        });
        let generation = shutdown.child_token();
        let tracker = TaskTracker::new();
        if let Err(e) =
            follow_control(&conn, &shared.topology, &holds_tx, &generation, &tracker).await
        {
            tracing::warn!(error = %e, "Reading the control stream failed; reconnecting.");
            generation.cancel();
            tracker.close();
            tracker.wait().await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let mut state = holds.clone();
        let (mut effective, mut held) =
            effective_config(&config, &state.borrow_and_update(), &mut Warned::default());
        let mut warned = Warned::default();
        if let Err(e) = declare(&conn, &effective, None, &shared.topology, &held).await {
            generation.cancel();
            tracker.close();
            tracker.wait().await;
            if e.is_conflict() {
                break Err(e.into());
            }
            tracing::warn!(error = %e, "Declaring the topology failed; reconnecting.");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let (lost_tx, mut lost_rx) = mpsc::channel::<(String, String)>(64);
        let mut workers = Workers::default();
        shared.channels.expect_consumers(effective.endpoints.len());
        workers.start_missing(
            &effective.endpoints,
            &shared,
            &generation,
            &lost_tx,
            &tracker,
        );
        let mut poller = spawn_poller(&conn, &effective, &metrics, &generation, &tracker);
        set_expected(&expected, &effective);
        consuming.store(true, Ordering::SeqCst);
        tracing::info!(endpoints = effective.endpoints.len(), "Dispatcher running.");
        // What ends this connection's run: `None` shutdown, `Some(())` reconnect.
        let next = loop {
            tokio::select! {
                () = shutdown.cancelled() => break None,
                Some((endpoint, why)) = lost_rx.recv() => {
                    tracing::warn!(endpoint = %endpoint, error = %why, "Broker channel lost; restarting the workers.");
                    break Some(());
                }
                Some(new) = reloads.recv() => match check_reload(&config, &new) {
                    Ok(()) => {
                        forget_changed_pauses(&paused, &new);
                        // The same ca_file may hold new certificates: read again.
                        let changed = config.http != new.http;
                        if changed || new.http.ca_file.is_some() {
                            match shared.http.replace(&new.http, log.keep_body()) {
                                Ok(()) if changed => tracing::info!("[http] changed; the next requests use it."),
                                Ok(()) => tracing::info!("http.ca_file read again; the next requests use it."),
                                Err(e) => {
                                    tracing::error!(error = %e, "Applying the new [http] failed; keeping the old config.");
                                    continue;
                                }
                            }
                        }
                        let later = restart_only_settings(&config, &new);
                        if !later.is_empty() {
                            tracing::warn!(keys = %later.join(", "), "These settings changed; they apply at the next restart.");
                        }
                        config = new;
                        tracing::info!(endpoints = config.endpoints.len(), "Config reloaded.");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Applying the new config failed; keeping the old one.");
                        continue;
                    }
                },
                r = state.changed() => if r.is_err() { break Some(()) },
                // A worker idle on its consumer may never hear that the
                // connection died (seen once in 40 runs of a proxy outage:
                // nothing ended the generation and nothing was consumed).
                () = tokio::time::sleep(CONNECTION_CHECK) => {
                    if !conn.status().connected() {
                        tracing::warn!("Broker connection lost; reconnecting.");
                        break Some(());
                    }
                    continue;
                }
            }
            let (next, next_held) =
                effective_config(&config, &state.borrow_and_update(), &mut warned);
            if next.endpoints == effective.endpoints && next_held == held {
                continue;
            }
            // Stop what changed first, so nothing is consumed under the old
            // settings once the new bindings apply.
            workers.stop_stale(&next.endpoints).await;
            if let Err(e) =
                declare(&conn, &next, Some(&effective), &shared.topology, &next_held).await
            {
                tracing::warn!(error = %e, "Declaring the changed endpoints failed; reconnecting.");
                break Some(());
            }
            shared.channels.expect_consumers(next.endpoints.len());
            workers.start_missing(&next.endpoints, &shared, &generation, &lost_tx, &tracker);
            poller.cancel();
            poller = spawn_poller(&conn, &next, &metrics, &generation, &tracker);
            effective = next;
            held = next_held;
            set_expected(&expected, &effective);
            tracing::info!(endpoints = effective.endpoints.len(), "Endpoints changed.");
        };
        consuming.store(false, Ordering::SeqCst);
        generation.cancel();
        tracker.close();
        // In-flight requests finish within their endpoint's timeout.
        let grace = effective
            .endpoints
            .iter()
            .map(|e| e.timeout)
            .max()
            .unwrap_or_default()
            + BROKER_WAIT;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("Some workers did not stop in time; going on without them.");
        }
        shared.channels.close().await;
        if next.is_none() {
            break Ok(());
        }
    };
    log_stop.cancel();
    if let Some(task) = log_writer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), notices_writer).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.close()).await;
    server_stop.cancel();
    let _ = server.await;
    tracing::info!("Dispatcher stopped.");
    result
}

/// Whether an endpoint is as it should be for readiness: consumed, or
/// deliberately not (paused by an operator or after a 410, or suspended by
/// its circuit breaker).
fn endpoint_settled(metrics: &DispatcherMetrics, id: &str) -> bool {
    metrics.consuming.with_label_values(&[id]).get() == 1
        || metrics.paused.with_label_values(&[id]).get() == 1
        || metrics.breaker_state.with_label_values(&[id]).get() != 0
}

fn set_expected(expected: &std::sync::Mutex<Vec<String>>, config: &Config) {
    *expected
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        config.endpoints.iter().map(|e| e.id.clone()).collect();
}

/// How often the supervisor checks that its generation's connection is up.
const CONNECTION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest wait for the broker while (re)declaring or stopping, before the
/// dispatcher gives up on the connection and rebuilds.
pub(super) const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts following the control stream on `tracker` and waits until it has
/// caught up, so no held endpoint is consumed at start.
async fn follow_control(
    conn: &Arc<Connection>,
    topology: &Topology,
    holds_tx: &tokio::sync::watch::Sender<control::Holds>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let mut caught_up = holds_tx.subscribe();
    caught_up.mark_unchanged();
    let (conn, topology, tx, stop) = (
        conn.clone(),
        topology.clone(),
        holds_tx.clone(),
        stop.clone(),
    );
    let first_done = CancellationToken::new();
    let first_failed = first_done.clone();
    // Follows until the generation ends, on the generation's connection;
    // once that is closed, the supervisor's check rebuilds everything.
    tracker.spawn(async move {
        control::keep_following(
            || {
                let conn = conn.clone();
                async move { conn.status().connected().then_some(conn) }
            },
            &topology,
            tx,
            stop,
            None,
            || first_failed.cancel(),
        )
        .await;
        first_failed.cancel();
    });
    tokio::select! {
        r = caught_up.changed() => r.map_err(anyhow::Error::from),
        () = first_done.cancelled() => Err(anyhow::anyhow!("the control stream could not be read")),
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => Err(anyhow::anyhow!("timed out replaying the control stream")),
    }
}
