//! The event archive: a copy of every event published through hookpost
//! (the `producer` library, its CLI and its HTTP ingest), kept in the
//! stream `<prefix>.archive` with retention by age and size (`[archive]`),
//! and read back by time to send events again ([`replay`]).
//!
//! A stream message holds the copies of up to 256 events published together,
//! one envelope per line as published (`application/x-ndjson`),
//! LZ4-compressed as the attempt log is (`content-encoding`
//! [`crate::history::LZ4`]; a message without it is read plain), and the
//! header [`ARCHIVED_AT_HEADER`]: when the publisher archived them. The
//! publisher sends it on the channel of the events, right after them,
//! without `mandatory`: a missing archive never fails a publish, and a
//! refused message's copies are counted
//! (`hookpost_archive_records_total{result="lost"}`), not retried. A message
//! of one envelope (what another AMQP client may publish) is read alike.

use crate::config::ArchiveConfig;
use crate::envelope::Event;
use crate::topology::Topology;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use time::OffsetDateTime;

pub mod replay;

/// When the publisher archived the event: Unix milliseconds.
pub const ARCHIVED_AT_HEADER: &str = "hookpost-archived-at";

/// Makes sure the archive stream exists (passive first; an existing stream
/// keeps the retention it was created with).
///
/// # Errors
/// The broker's refusal.
pub async fn ensure(
    conn: &Connection,
    topology: &Topology,
    archive: &ArchiveConfig,
) -> Result<(), lapin::Error> {
    crate::history::ensure_stream(
        conn,
        &topology.archive(),
        crate::history::stream_args(&archive.max_age, archive.max_bytes, topology),
    )
    .await
}

/// The properties of an archive message: `base`, with
/// [`ARCHIVED_AT_HEADER`] = `now`.
pub fn copy_properties(base: &BasicProperties, now: OffsetDateTime) -> BasicProperties {
    let mut headers = base.headers().clone().unwrap_or_default();
    headers.insert(
        ARCHIVED_AT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)),
    );
    base.clone().with_headers(headers)
}

/// One archived event.
#[derive(Debug, Clone)]
pub struct Archived {
    /// The event's envelope, parsed from the copy's body; its `data` is
    /// left `null` (the payload is in `body`, as published).
    pub event: Event,
    /// When it was archived.
    pub archived_at: OffsetDateTime,
    /// The envelope as published (what a replay sends again).
    pub body: Vec<u8>,
}

impl Archived {
    /// The archived events of a stream message (its `properties` and
    /// `body`), in order, the body unpacked by its `content-encoding`; none
    /// for a message that holds none (no time header, or a body that does
    /// not unpack). A line that is not a valid envelope is skipped.
    pub fn read(properties: &BasicProperties, body: &[u8]) -> Vec<Self> {
        let headers = properties.headers().clone().unwrap_or_default();
        let Some(archived_at) = Self::time(&headers) else {
            return Vec::new();
        };
        let Some(body) = crate::history::unpacked_message(properties, body) else {
            return Vec::new();
        };
        body.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                // The line itself is what a replay publishes: its payload
                // is checked, not kept twice.
                Event::head_from_slice(line).ok().map(|event| Self {
                    event,
                    archived_at,
                    body: line.to_vec(),
                })
            })
            .collect()
    }

    /// When a stream message's events were archived (its header).
    pub fn time(headers: &FieldTable) -> Option<OffsetDateTime> {
        crate::contract::int(headers, ARCHIVED_AT_HEADER).and_then(|ms| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_carries_its_time_and_reads_back() {
        let event = Event::new("order.created", serde_json::json!({"n": 1})).expect("event");
        let now = time::macros::datetime!(2026-12-03 10:00:00.250 UTC);
        let props = copy_properties(
            &BasicProperties::default().with_message_id(event.id.as_str().into()),
            now,
        );
        let back = Archived::read(&props, &event.to_vec());
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].archived_at, now);
        assert_eq!(back[0].event.id, event.id);
        // Several copies, one per line; a broken line is skipped.
        let other = Event::new("order.paid", serde_json::json!("a\nb")).expect("event");
        let mut body = event.to_vec();
        body.extend_from_slice(b"\nnot json\n");
        body.extend_from_slice(&other.to_vec());
        let ids = |encoding: Option<&str>, body: &[u8]| -> Vec<String> {
            let props = match encoding {
                Some(e) => props.clone().with_content_encoding(e.into()),
                None => props.clone(),
            };
            Archived::read(&props, body)
                .into_iter()
                .map(|a| a.event.id)
                .collect()
        };
        assert_eq!(ids(None, &body), [event.id.clone(), other.id.clone()]);
        // Compressed, as the publisher writes it: the same events.
        let packed = crate::history::compress(&body);
        assert_eq!(
            ids(Some(crate::history::LZ4), &packed),
            [event.id.clone(), other.id.clone()]
        );
        // A body that does not unpack holds nothing (and does not panic).
        assert!(ids(Some(crate::history::LZ4), &body).is_empty());
        assert!(ids(Some(crate::history::LZ4), b"\xff\xff\xff\x7f").is_empty());
        assert!(ids(None, b"not json").is_empty());
        assert!(Archived::read(&BasicProperties::default(), &event.to_vec()).is_empty());
    }
}
