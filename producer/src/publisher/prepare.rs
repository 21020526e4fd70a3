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
                .map_err(|source| invalid(event, source))?;
            if event.max_json_len() > self.max_bytes {
                self.fits(event, event.to_vec().len())?;
            }
        }
        Ok(())
    }

    /// Events (checked) serialized once (retries after a reconnect send the
    /// same bytes), each run followed by its archive message when the
    /// archive is on and `copies`. The call's events are written one after
    /// the other into one buffer, each item's body a slice of it: one
    /// allocation per call instead of one per event (a 1 KiB body is past
    /// the allocator's per-thread cache, and each took its slow path).
    pub(super) fn prepare(
        &self,
        events: &[Event],
        copies: bool,
        now: time::OffsetDateTime,
    ) -> Result<Vec<Arc<Item>>, PublishError> {
        let mut buffer = Vec::new();
        let mut ends = Vec::with_capacity(events.len());
        for event in events {
            event
                .write_json(&mut buffer)
                .map_err(|source| invalid(event, source))?;
            let start = ends.last().copied().unwrap_or(0);
            // Checked before (`check`): kept for a caller that skipped it.
            self.fits(event, buffer.len() - start)?;
            ends.push(buffer.len());
            if ends.len() == 1 {
                // Room for the rest at the first one's size and an eighth:
                // not doubling its way up, copying the call each time.
                let rest = events.len() - 1;
                buffer.reserve(rest.saturating_mul(buffer.len() + buffer.len() / 8));
            }
        }
        let buffer = bytes::Bytes::from(buffer);
        let items = events
            .iter()
            .zip(&ends)
            .scan(0, |start, (event, &end)| {
                let body = buffer.slice(*start..end);
                *start = end;
                Some(Arc::new(self.item(event, body)))
            })
            .collect();
        Ok(match &self.archive {
            // Each run of events followed by one archive message holding
            // their copies, on the same channel.
            Some((_, stream)) if copies => with_copies(items, stream, now),
            _ => items,
        })
    }

    /// The event with its body (serialized) and message properties (and
    /// `copies: 0`).
    fn item(&self, event: &Event, body: bytes::Bytes) -> Item {
        // Persistent; the lane finds a returned event by its message_id.
        let properties = common::amqp::event_properties(event);
        let (exchange, key) = event.route();
        Item {
            id: event.id.clone(),
            exchange: match exchange {
                Exchange::Events => self.events_exchange.clone(),
                Exchange::Scoped => self.scoped_exchange.clone(),
            },
            routing_key: key.into(),
            body,
            properties,
            copies: 0,
        }
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

/// `event` refused for `source`, named by its id (at most 255 characters).
fn invalid(event: &Event, source: common::envelope::EnvelopeError) -> PublishError {
    PublishError::Invalid {
        id: event.id.chars().take(255).collect(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_body_is_its_event_serialized_though_they_share_one_buffer() {
        let config = common::config::Config::from_toml_str("", std::path::Path::new("t"), &[])
            .expect("defaults");
        let inner = Inner::new(&config);
        // Sizes that differ, larger than the first (past the room reserved
        // from it) and smaller.
        let events: Vec<Event> = [10, 3000, 0, 50_000, 7]
            .iter()
            .map(|n| {
                Event::new("a.b", serde_json::json!({ "pad": "x".repeat(*n) })).expect("valid")
            })
            .collect();
        let now = time::OffsetDateTime::now_utc();
        for copies in [false, true] {
            let items = inner.prepare(&events, copies, now).expect("prepared");
            let bodies: Vec<&[u8]> = items
                .iter()
                .filter(|item| item.copies == 0)
                .map(|item| &item.body[..])
                .collect();
            let expected: Vec<Vec<u8>> = events.iter().map(Event::to_vec).collect();
            assert_eq!(
                bodies,
                expected.iter().map(Vec::as_slice).collect::<Vec<_>>()
            );
            assert_eq!(items.len(), events.len() + usize::from(copies));
        }
    }
}
