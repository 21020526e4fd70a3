//! Where a delivery goes after its request: acked, to a wait queue for a
//! retry, or to the dead-letter queue. A delivery is acked only after the
//! message replacing it (retry or dead letter) is confirmed by the broker, so
//! a crash between the two can duplicate a message but never lose one.

use crate::delivery::channels::Channels;
use crate::delivery::classify::Reason;
use common::topology::Topology;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Longest wait for a publish confirm or an ack before the message is given
/// back to the broker (which redelivers it).
pub const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Header carrying the attempt number of the next try (1 on the first).
pub use common::contract::header::ATTEMPT as ATTEMPT_HEADER;

/// A republish that was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The channel or connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// No confirm within [`BROKER_TIMEOUT`] (broker blocked or without
    /// quorum), or the connection failed before it came.
    #[error(
        "no answer from the broker (within {BROKER_TIMEOUT:?}, or before the connection failed)"
    )]
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
    /// The tenant and environment to record (`hookpost-tenant`,
    /// `hookpost-environment`).
    pub scope: (Option<&'a str>, Option<&'a str>),
}

/// Republishes and acknowledges for one endpoint.
#[derive(Debug, Clone)]
pub struct Router {
    channels: Channels,
    topology: Topology,
    endpoint_id: String,
    acks: std::sync::Arc<crate::delivery::acks::AckTracker>,
}

impl Router {
    /// A router publishing on the pool's shared confirm channels. Acks go
    /// through `acks`, the consumer channel's tracker.
    pub fn new(
        channels: Channels,
        topology: Topology,
        endpoint_id: String,
        acks: std::sync::Arc<crate::delivery::acks::AckTracker>,
    ) -> Self {
        Self {
            channels,
            topology,
            endpoint_id,
            acks,
        }
    }

    /// Settles a delivered message: it is acked soon, in a range with others
    /// ([`crate::delivery::acks`]).
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

    /// Whether the connection it publishes on is still up (a failed
    /// publishing channel is replaced on the next publish).
    pub fn is_open(&self) -> bool {
        self.channels.is_open()
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
        let mut letter =
            common::contract::DeadLetter::new(&self.endpoint_id, why.reason, why.attempt);
        letter.last_status = why.last_status;
        why.last_error.clone_into(&mut letter.last_error);
        letter.event_type = original_type(delivery);
        letter.tenant = why.scope.0.map(str::to_owned);
        letter.environment = why.scope.1.map(str::to_owned);
        let headers = letter.write(headers_of(delivery));
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
            self.channels
                .publisher(&self.endpoint_id)
                .await?
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
        let confirm = self
            .channels
            .wait(publish)
            .await
            .ok_or(RouteError::Timeout)??;
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
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(common::contract::attempt)
        .unwrap_or(1)
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

/// The event type: the `type` property producers set, else the routing key
/// when the message came straight from the events exchange.
fn original_type(delivery: &Delivery) -> Option<String> {
    delivery.properties.kind().as_ref().map(ToString::to_string)
}
