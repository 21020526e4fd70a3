//! Queue depths for `/metrics`: every endpoint queue, wait tier, the dead
//! letters and the unrouted events, polled from the broker (passive declares,
//! which read the counts without changing anything).

use common::Config;
use common::metrics::DispatcherMetrics;
use common::topology::Topology;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The queues to poll: `(kind, name label, queue)`.
pub fn queues(config: &Config) -> Vec<(&'static str, String, String)> {
    let t = Topology::new(&config.amqp);
    let mut out = vec![
        ("dead", "dead".to_owned(), t.dead()),
        ("unrouted", "unrouted".to_owned(), t.unrouted()),
        ("unrouted", "scoped".to_owned(), t.unrouted_scoped()),
    ];
    for ep in &config.endpoints {
        out.push(("endpoint", ep.id.clone(), t.endpoint_queue(&ep.id)));
    }
    for tier in config.wait_tiers() {
        out.push(("wait", tier.to_string(), t.wait_queue(tier)));
    }
    out
}

/// Passive declares in flight at once while polling (one round trip at a
/// time would take seconds per round at 10,000 endpoints).
const POLLS_IN_FLIGHT: usize = 16;

/// Longest wait for one chunk's answers before the round is given up.
const CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `queues` until `stop`: a round, then `interval` of rest (a round
/// over 10,000 queues takes a while; the broker is never polled back to back).
pub async fn run(
    conn: Arc<Connection>,
    queues: Vec<(&'static str, String, String)>,
    interval: std::time::Duration,
    metrics: DispatcherMetrics,
    stop: CancellationToken,
) {
    metrics.queue_messages.reset();
    metrics.queue_consumers.reset();
    let mut channel: Option<Channel> = None;
    // A stop or a dead connection ends a wait (and the round) at once.
    let alive = || conn.status().connected() && !stop.is_cancelled();
    loop {
        for chunk in queues.chunks(POLLS_IN_FLIGHT) {
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                let opening = common::amqp::open_channel(&conn);
                channel = common::amqp::while_alive(alive, CHUNK_TIMEOUT, opening)
                    .await
                    .and_then(Result::ok);
            }
            let Some(ch) = channel.as_ref() else { break };
            let declares = futures_util::future::join_all(chunk.iter().map(|(_, _, queue)| {
                ch.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
            }));
            let Some(declared) = common::amqp::while_alive(alive, CHUNK_TIMEOUT, declares).await
            else {
                channel = None;
                break;
            };
            // A missing queue closes the channel (and fails the declares
            // pipelined behind it); the next chunk opens a new channel.
            for ((kind, name, _), declared) in chunk.iter().zip(declared) {
                if let Ok(q) = declared {
                    metrics
                        .queue_messages
                        .with_label_values(&[*kind, name.as_str()])
                        .set(i64::from(q.message_count()));
                    metrics
                        .queue_consumers
                        .with_label_values(&[*kind, name.as_str()])
                        .set(i64::from(q.consumer_count()));
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
    }
}
