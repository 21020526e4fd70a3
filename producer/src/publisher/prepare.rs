//! A call's events made ready to publish: all checked first, then each
//! serialized once and followed by its archive messages when the call
//! carries its own.

use super::copies::with_copies;
use super::lane::Item;
use super::{Inner, PublishError};
use common::Event;
use common::routing::Exchange;
use std::sync::Arc;

impl Inner {
    /// Checks every event of a call before anything of it is sent, so that
    /// a bad event anywhere publishes nothing: publishable, and no larger
    /// than `amqp.max_message_bytes`. The size comes from
    /// [`Event::max_json_len`] (string lengths, not bytes); only an event
    /// whose bound exceeds the limit is serialized to know for sure. The
    /// first bad event fails the call.
    pub(super) fn check(&self, events: &[Event]) -> Result<(), PublishError> {
        for event in events {
            // Its fields are public: a caller may have changed them since it
            // was checked, and the tenant and environment become the routing key.
            event
                .validate_publishable()
                .map_err(|source| PublishError::Invalid {
                    id: event.id.chars().take(255).collect(),
                    source,
                })?;
            if event.max_json_len() > self.max_bytes {
                self.fits(event, event.to_vec().len())?;
            }
        }
        Ok(())
    }

    /// Events (checked) serialized once (retries after a reconnect send the
    /// same bytes), each run followed by its archive message when the
    /// archive is on and `copies`.
    pub(super) fn prepare(
        &self,
        events: &[Event],
        copies: bool,
        now: time::OffsetDateTime,
    ) -> Result<Vec<Arc<Item>>, PublishError> {
        let items = events
            .iter()
            .map(|event| self.item(event).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match &self.archive {
            // Each run of events followed by one archive message holding
            // their copies, on the same channel.
            Some((_, stream)) if copies => with_copies(items, stream, now),
            _ => items,
        })
    }

    /// The event serialized, with its message properties (and `copies: 0`).
    fn item(&self, event: &Event) -> Result<Item, PublishError> {
        let body = event.to_vec();
        // Checked before (`check`): kept for a caller that skipped it.
        self.fits(event, body.len())?;
        // Persistent; the lane finds a returned event by its message_id.
        let properties = common::amqp::event_properties(event);
        let (exchange, key) = event.route();
        Ok(Item {
            id: event.id.clone(),
            exchange: match exchange {
                Exchange::Events => self.events_exchange.clone(),
                Exchange::Scoped => self.scoped_exchange.clone(),
            },
            routing_key: key.into(),
            body,
            properties,
            copies: 0,
        })
    }

    /// `size`, an event's serialized length, within `amqp.max_message_bytes`.
    fn fits(&self, event: &Event, size: usize) -> Result<(), PublishError> {
        if size > self.max_bytes {
            return Err(PublishError::TooLarge {
                id: event.id.clone(),
                size,
                max: self.max_bytes,
            });
        }
        Ok(())
    }
}
