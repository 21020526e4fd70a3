//! The attempt log: one record per delivery attempt, appended by the
//! dispatchers to the stream `<prefix>.log` (retention by age and size,
//! `[log]`) and read back by `hookpost-admin log` from a timestamp offset.
//! A stream message holds up to 512 records, one JSON object per line
//! (`application/x-ndjson`), LZ4-compressed ([`LZ4`]): one message per
//! attempt would double the broker's work at one request per event, and a
//! query moves through the broker a fifth of the bytes it would uncompressed.
//! A record holds what was tried and what the endpoint answered; never a
//! secret or a request header value.

use crate::config::LogConfig;
use crate::topology::Topology;
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};

mod cursor;
mod read;
pub use cursor::{ATTACH_MARGIN, Cursor, STALL, Step};
pub use read::{Follow, Query, Scanned, read};

/// The `content-encoding` of a log or archive message whose body is
/// LZ4-compressed (a block with its size prepended, little-endian `u32`):
/// what the dispatchers write to the log and the publishers to the archive.
/// A message without it is plain.
pub const LZ4: &str = "lz4";

/// The largest body a compressed log or archive message may unpack to; a
/// message claiming more is skipped (dispatchers pack at most 256 KiB,
/// publishers compress at most this much).
pub const MAX_UNPACKED: usize = 4 << 20;

/// `body` compressed for a log message (see [`LZ4`]).
pub fn compress(body: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(body)
}

/// A log message's records as written: `data` itself, or unpacked when
/// `encoding` is [`LZ4`]; `None` for a body that does not unpack (or would
/// be over [`MAX_UNPACKED`]).
pub fn unpacked<'a>(encoding: Option<&str>, data: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
    if encoding != Some(LZ4) {
        return Some(std::borrow::Cow::Borrowed(data));
    }
    let (size, block) = data.split_first_chunk::<4>()?;
    let size = usize::try_from(u32::from_le_bytes(*size)).ok()?;
    if size > MAX_UNPACKED {
        return None;
    }
    lz4_flex::block::decompress(block, size)
        .ok()
        .map(std::borrow::Cow::Owned)
}

/// A log or archive message's body as written: [`unpacked`] by the
/// message's own `content-encoding`.
pub fn unpacked_message<'a>(
    properties: &lapin::BasicProperties,
    data: &'a [u8],
) -> Option<std::borrow::Cow<'a, [u8]>> {
    unpacked(
        properties.content_encoding().as_ref().map(|e| e.as_str()),
        data,
    )
}

/// Header of a reader's end marker in the log (not an attempt: readers skip
/// it, except the one that appended it).
pub const MARKER_HEADER: &str = "hookpost-log-marker";

/// What became of the event after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The endpoint took it (2xx).
    Delivered,
    /// It failed and waits for another attempt.
    Retry,
    /// It went to the dead-letter queue.
    DeadLettered,
    /// The endpoint's transform dropped it (nothing was sent).
    Filtered,
    /// Retries used up with `on_exhausted = "drop"`.
    Dropped,
}

impl Outcome {
    /// Every outcome, as written in records and accepted by `--outcome`.
    pub const ALL: [Self; 5] = [
        Self::Delivered,
        Self::Retry,
        Self::DeadLettered,
        Self::Filtered,
        Self::Dropped,
    ];

    /// The name in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::DeadLettered => "dead_lettered",
            Self::Filtered => "filtered",
            Self::Dropped => "dropped",
        }
    }

    /// The outcome named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One attempt at delivering one event to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The event id (the message id of a message that is not an event).
    pub event_id: String,
    /// The event type (empty when the message was not an event).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The event's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The endpoint id.
    pub endpoint: String,
    /// 1 on the first try.
    pub attempt: u32,
    /// When the attempt began (RFC 3339, UTC).
    pub started_at: String,
    /// How long the request took, in milliseconds (0 when none was sent).
    pub duration_ms: u64,
    /// What became of the event.
    pub outcome: Outcome,
    /// The HTTP status, when the endpoint answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed (`HTTP 503`, `timed out after 5000 ms`, a transform error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the response body (`log.response_body_bytes`), as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

impl Attempt {
    /// When the attempt began, parsed (`None` if the record is malformed).
    pub fn started(&self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::parse(
            &self.started_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    }
}

/// The start of a response body as text: at most `max` bytes, cut at a
/// character boundary, invalid UTF-8 replaced; `None` when empty.
pub fn snippet(body: &[u8], max: usize) -> Option<String> {
    let head = &body[..body.len().min(max)];
    let text = String::from_utf8_lossy(head);
    // A multi-byte character cut at `max` decodes as U+FFFD: drop it.
    let text = if head.len() < body.len() {
        text.trim_end_matches('\u{fffd}').to_owned()
    } else {
        text.into_owned()
    };
    (!text.is_empty()).then_some(text)
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-29T10:00:00Z`) or a
/// duration ago (`90s`, `30m`, `2h`, `7d`).
///
/// # Errors
/// A message showing both accepted forms.
pub fn parse_time(text: &str, now: time::OffsetDateTime) -> Result<time::OffsetDateTime, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t);
    }
    let bad = || {
        format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-29T10:00:00Z) or a duration ago (90s, 30m, 2h, 7d)"
        )
    };
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    now.checked_sub(time::Duration::seconds(seconds))
        .ok_or_else(bad)
}

/// A bounded stream's arguments (the log's, the archive's): retention by
/// age and size, segments of a sixteenth of the size (at most RabbitMQ's
/// 500 MB default), replicas.
pub fn stream_args(max_age: &str, max_bytes: u64, topology: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    args.insert("x-queue-type".into(), text("stream"));
    args.insert("x-max-age".into(), text(max_age));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(
            i64::try_from((max_bytes / 16).clamp(64 << 10, 500_000_000)).unwrap_or(i64::MAX),
        ),
    );
    args.insert(
        "x-initial-cluster-size".into(),
        AMQPValue::LongLongInt(topology.control_replicas().into()),
    );
    args
}

/// Makes sure the log stream exists: a passive declare first, so only the
/// first dispatcher creates it (see `registry::control::ensure`), and an
/// existing stream is used as it is (its retention was set when it was
/// created; a policy changes it).
///
/// # Errors
/// The broker's refusal.
pub async fn ensure(
    conn: &Connection,
    topology: &Topology,
    log: &LogConfig,
) -> Result<(), lapin::Error> {
    ensure_stream(
        conn,
        &topology.log(),
        stream_args(&log.max_age, log.max_bytes, topology),
    )
    .await
}

/// Makes sure the stream `name` exists, declaring it with `args` if not
/// (see [`ensure`]).
///
/// # Errors
/// The broker's refusal.
pub async fn ensure_stream(
    conn: &Connection,
    name: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    if crate::amqp::queue_exists(conn, name).await? {
        return Ok(());
    }
    let ch = crate::amqp::open_channel(conn).await?;
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_bodies_unpack_and_hostile_ones_are_refused() {
        let body = b"{\"a\":1}\n{\"a\":2}".repeat(100);
        let packed = compress(&body);
        assert!(packed.len() < body.len() / 4);
        assert_eq!(unpacked(Some(LZ4), &packed).as_deref(), Some(&body[..]));
        assert_eq!(unpacked(None, b"plain").as_deref(), Some(&b"plain"[..]));
        // Claims 4 GiB: refused before allocating.
        let mut bomb = u32::MAX.to_le_bytes().to_vec();
        bomb.extend_from_slice(&packed[4..]);
        assert!(unpacked(Some(LZ4), &bomb).is_none());
        assert!(unpacked(Some(LZ4), b"xy").is_none());
        assert!(unpacked(Some(LZ4), &[8, 0, 0, 0, 0xff, 0xff]).is_none());
    }

    #[test]
    fn snippets_are_capped_at_a_character_boundary() {
        assert_eq!(snippet(b"", 10), None);
        assert_eq!(snippet(b"try later", 3).as_deref(), Some("try"));
        assert_eq!(snippet(b"ok", 1024).as_deref(), Some("ok"));
        // "é" is two bytes: cut after its first, it is left out.
        assert_eq!(snippet("aé".as_bytes(), 2).as_deref(), Some("a"));
        assert_eq!(snippet(&[0xff, b'x'], 10).as_deref(), Some("\u{fffd}x"));
    }

    #[test]
    fn records_round_trip_and_leave_out_what_is_absent() {
        let a = Attempt {
            event_id: "evt_1".into(),
            event_type: "order.created".into(),
            tenant: None,
            environment: None,
            endpoint: "crm".into(),
            attempt: 2,
            started_at: "2026-12-03T07:00:00.123Z".into(),
            duration_ms: 12,
            outcome: Outcome::Retry,
            status: Some(503),
            error: Some("HTTP 503".into()),
            response: Some("busy".into()),
        };
        let text = serde_json::to_string(&a).expect("json");
        assert!(!text.contains("tenant"), "{text}");
        assert!(text.contains(r#""outcome":"retry""#), "{text}");
        let back: Attempt = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, a);
        assert!(back.started().is_some());
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}
