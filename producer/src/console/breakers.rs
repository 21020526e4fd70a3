//! Which endpoints' circuit breakers are open, as the console shows them.
//!
//! Breakers live in each dispatcher; what leaves it is the operational
//! events `hookpost.endpoint.circuit_opened` and `.circuit_closed`
//! ([`common::operational`]). The API process follows them on a queue of
//! its own (exclusive, deleted with its connection) bound to the scoped
//! events exchange for those two types only, and keeps when each endpoint's
//! breaker last opened and whether it closed since. It knows only what
//! happened while it ran, so a breaker counts as open only until a delivery
//! succeeds after it opened ([`Breakers::open_since`] and the caller's
//! newest attempt).

use common::Event;
use common::amqp::AmqpClient;
use common::operational::{CIRCUIT_CLOSED, CIRCUIT_OPENED};
use common::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Endpoints remembered at most (the oldest closed ones are forgotten first).
const KEPT: usize = 100_000;

/// Open breakers by runtime endpoint id (`<id>` or `<id>~<env>`).
#[derive(Debug, Default)]
pub struct Breakers {
    open: Mutex<HashMap<String, OffsetDateTime>>,
}

impl Breakers {
    /// Applies one operational event (others are ignored).
    pub fn apply(&self, event: &Event) {
        let Some(endpoint) = event.data.get("endpoint").and_then(|e| e.as_str()) else {
            return;
        };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match event.event_type.as_str() {
            CIRCUIT_OPENED => {
                if open.len() >= KEPT && !open.contains_key(endpoint) {
                    return;
                }
                open.insert(endpoint.to_owned(), event.timestamp);
            }
            CIRCUIT_CLOSED => {
                open.remove(endpoint);
            }
            _ => {}
        }
    }

    /// When the breaker of endpoint `id` (or of one of its environments'
    /// variants) opened, if it is open.
    pub fn open_since(&self, id: &str) -> Option<OffsetDateTime> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.iter()
            .filter(|(k, _)| common::config::base_id(k) == id)
            .map(|(_, at)| *at)
            .min()
    }
}

/// Follows the breakers' events until `shutdown`, reconnecting as needed.
pub async fn follow(
    client: AmqpClient,
    topology: Topology,
    breakers: Arc<Breakers>,
    shutdown: CancellationToken,
) {
    let mut failures =
        common::logging::Throttle::new(Duration::from_secs(60), Duration::from_secs(3600));
    let mut pause = Duration::from_secs(1);
    loop {
        let Ok(conn) = client.connection(None, &shutdown).await else {
            return;
        };
        match consume(&conn, &topology, &breakers, &shutdown).await {
            Ok(()) => return,
            // The connection closes at shutdown: not a failure.
            Err(_) if shutdown.is_cancelled() => return,
            Err(e) => {
                if let Some(n) = failures.hit() {
                    tracing::warn!(error = %e, failures = n, "Console: following circuit breaker events failed; retrying.");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

async fn consume(
    conn: &lapin::Connection,
    topology: &Topology,
    breakers: &Breakers,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let ch = common::amqp::open_channel(conn).await?;
    // The events exchanges, as every publisher declares them: binding to
    // one that does not exist yet would be refused (and logged by lapin).
    topology.declare_base(conn, &ch).await?;
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for kind in [CIRCUIT_OPENED, CIRCUIT_CLOSED] {
        // Any tenant's: `hookpost.t=<tenant>.e=.<type>`.
        let key = format!("hookpost.*.*.{kind}");
        ch.queue_bind(
            queue.name().as_str().into(),
            topology.scoped_exchange().as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let mut deliveries = ch
        .basic_consume(
            queue.name().as_str().into(),
            "hookpost-console-breakers".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    loop {
        tokio::select! {
            next = deliveries.next() => match next {
                Some(Ok(d)) => {
                    if let Ok(event) = Event::from_slice(&d.data) {
                        breakers.apply(&event);
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the consumer was cancelled"),
            },
            () = shutdown.cancelled() => break,
        }
    }
    // Closed here, not left to lapin: its own close of a dropped channel
    // logs an ERROR when the connection closes at the same time.
    let _ = tokio::time::timeout(Duration::from_secs(5), ch.close(200, "stopping".into())).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notice(kind: &str, endpoint: &str) -> Event {
        let mut e = Event::new("x.y", json!({"endpoint": endpoint})).unwrap();
        e.event_type = kind.to_owned();
        e
    }

    #[test]
    fn a_breaker_is_open_from_its_opened_event_until_its_closed_one() {
        let b = Breakers::default();
        assert_eq!(b.open_since("shop"), None);
        let opened = notice(CIRCUIT_OPENED, "shop~prd");
        b.apply(&opened);
        assert_eq!(b.open_since("shop"), Some(opened.timestamp), "a variant's");
        assert_eq!(b.open_since("shopping"), None);
        b.apply(&notice("hookpost.endpoint.paused", "shop~prd"));
        assert!(
            b.open_since("shop").is_some(),
            "other events change nothing"
        );
        b.apply(&notice(CIRCUIT_CLOSED, "shop~prd"));
        assert_eq!(b.open_since("shop"), None);
    }
}
