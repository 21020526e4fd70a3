//! The event archive: a copy of every event published through hookpost
//! (the `producer` library, its CLI and its HTTP ingest), kept in the
//! stream `<prefix>.archive` with retention by age and size (`[archive]`),
//! and read back by time to send events again ([`replay`]).
//!
//! A copy is the event's body as published, with its `message_id`, and the
//! header [`ARCHIVED_AT_HEADER`]: when the publisher archived it. The
//! publisher sends it on the channel of the event, right after it, without
//! `mandatory`: a missing archive never fails a publish, and a refused copy
//! is counted (`hookpost_archive_records_total{result="lost"}`), not retried.

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

/// The properties of an event's archive copy: the event's own, with
/// [`ARCHIVED_AT_HEADER`] = `now`.
pub fn copy_properties(event: &BasicProperties, now: OffsetDateTime) -> BasicProperties {
    let mut headers = event.headers().clone().unwrap_or_default();
    headers.insert(
        ARCHIVED_AT_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)),
    );
    event.clone().with_headers(headers)
}

/// One archived event.
#[derive(Debug, Clone)]
pub struct Archived {
    /// The event, parsed from the copy's body.
    pub event: Event,
    /// When it was archived.
    pub archived_at: OffsetDateTime,
}

impl Archived {
    /// The archived event in a stream message; `None` for a message that is
    /// not one (no time header, or a body that is not a valid envelope).
    pub fn read(headers: &FieldTable, body: &[u8]) -> Option<Self> {
        let ms = crate::contract::int(headers, ARCHIVED_AT_HEADER)?;
        let archived_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
        let event = Event::from_slice(body).ok()?;
        Some(Self { event, archived_at })
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
        let headers = props.headers().clone().expect("headers");
        let back = Archived::read(&headers, &event.to_vec()).expect("archived");
        assert_eq!(back.archived_at, now);
        assert_eq!(back.event.id, event.id);
        assert!(Archived::read(&headers, b"not json").is_none());
        assert!(Archived::read(&FieldTable::default(), &event.to_vec()).is_none());
    }
}
