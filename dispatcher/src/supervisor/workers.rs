//! The running endpoint workers: started for endpoints that appear, stopped
//! for endpoints that change or go, each supervised (restarted with backoff
//! after a channel failure, held while paused or suspended); and the queue
//! depth poller.

use super::BROKER_WAIT;
use crate::delivery::{breaker, worker};
use crate::{delivery, poll};
use common::Config;
use common::metrics::DispatcherMetrics;
use lapin::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running endpoint workers, by id.
#[derive(Default)]
pub(super) struct Workers {
    running: HashMap<
        String,
        (
            Arc<common::config::Endpoint>,
            CancellationToken,
            tokio::task::JoinHandle<()>,
        ),
    >,
}

impl Workers {
    /// Stops the workers of endpoints gone or changed.
    pub(super) async fn stop_stale(&mut self, endpoints: &[common::config::Endpoint]) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, (ep, _, _))| !endpoints.iter().any(|e| e.id == **id && e == ep.as_ref()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((endpoint, stop, mut handle)) = self.running.remove(&id) {
                stop.cancel();
                // In-flight requests finish within the endpoint's timeout; a
                // worker stuck on the broker beyond that is abandoned.
                let grace = endpoint.timeout + BROKER_WAIT;
                if tokio::time::timeout(grace, &mut handle).await.is_err() {
                    tracing::warn!(endpoint = %id, "The endpoint's worker did not stop in time; abandoning it.");
                    handle.abort();
                }
            }
        }
    }

    /// Starts the workers of endpoints not running yet.
    pub(super) fn start_missing(
        &mut self,
        endpoints: &[common::config::Endpoint],
        shared: &Arc<worker::Shared>,
        generation: &CancellationToken,
        lost_tx: &mpsc::Sender<(String, String)>,
        tracker: &TaskTracker,
    ) {
        for endpoint in endpoints {
            if self.running.contains_key(&endpoint.id) {
                continue;
            }
            let endpoint = Arc::new(endpoint.clone());
            let stop = generation.child_token();
            let handle = tracker.spawn(supervise(
                endpoint.clone(),
                Arc::clone(shared),
                stop.clone(),
                lost_tx.clone(),
            ));
            self.running
                .insert(endpoint.id.clone(), (endpoint, stop, handle));
        }
    }
}

/// Runs one endpoint's worker until `stop`: restarts it with backoff after a
/// channel failure, waits out holds and breaker cooldowns. A dead connection
/// is reported on `lost_tx` (everything is rebuilt).
async fn supervise(
    endpoint: Arc<common::config::Endpoint>,
    shared: Arc<worker::Shared>,
    stop: CancellationToken,
    lost_tx: mpsc::Sender<(String, String)>,
) {
    shared.metrics.init_endpoint(&endpoint.id);
    let mut delays = common::amqp::backoff(std::time::Duration::from_secs(10));
    let breaker = Arc::new(breaker::Breaker::new(endpoint.breaker));
    // Kept across runs, like the breaker: a failing endpoint's lines stay
    // throttled through its breaker's cycles.
    let lines = Arc::new(delivery::failures::FailureLines::new());
    // Workers start right after their queue was declared.
    let mut just_declared = true;
    loop {
        // Boxed, like the rarer waits below: an idle endpoint's task then
        // holds only the state of the wait it is in.
        let exit = Box::pin(worker::run(
            endpoint.clone(),
            shared.clone(),
            stop.clone(),
            breaker.clone(),
            lines.clone(),
            std::mem::take(&mut just_declared),
        ))
        .await;
        let why = match exit {
            worker::Exit::Stopped => break,
            worker::Exit::Suspended => {
                Box::pin(delivery::availability::wait_released(
                    &shared, &endpoint, &stop,
                ))
                .await;
                Box::pin(delivery::availability::cool_down(
                    &shared, &endpoint, &breaker, &stop,
                ))
                .await;
                if stop.is_cancelled() {
                    break;
                }
                continue;
            }
            worker::Exit::Lost(why) => why,
        };
        if !shared.channels.is_open() {
            // The run loop tears everything down on the first report; the
            // others must not wait for room in the channel.
            tokio::select! {
                _ = lost_tx.send((endpoint.id.clone(), why)) => {}
                () = stop.cancelled() => {}
            }
            break;
        }
        let delay = delays.next().unwrap_or(std::time::Duration::from_secs(10));
        if let Some(failures) = shared.failure_due() {
            tracing::warn!(endpoint = %endpoint.id, error = %why, failures, retry_in_ms = delay.as_millis() as u64, "Endpoint channels failing; restarting their workers (logged with backoff; `failures` counts all endpoints since the last line).");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
    }
}

pub(super) fn spawn_poller(
    conn: &Arc<Connection>,
    config: &Config,
    metrics: &DispatcherMetrics,
    generation: &CancellationToken,
    tracker: &TaskTracker,
) -> CancellationToken {
    let stop = generation.child_token();
    tracker.spawn(poll::run(
        conn.clone(),
        poll::queues(config),
        config.queue_poll_interval,
        metrics.clone(),
        stop.clone(),
    ));
    stop
}
