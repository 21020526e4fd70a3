//! [`PublishError`]: why events were not (or not surely) stored, and
//! whether trying again may help.

use common::amqp::AmqpError;
use common::topology::TopologyError;
use std::time::Duration;

/// Why events were not (or not surely) stored by the broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No broker connection within the publish timeout (counted from the
    /// call's start or its last confirm). Nothing was confirmed from the
    /// unconfirmed events; publishing them again is safe.
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] AmqpError),
    /// The broker refused to store an event (for example the unrouted queue is full).
    #[error("event {id}: the broker refused it (nack)")]
    Nacked {
        /// The event id.
        id: String,
    },
    /// The broker could not route an event even to the unrouted queue.
    #[error("event {id}: unroutable ({reply}); is the topology declared?")]
    Unroutable {
        /// The event id.
        id: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The broker confirmed none of the call's events for the publish
    /// timeout (overloaded, stalled or blocked): the call's oldest
    /// unconfirmed event, and those after it, may or may not be stored. With
    /// the archive on, also when the broker did not confirm the archive
    /// message holding the call's copies (then `id` is the call's first
    /// event, which may be stored): publishing the call again is safe.
    #[error(
        "event {id}: not confirmed within {timeout:?} of the broker's last progress; it may or may not have been stored"
    )]
    Timeout {
        /// The oldest unconfirmed event's id.
        id: String,
        /// The publish timeout.
        timeout: Duration,
    },
    /// The broker blocks publishing on this connection (a memory or disk
    /// alarm, `reason` as the broker gives it). Events not confirmed before
    /// the block may or may not be stored; publishing them again later is safe.
    #[error("the broker is blocking publishes ({reason}); not confirmed, retry later")]
    Blocked {
        /// The broker's reason, such as "low on memory".
        reason: String,
    },
    /// The event breaks the envelope's rules (its public fields were changed
    /// after it was built); nothing was published.
    #[error("event {id}: {source}")]
    Invalid {
        /// The event id.
        id: String,
        /// The rule it breaks.
        source: common::envelope::EnvelopeError,
    },
    /// The event is larger than `amqp.max_message_bytes`; nothing was published.
    #[error("event {id}: {size} bytes, over amqp.max_message_bytes ({max})")]
    TooLarge {
        /// The event id.
        id: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Declaring the exchanges failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A channel could not be opened or set up.
    #[error("broker channel: {0}")]
    Channel(#[source] lapin::Error),
}

impl PublishError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Unroutable { .. }
                | Self::TooLarge { .. }
                | Self::Invalid { .. }
                | Self::Topology(TopologyError::Conflict { .. })
        )
    }
}
