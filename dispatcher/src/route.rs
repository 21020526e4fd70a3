//! Where a delivery goes after its request: acked, to a wait queue for a
//! retry, or to the dead-letter queue. A delivery is acked only after the
//! message replacing it (retry or dead letter) is confirmed by the broker, so
//! a crash between the two can duplicate a message but never lose one.

use crate::classify::Reason;
use common::topology::Topology;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Confirmation};

/// Longest wait for a publish confirm or an ack before the message is given
/// back to the broker (which redelivers it).
pub const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Header carrying the attempt number of the next try (1 on the first).
pub const ATTEMPT_HEADER: &str = "hookpost-attempt";

/// A republish that was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The channel or connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// No confirm within [`BROKER_TIMEOUT`] (broker blocked or without quorum).
    #[error("no answer from the broker within {BROKER_TIMEOUT:?}")]
    Timeout,
    /// The broker nacked or returned the message.
    #[error("the broker did not take the message ({0})")]
    Refused(&'static str),
}

/// Why a message is dead-lettered, for its headers.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The reason.
    pub reason: Reason,
    /// The attempt that failed.
    pub attempt: u32,
    /// The last HTTP status, if there was one.
    pub last_status: Option<u16>,
    /// The last error text.
    pub last_error: &'a str,
}

/// Republishes and acknowledges for one endpoint.
#[derive(Debug, Clone)]
pub struct Router {
    channel: Channel,
    topology: Topology,
    endpoint_id: String,
    acks: std::sync::Arc<crate::acks::AckTracker>,
}

impl Router {
    /// A router publishing on `channel`, which must be in confirm mode.
    /// Acks go through `acks`, the consumer channel's tracker.
    pub fn new(
        channel: Channel,
        topology: Topology,
        endpoint_id: String,
        acks: std::sync::Arc<crate::acks::AckTracker>,
    ) -> Self {
        Self {
            channel,
            topology,
            endpoint_id,
            acks,
        }
    }

    /// Settles a delivered message: it is acked soon, in a range with others
    /// ([`crate::acks`]).
    ///
    /// # Errors
    /// When a range ack failed (the channel is gone; the broker redelivers).
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), RouteError> {
        Ok(self.acks.settle(delivery).await?)
    }

    /// Returns a message to its queue untouched (attempt count unchanged).
    pub async fn requeue(&self, delivery: &Delivery) {
        self.acks.requeue(delivery).await;
    }

    /// Whether the publishing channel is still open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Sends the message to wait `tier_ms`, then back to its endpoint as
    /// attempt `next_attempt`; acks it once that is confirmed.
    ///
    /// # Errors
    /// [`RouteError`]; the message is then requeued (or redelivered by the broker).
    pub async fn retry(
        &self,
        delivery: &Delivery,
        tier_ms: u64,
        next_attempt: u32,
    ) -> Result<(), RouteError> {
        let mut headers = headers_of(delivery);
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(next_attempt.into()),
        );
        self.republish(
            delivery,
            &self.topology.retry_exchange(tier_ms),
            &self.endpoint_id,
            headers,
        )
        .await
    }

    /// Puts the message back at the tail of its endpoint's queue, untouched
    /// (same attempt), and acks it once that is confirmed. Unlike a requeue,
    /// this does not count toward the quorum queue's delivery limit.
    ///
    /// # Errors
    /// [`RouteError`]; the message is then requeued (or redelivered by the broker).
    pub async fn park(&self, delivery: &Delivery) -> Result<(), RouteError> {
        let headers = headers_of(delivery);
        let queue = self.topology.endpoint_queue(&self.endpoint_id);
        self.republish(delivery, "", &queue, headers).await
    }

    /// Parks the message in the dead-letter queue with why; acks it once confirmed.
    ///
    /// # Errors
    /// [`RouteError`]; the message is then requeued (or redelivered by the broker).
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        why: &DeadLetter<'_>,
    ) -> Result<(), RouteError> {
        let mut headers = headers_of(delivery);
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert("hookpost-endpoint".into(), text(&self.endpoint_id));
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(why.attempt.into()),
        );
        headers.insert("hookpost-reason".into(), text(why.reason.as_str()));
        let status = why
            .last_status
            .map_or(AMQPValue::Void, |s| AMQPValue::LongLongInt(s.into()));
        headers.insert("hookpost-last-status".into(), status);
        let mut error = why.last_error.to_owned();
        truncate_utf8(&mut error, 1024);
        headers.insert("hookpost-last-error".into(), text(&error));
        let failed_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        headers.insert("hookpost-failed-at".into(), text(&failed_at));
        if let Some(event_type) = original_type(delivery) {
            headers.insert("hookpost-event-type".into(), text(&event_type));
        }
        self.republish(delivery, &self.topology.dead(), &self.endpoint_id, headers)
            .await
    }

    async fn republish(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
    ) -> Result<(), RouteError> {
        let properties = common::amqp::republished_properties(&delivery.properties, headers);
        let publish = async {
            self.channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    // mandatory: a missing wait queue or dead-letter queue is an
                    // error here, not a silently dropped message.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        };
        let confirm = tokio::time::timeout(BROKER_TIMEOUT, publish)
            .await
            .map_err(|_| RouteError::Timeout)??;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
            Confirmation::Ack(Some(_)) => {
                return Err(RouteError::Refused("returned: no queue bound"));
            }
            Confirmation::Nack(_) => return Err(RouteError::Refused("nack")),
        }
        self.ack(delivery).await?;
        Ok(())
    }
}

/// The attempt number of this delivery: `hookpost-attempt`, else 1.
pub fn attempt_of(delivery: &Delivery) -> u32 {
    let Some(headers) = delivery.properties.headers() else {
        return 1;
    };
    let value = headers.inner().get(ATTEMPT_HEADER);
    let n = match value {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::LongUInt(n)) => Some(*n),
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).ok(),
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.parse().ok()),
        _ => None,
    };
    n.filter(|n| *n >= 1).unwrap_or(1)
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

/// The event type: the `type` property producers set, else the routing key
/// when the message came straight from the events exchange.
fn original_type(delivery: &Delivery) -> Option<String> {
    delivery.properties.kind().as_ref().map(ToString::to_string)
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
