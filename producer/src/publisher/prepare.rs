//! A call's events made ready to publish: each serialized once, checked,
//! and followed by its archive messages when the call carries its own.

use super::copies::{COPIES_PER_MESSAGE, with_copies};
use super::lane::Item;
use super::{Inner, PREPARE_IN_TWO_FROM, PublishError};
use common::Event;
use common::routing::Exchange;
use std::sync::Arc;

impl Inner {
    /// Every event serialized once (retries after a reconnect send the same
    /// bytes), each run followed by its archive message when the archive is
    /// on and `copies`; the first invalid or too large event fails the call
    /// before anything is sent. Nothing is published while this runs, so a
    /// long call is prepared in two halves at once.
    pub(super) fn prepare(
        &self,
        events: &[Event],
        copies: bool,
    ) -> Result<Vec<Arc<Item>>, PublishError> {
        let now = time::OffsetDateTime::now_utc();
        let part = |events: &[Event]| -> Result<Vec<Arc<Item>>, PublishError> {
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
        };
        if events.len() < PREPARE_IN_TWO_FROM {
            return part(events);
        }
        // Split on a run boundary: the archive messages stay full.
        let middle = (events.len() / 2)
            .next_multiple_of(COPIES_PER_MESSAGE)
            .min(events.len());
        let (first, second) = events.split_at(middle);
        let (first, second) = std::thread::scope(|scope| {
            // No thread to be had (a process or thread limit): one after
            // the other, on this one.
            let Ok(helper) = std::thread::Builder::new().spawn_scoped(scope, || part(second))
            else {
                return (part(first), Ok(part(second)));
            };
            (part(first), helper.join())
        });
        // The earliest bad event is the one reported.
        let mut items = first?;
        items.extend(second.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?);
        Ok(items)
    }

    /// The event serialized, with its message properties (and `copies: 0`).
    fn item(&self, event: &Event) -> Result<Item, PublishError> {
        // Its fields are public: a caller may have changed them since it was
        // checked, and the tenant and environment become the routing key.
        event
            .validate_publishable()
            .map_err(|source| PublishError::Invalid {
                id: event.id.chars().take(255).collect(),
                source,
            })?;
        let body = event.to_vec();
        if body.len() > self.max_bytes {
            return Err(PublishError::TooLarge {
                id: event.id.clone(),
                size: body.len(),
                max: self.max_bytes,
            });
        }
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
}
