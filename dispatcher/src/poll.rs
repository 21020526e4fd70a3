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
    ];
    for ep in &config.endpoints {
        out.push(("endpoint", ep.id.clone(), t.endpoint_queue(&ep.id)));
    }
    for tier in config.wait_tiers() {
        out.push(("wait", tier.to_string(), t.wait_queue(tier)));
    }
    out
}

/// Polls until `stop`, every `config.queue_poll_interval`.
pub async fn run(
    conn: Arc<Connection>,
    config: Arc<Config>,
    metrics: DispatcherMetrics,
    stop: CancellationToken,
) {
    metrics.queue_messages.reset();
    metrics.queue_consumers.reset();
    let queues = queues(&config);
    let mut channel: Option<Channel> = None;
    let mut tick = tokio::time::interval(config.queue_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for (kind, name, queue) in &queues {
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                channel = conn.create_channel().await.ok();
            }
            let Some(ch) = channel.as_ref() else { break };
            let declared = ch
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            // A missing queue closes the channel; the next one opens a new channel.
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
    }
}
