//! The API's follower of the control stream: the live registry its reads
//! are served from, and the answers to its writes' reads
//! (`control::FollowerReads`).

use common::amqp::AmqpClient;
use common::registry::control::{self, Holds};
use common::topology::Topology;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Follows the control stream for the API's reads, reconnecting as needed.
pub(super) async fn follow(
    client: AmqpClient,
    topology: Topology,
    tx: watch::Sender<Holds>,
    loaded: Arc<AtomicBool>,
    reads: control::FollowerReads,
    shutdown: CancellationToken,
) {
    let mut caught_up = tx.subscribe();
    tokio::spawn({
        let loaded = loaded.clone();
        async move {
            if caught_up.changed().await.is_ok() {
                loaded.store(true, Ordering::SeqCst);
            }
        }
    });
    control::keep_following(
        || {
            let (client, shutdown) = (client.clone(), shutdown.clone());
            async move { client.connection(None, &shutdown).await.ok() }
        },
        &topology,
        tx,
        shutdown.clone(),
        Some(reads),
        || {},
    )
    .await;
}
