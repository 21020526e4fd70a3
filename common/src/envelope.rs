//! The event envelope: the JSON document producers publish and endpoints
//! receive (ARCHITECTURE.md, "The wire contract").
//!
//! [`Event`] is the checked form. Parsing ([`Event::from_slice`]) and building
//! ([`Event::new`], [`EventDraft::into_event`]) both validate, so an `Event`
//! value always satisfies the contract: a non-empty `id`, a `type` matching
//! `[a-z0-9_-]+(\.[a-z0-9_-]+)*`, an RFC 3339 `timestamp` and any JSON `data`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest accepted event type, in bytes (AMQP routing keys stop at 255).
pub const MAX_TYPE_LEN: usize = 255;
/// Longest accepted event id, in bytes (it becomes the AMQP `message_id`, a short string).
pub const MAX_ID_LEN: usize = 255;

/// Why an envelope was refused. Each variant names the field at fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The body is not a JSON object of the expected shape.
    #[error("invalid envelope JSON: {0}")]
    Json(String),
    /// `type` does not match the pattern.
    #[error(
        "field `type`: {0:?} is not a valid event type (expected lowercase words of [a-z0-9_-] separated by dots, at most 255 bytes)"
    )]
    Type(String),
    /// `id` is empty, too long or has control characters.
    #[error("field `id`: must be 1 to 255 printable characters")]
    Id,
    /// `source` is too long or has control characters.
    #[error("field `source`: must be at most 255 printable characters")]
    Source,
    /// `timestamp` is not RFC 3339.
    #[error("field `timestamp`: {0:?} is not an RFC 3339 date-time")]
    Timestamp(String),
    /// `tenant` or `environment` is not 1 to 64 of `[a-z0-9_-]`.
    #[error("field `{0}`: {1:?} must be 1 to 64 characters of [a-z0-9_-]")]
    Scope(&'static str, String),
    /// The routing key of a scoped event (type plus tenant and environment)
    /// would be over the broker's 255 bytes.
    #[error(
        "field `type`: with the tenant and environment its routing key is {0} bytes, over 255; shorten the type"
    )]
    ScopedKeyTooLong(usize),
    /// `type` starts with `hookpost.`: hookpost's own operational events.
    #[error(
        "field `type`: {0:?}: types starting with `hookpost.` are hookpost's own operational events; publish under another first word"
    )]
    Reserved(String),
}

/// Whether RFC 3339 can write `at`: a year of four digits and an offset
/// of whole minutes, at most 23:59 (what the `time` crate refuses to format).
fn rfc3339_writes(at: OffsetDateTime) -> bool {
    let offset = at.offset();
    (0..10_000).contains(&at.year())
        && offset.whole_hours().unsigned_abs() <= 23
        && offset.seconds_past_minute() == 0
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique event id; becomes `webhook-id` and the AMQP `message_id`.
    pub id: String,
    /// Dotted event type, the AMQP routing key (`order.created`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// The publishing service, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The customer it belongs to: only that tenant's endpoints (and global
    /// ones) receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The environment (`prd`, `snd`): only endpoint variants declared for it
    /// receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The payload, any JSON value.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// An envelope as a publisher may hand it in: every field but `type` optional.
///
/// `id` defaults to a fresh [`new_event_id`], `timestamp` to now, `data` to `null`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDraft {
    /// Optional id; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Required event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Optional RFC 3339 timestamp; now when absent.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Optional source.
    #[serde(default)]
    pub source: Option<String>,
    /// Optional tenant, `[a-z0-9_-]{1,64}`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Optional environment, `[a-z0-9_-]{1,64}`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Payload.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl EventDraft {
    /// Validates the draft and fills in what is missing.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming the first bad field.
    pub fn into_event(self) -> Result<Event, EnvelopeError> {
        let timestamp = match self.timestamp {
            Some(text) => OffsetDateTime::parse(&text, &Rfc3339)
                .map_err(|_| EnvelopeError::Timestamp(text))?,
            None => OffsetDateTime::now_utc(),
        };
        let event = Event {
            id: self.id.unwrap_or_else(new_event_id),
            event_type: self.event_type,
            timestamp,
            source: self.source,
            tenant: self.tenant,
            environment: self.environment,
            data: self.data,
        };
        event.validate()?;
        Ok(event)
    }
}

impl Event {
    /// A new event of `event_type` with a fresh id and the current time.
    ///
    /// # Errors
    /// [`EnvelopeError::Type`] when the type does not match the pattern.
    pub fn new(event_type: &str, data: serde_json::Value) -> Result<Self, EnvelopeError> {
        EventDraft {
            event_type: event_type.to_owned(),
            data,
            ..EventDraft::default()
        }
        .into_event()
    }

    /// Sets the `tenant` and `environment` (each optional).
    ///
    /// # Errors
    /// [`EnvelopeError::Scope`] or [`EnvelopeError::ScopedKeyTooLong`].
    pub fn with_scope(
        mut self,
        tenant: Option<&str>,
        environment: Option<&str>,
    ) -> Result<Self, EnvelopeError> {
        self.tenant = tenant.map(str::to_owned);
        self.environment = environment.map(str::to_owned);
        self.validate()?;
        Ok(self)
    }

    /// Where it is published: the exchange and the routing key
    /// ([`crate::routing::route`]).
    pub fn route(&self) -> (crate::routing::Exchange, String) {
        crate::routing::route(
            self.tenant.as_deref(),
            self.environment.as_deref(),
            &self.event_type,
        )
    }

    /// Sets the `source` field.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Parses and validates a complete envelope (as a dispatcher receives it).
    ///
    /// # Errors
    /// [`EnvelopeError`] when the bytes are not JSON, miss a field or break a rule.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        // The common case first, without tracking the path (a dispatcher
        // parses every delivery); a failure is parsed again to name its field.
        if let Ok(event) = serde_json::from_slice::<Event>(bytes) {
            event.validate()?;
            return Ok(event);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let event: Event = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                EnvelopeError::Json(inner.to_string())
            } else {
                EnvelopeError::Json(format!("field `{path}`: {inner}"))
            }
        })?;
        de.end().map_err(|e| EnvelopeError::Json(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    /// [`Event::from_slice`] without keeping the payload: `data` is checked
    /// to be JSON and left `null`. For readers that need the envelope's
    /// fields, not its payload (a dispatcher sends the bytes as published,
    /// a replay republishes them): no allocation per payload field, however
    /// large or nested the payload. Accepts and rejects exactly what
    /// [`Event::from_slice`] does, with the same errors.
    ///
    /// # Errors
    /// [`EnvelopeError`] when the bytes are not JSON, miss a field or break a rule.
    pub fn head_from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        /// The envelope's fields, the payload skipped (but parsed).
        #[derive(Deserialize)]
        struct Head {
            id: String,
            #[serde(rename = "type")]
            event_type: String,
            #[serde(with = "time::serde::rfc3339")]
            timestamp: OffsetDateTime,
            #[serde(default)]
            source: Option<String>,
            #[serde(default)]
            tenant: Option<String>,
            #[serde(default)]
            environment: Option<String>,
            #[serde(default, rename = "data")]
            _data: serde::de::IgnoredAny,
        }
        let Ok(head) = serde_json::from_slice::<Head>(bytes) else {
            // The full parse names the failing field.
            return Self::from_slice(bytes).map(|event| Self {
                data: serde_json::Value::Null,
                ..event
            });
        };
        let event = Self {
            id: head.id,
            event_type: head.event_type,
            timestamp: head.timestamp,
            source: head.source,
            tenant: head.tenant,
            environment: head.environment,
            data: serde_json::Value::Null,
        };
        event.validate()?;
        Ok(event)
    }

    /// [`Event::validate`], and the type not one of hookpost's own
    /// ([`crate::routing::OPERATIONAL_WORD`]): what publishers (the library,
    /// the CLI, the ingest) may send, so that no service can pass its
    /// events off as hookpost's operational events.
    ///
    /// # Errors
    /// The first field at fault.
    pub fn validate_publishable(&self) -> Result<(), EnvelopeError> {
        self.validate()?;
        if self.event_type.split('.').next() == Some(crate::routing::OPERATIONAL_WORD) {
            return Err(EnvelopeError::Reserved(self.event_type.clone()));
        }
        Ok(())
    }

    /// Checks every rule of the contract.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if !is_valid_type(&self.event_type) {
            return Err(EnvelopeError::Type(self.event_type.clone()));
        }
        if !is_printable(&self.id, MAX_ID_LEN) || self.id.is_empty() {
            return Err(EnvelopeError::Id);
        }
        if let Some(source) = &self.source
            && !is_printable(source, 255)
        {
            return Err(EnvelopeError::Source);
        }
        // The field is public: a caller may set a date-time the envelope's
        // RFC 3339 form cannot carry (it would serialize to nothing).
        if !rfc3339_writes(self.timestamp) {
            return Err(EnvelopeError::Timestamp(self.timestamp.to_string()));
        }
        for (field, value) in [("tenant", &self.tenant), ("environment", &self.environment)] {
            if let Some(v) = value
                && !crate::routing::is_valid_scope(v)
            {
                return Err(EnvelopeError::Scope(field, v.chars().take(80).collect()));
            }
        }
        // Without a scope the key is the type, checked above (no longer
        // than a key may be: asserted below).
        if self.tenant.is_some() || self.environment.is_some() {
            let key = self.route().1.len();
            if key > crate::routing::MAX_KEY_LEN {
                return Err(EnvelopeError::ScopedKeyTooLong(key));
            }
        }
        Ok(())
    }

    /// Appends the envelope as JSON (what [`Event::to_vec`] returns) to `out`.
    ///
    /// # Errors
    /// [`EnvelopeError::Timestamp`] for a timestamp RFC 3339 cannot write
    /// (which [`Event::validate`] refuses); `out` may then hold part of it.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        crate::json::write_event(self, out)
            .map_err(|_| EnvelopeError::Timestamp(self.timestamp.to_string()))
    }

    /// The envelope as JSON bytes, the AMQP body and the single-delivery HTTP body.
    pub fn to_vec(&self) -> Vec<u8> {
        // Written into a buffer kept per thread, then copied once at its
        // exact size: `serde_json::to_vec` grows its own from 128 bytes, a
        // reallocation and a copy each time it doubles (four for a 1 KiB
        // event, per event published).
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            // Written as `serde_json` writes it, faster (`json.rs`). Fails
            // only for a timestamp `validate` refuses.
            let out = match self.write_json(buf) {
                Ok(()) => buf.as_slice().to_vec(),
                Err(_) => Vec::new(),
            };
            // One very large event does not keep its buffer for good.
            if buf.capacity() > SCRATCH_KEPT {
                *buf = Vec::new();
            }
            out
        })
    }

    /// At least as many bytes as [`Event::to_vec`] writes, read from the
    /// lengths of the envelope's strings rather than their bytes: each is
    /// counted as if every byte needed a six-byte escape (`\u001f`). A
    /// publisher checks a long call's sizes with it before sending anything,
    /// without serializing every event twice; an event whose bound exceeds a
    /// limit is serialized to know for sure.
    pub fn max_json_len(&self) -> usize {
        // The field names, quotes, colons, commas and braces (71 bytes with
        // every field) and the RFC 3339 timestamp (at most 40), with room.
        const ENVELOPE: usize = 160;
        [
            Some(&self.id),
            Some(&self.event_type),
            self.source.as_ref(),
            self.tenant.as_ref(),
            self.environment.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|s| max_string_len(s))
        .sum::<usize>()
            + ENVELOPE
            + max_value_len(&self.data)
    }
}

/// The most bytes `serde_json` writes a finite `f64` in (its float
/// formatter's buffer).
const MAX_FLOAT_LEN: usize = 24;

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// At least a JSON string's serialized length: quotes and six bytes a byte.
fn max_string_len(s: &str) -> usize {
    2 + 6 * s.len()
}

/// At least `value`'s serialized length (compact, as `serde_json` writes it).
fn max_value_len(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) => 5,
        // An integer's digits (and sign); a float at its longest
        // (`serde_json` writes it in 24 bytes at most). Not formatted: that
        // was most of this check's cost.
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => digits(u),
            (None, Some(i)) => 1 + digits(i.unsigned_abs()),
            (None, None) => MAX_FLOAT_LEN,
        },
        Value::String(s) => max_string_len(s),
        // Brackets, and a comma after each element (one too many).
        Value::Array(items) => 2 + items.iter().map(|v| max_value_len(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| max_string_len(k) + 1 + max_value_len(v) + 1)
                .sum::<usize>()
        }
    }
}

// An unscoped event's routing key is its type: a valid type is a valid key.
const _: () = assert!(MAX_TYPE_LEN <= crate::routing::MAX_KEY_LEN);

/// The largest serialization buffer [`Event::to_vec`] keeps for the next event.
const SCRATCH_KEPT: usize = 256 << 10;

/// A fresh, time-ordered event id: `evt_` + UUIDv7 (sortable by creation time).
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// Whether `t` is a valid event type: `[a-z0-9_-]+(\.[a-z0-9_-]+)*`, at most 255 bytes.
pub fn is_valid_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.split('.').all(|word| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

fn is_printable(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn operational_types_are_not_publishable() {
        let own = Event::new("hookpost.endpoint.paused", serde_json::json!({})).expect("valid");
        assert_eq!(own.validate(), Ok(()));
        assert!(matches!(
            own.validate_publishable(),
            Err(EnvelopeError::Reserved(_))
        ));
        for ok in ["hookposts.x", "order.hookpost", "hookpost_x"] {
            let e = Event::new(ok, serde_json::json!({})).expect("valid");
            assert_eq!(e.validate_publishable(), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_size_bound_holds_at_its_edges() {
        // Every byte escaped to six, the widest numbers, the longest
        // timestamp, every optional field.
        let control = "\u{1}".repeat(1000);
        let data = serde_json::json!({
            control.clone(): [control.clone(), f64::MIN, i64::MIN, u64::MAX, null, false, {}, []],
        });
        let mut event = Event::new("a.b", data)
            .expect("valid")
            .with_source(control.clone());
        event.id = control.clone();
        event.tenant = Some(control.clone());
        event.environment = Some(control);
        event.timestamp = time::macros::datetime!(9999-12-31 23:59:59.999_999_999 -23:59);
        let exact = event.to_vec().len();
        let bound = event.max_json_len();
        assert!(bound >= exact, "{bound} < {exact}");
        // Close: the bound serves as a size check, not only a safe guess.
        assert!(bound < exact + 400, "{bound} against {exact}");
    }

    #[test]
    fn type_pattern() {
        for ok in ["order", "order.created", "a-b_c.9", "x.y.z"] {
            assert!(is_valid_type(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "order.",
            ".order",
            "Order.created",
            "order..x",
            "order created",
            "order.*",
            "ä",
        ] {
            assert!(!is_valid_type(bad), "{bad}");
        }
        assert!(!is_valid_type(&"a".repeat(256)));
    }

    #[test]
    fn draft_fills_id_and_timestamp() {
        let draft: EventDraft =
            serde_json::from_str(r#"{"type":"order.created","data":{"n":1}}"#).unwrap();
        let event = draft.into_event().unwrap();
        assert!(event.id.starts_with("evt_"));
        assert_eq!(event.data["n"], 1);
        let second = Event::new("order.created", serde_json::Value::Null).unwrap();
        assert!(second.id > event.id, "ids are time-ordered");
    }

    #[test]
    fn a_timestamp_rfc_3339_cannot_write_is_refused_not_published_empty() {
        // The field is public: a caller may set a date-time the envelope's
        // RFC 3339 form cannot carry (serializing it fails).
        for at in [
            time::macros::datetime!(-0001-06-01 12:00 UTC),
            time::macros::datetime!(2026-06-01 12:00 +01:00:30),
        ] {
            let mut event = Event::new("a.b", serde_json::json!(1)).expect("valid");
            event.timestamp = at;
            assert!(serde_json::to_vec(&event).is_err(), "{at}");
            let refused = event.validate_publishable();
            assert!(
                matches!(refused, Err(EnvelopeError::Timestamp(_))),
                "{at}: {refused:?}"
            );
        }
        // The edges RFC 3339 can write stay valid.
        for at in [
            time::macros::datetime!(0000-01-01 00:00 -23:59),
            time::macros::datetime!(9999-12-31 23:59:59.999_999_999 +23:59),
        ] {
            let mut event = Event::new("a.b", serde_json::json!(1)).expect("valid");
            event.timestamp = at;
            assert_eq!(event.validate_publishable(), Ok(()), "{at}");
            assert!(!event.to_vec().is_empty(), "{at}");
        }
    }

    #[test]
    fn draft_rejects_unknown_fields_and_bad_timestamp() {
        assert!(serde_json::from_str::<EventDraft>(r#"{"type":"a","extra":1}"#).is_err());
        let draft: EventDraft =
            serde_json::from_str(r#"{"type":"a","timestamp":"yesterday"}"#).unwrap();
        assert_eq!(
            draft.into_event(),
            Err(EnvelopeError::Timestamp("yesterday".into()))
        );
    }

    #[test]
    fn parse_requires_all_fields() {
        assert!(matches!(
            Event::from_slice(b"not json"),
            Err(EnvelopeError::Json(_))
        ));
        assert!(matches!(
            Event::from_slice(br#"{"type":"a"}"#),
            Err(EnvelopeError::Json(_))
        ));
        let ok = br#"{"id":"e1","type":"a.b","timestamp":"2026-11-22T10:00:00Z","data":[1]}"#;
        let event = Event::from_slice(ok).unwrap();
        assert_eq!(event.source, None);
        assert_eq!(Event::from_slice(&event.to_vec()).unwrap(), event);
        let bad_type = br#"{"id":"e1","type":"A","timestamp":"2026-11-22T10:00:00Z","data":1}"#;
        assert!(matches!(
            Event::from_slice(bad_type),
            Err(EnvelopeError::Type(_))
        ));
        let empty_id = br#"{"id":"","type":"a","timestamp":"2026-11-22T10:00:00Z","data":1}"#;
        assert_eq!(Event::from_slice(empty_id), Err(EnvelopeError::Id));
    }

    #[test]
    fn tenant_and_environment_are_checked_and_routed() {
        let ok = br#"{"id":"e1","type":"a.b","timestamp":"2026-11-22T10:00:00Z","tenant":"acme","environment":"snd"}"#;
        let event = Event::from_slice(ok).unwrap();
        assert_eq!(event.route().1, "t=acme.e=snd.a.b");
        assert_eq!(Event::from_slice(&event.to_vec()).unwrap(), event);
        let plain = Event::new("a.b", serde_json::Value::Null).unwrap();
        assert!(
            !String::from_utf8(plain.to_vec())
                .unwrap()
                .contains("tenant")
        );
        assert_eq!(
            plain.clone().with_scope(Some("Acme"), None),
            Err(EnvelopeError::Scope("tenant", "Acme".into()))
        );
        assert_eq!(
            plain.with_scope(None, Some("")),
            Err(EnvelopeError::Scope("environment", String::new()))
        );
        // A 255-byte type is fine alone, too long with a scope.
        let long = Event::new(&"a".repeat(255), serde_json::Value::Null).unwrap();
        assert!(matches!(
            long.with_scope(Some("t"), None),
            Err(EnvelopeError::ScopedKeyTooLong(262))
        ));
    }

    /// Any JSON value: control characters, quotes and non-ASCII in strings
    /// and keys, integers and floats of every size, nesting.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,30}".prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\]{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,10}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn the_head_parser_rejects_what_the_full_one_does() {
        let cases: [&[u8]; 7] = [
            br#"{"id":"e","type":"a.b","timestamp":"2026-01-01T00:00:00Z","data":{"x":[1,2}}"#,
            br#"{"id":"e","type":"a.b","timestamp":"2026-01-01T00:00:00Z","data":1} trailing"#,
            br#"{"id":"e","type":"a.b","timestamp":"2026-01-01T00:00:00Z","data":1,"data":2}"#,
            br#"{"id":"e","type":"A B","timestamp":"2026-01-01T00:00:00Z"}"#,
            br#"{"id":"","type":"a.b","timestamp":"2026-01-01T00:00:00Z"}"#,
            br#"{"id":"e","type":"a.b","timestamp":"yesterday"}"#,
            br#"{"id":"e","type":"a.b","timestamp":"2026-01-01T00:00:00Z","tenant":"Bad Tenant"}"#,
        ];
        for bytes in cases {
            let head = Event::head_from_slice(bytes);
            assert!(head.is_err(), "{}", String::from_utf8_lossy(bytes));
            assert_eq!(head.err(), Event::from_slice(bytes).err());
        }
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Event::from_slice(&bytes);
        }

        #[test]
        fn the_head_parser_agrees_with_the_full_one(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let full = Event::from_slice(&bytes).map(|e| Event { data: serde_json::Value::Null, ..e });
            prop_assert_eq!(Event::head_from_slice(&bytes), full);
        }

        #[test]
        fn the_head_of_any_event_is_the_event_without_its_payload(data in json_value(), scoped in any::<bool>()) {
            let mut event = Event::new("a.b", data).unwrap();
            if scoped {
                event = event.with_scope(Some("acme"), Some("prd")).unwrap();
            }
            let bytes = event.to_vec();
            prop_assert_eq!(Event::head_from_slice(&bytes).unwrap(), Event { data: serde_json::Value::Null, ..event });
        }

        #[test]
        fn the_size_bound_is_never_below_the_size(data in json_value(), id in "\\PC{1,255}", source in proptest::option::of("[\\x00-\\x1f\"\\\\a-z]{0,40}"), scoped in any::<bool>()) {
            let mut event = Event::new("a.b", data).unwrap();
            event.id = id;
            if let Some(source) = source {
                event = event.with_source(source);
            }
            if scoped {
                event.tenant = Some("acme".to_owned());
                event.environment = Some("prd".to_owned());
            }
            prop_assert!(event.max_json_len() >= event.to_vec().len());
        }

        #[test]
        fn the_envelope_is_written_as_serde_json_writes_it(
            data in json_value(),
            id in "\\PC{1,40}|[\\x00-\\x1f\"\\\\a-z\u{e9}]{0,40}",
            source in proptest::option::of("[\\x00-\\x1f\"\\\\a-z\u{e9}]{0,40}"),
            tenant in proptest::option::of("[a-z0-9_-]{1,20}"),
            environment in proptest::option::of("[a-z0-9_-]{1,20}"),
            seconds in 0_i64..253_402_300_799,
            nanos in 0_u32..1_000_000_000,
            offset in -86_340_i32..=86_340,
        ) {
            let mut event = Event::new("a.b", data).unwrap();
            event.id = id;
            event.source = source;
            event.tenant = tenant;
            event.environment = environment;
            let offset = time::UtcOffset::from_whole_seconds(offset / 60 * 60).unwrap();
            event.timestamp = (OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                + time::Duration::nanoseconds(i64::from(nanos)))
            .to_offset(offset);
            prop_assume!((0..10_000).contains(&event.timestamp.year()));
            prop_assert_eq!(
                String::from_utf8(event.to_vec()).unwrap(),
                serde_json::to_string(&event).unwrap()
            );
        }

        #[test]
        fn valid_events_round_trip(t in "[a-z0-9_-]{1,8}(\\.[a-z0-9_-]{1,8}){0,3}", n in any::<i64>(), s in "[a-zA-Z ]{0,20}") {
            let event = Event::new(&t, serde_json::json!({"n": n})).unwrap().with_source(s);
            prop_assert_eq!(Event::from_slice(&event.to_vec()).unwrap(), event);
        }
    }
}
