//! The wire contract between hookpost processes (ARCHITECTURE.md, "The wire
//! contract"): every `hookpost-*` AMQP header name, the dead-letter reasons,
//! and the writer and reader of dead-letter headers side by side, so what
//! the dispatcher and a forced delete write is what `hookpost-admin` reads.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// Header names.
pub mod header {
    /// The attempt number of a delivery (1 on the first try); hookpost's own
    /// count, never derived from `x-death`.
    pub const ATTEMPT: &str = "hookpost-attempt";
    /// The endpoint a dead letter belongs to.
    pub const ENDPOINT: &str = "hookpost-endpoint";
    /// Why it was dead-lettered ([`super::Reason`]).
    pub const REASON: &str = "hookpost-reason";
    /// The last HTTP status, when there was one.
    pub const LAST_STATUS: &str = "hookpost-last-status";
    /// The last error, at most [`super::MAX_ERROR_BYTES`].
    pub const LAST_ERROR: &str = "hookpost-last-error";
    /// When it was dead-lettered (RFC 3339).
    pub const FAILED_AT: &str = "hookpost-failed-at";
    /// The event type (the message's `type` property, kept for filters).
    pub const EVENT_TYPE: &str = "hookpost-event-type";
    /// The tenant: the endpoint's, else the event's (kept for filters).
    pub const TENANT: &str = "hookpost-tenant";
    /// The environment: the endpoint variant's, else the event's.
    pub const ENVIRONMENT: &str = "hookpost-environment";

    /// Every header a dead letter carries that a replay removes (it starts
    /// afresh), with the broker's own `x-death`.
    pub const DEAD_LETTER: [&str; 10] = [
        ATTEMPT,
        ENDPOINT,
        REASON,
        LAST_STATUS,
        LAST_ERROR,
        FAILED_AT,
        EVENT_TYPE,
        TENANT,
        ENVIRONMENT,
        "x-death",
    ];

    /// Whether `name` is reserved for hookpost (endpoints may not set it).
    pub fn is_reserved(name: &str) -> bool {
        name.to_ascii_lowercase().starts_with("hookpost-")
    }
}

/// The longest `hookpost-last-error` written.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Why a delivery was dead-lettered (`hookpost-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `max_retries` retries failed.
    Exhausted,
    /// The endpoint answered a non-retryable 3xx/4xx.
    Rejected,
    /// The endpoint answered 410 Gone (the endpoint is paused).
    Gone,
    /// The message is not a valid envelope.
    Malformed,
    /// The endpoint's transform failed on the event or broke a limit.
    TransformError,
    /// The endpoint was deleted with force while its queue held the event.
    EndpointDeleted,
    /// The event's tenant or environment is not the endpoint's (a client
    /// published a routing key that disagrees with its envelope).
    Misrouted,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Self; 7] = [
        Self::Exhausted,
        Self::Rejected,
        Self::Gone,
        Self::Malformed,
        Self::TransformError,
        Self::EndpointDeleted,
        Self::Misrouted,
    ];

    /// The header and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::Rejected => "rejected",
            Self::Gone => "gone",
            Self::Malformed => "malformed",
            Self::TransformError => "transform_error",
            Self::EndpointDeleted => "endpoint_deleted",
            Self::Misrouted => "misrouted",
        }
    }

    /// The reason a header value names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What a dead letter says about its failure: written as headers by
/// [`DeadLetter::write`], read back by [`DeadLetter::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The endpoint.
    pub endpoint: String,
    /// Why. A reason this version does not know (or the broker's own, from
    /// `x-death`) is kept as text by readers.
    pub reason: String,
    /// The attempt number of the last try (the message's `hookpost-attempt`).
    pub attempt: u32,
    /// The last HTTP status, if a request got one.
    pub last_status: Option<u16>,
    /// The last error, cut to [`MAX_ERROR_BYTES`] on writing.
    pub last_error: String,
    /// When (RFC 3339).
    pub failed_at: String,
    /// The event type, when known.
    pub event_type: Option<String>,
    /// The tenant, when there is one.
    pub tenant: Option<String>,
    /// The environment, when there is one.
    pub environment: Option<String>,
}

impl DeadLetter {
    /// A dead letter of `endpoint` for `reason`, failed now.
    pub fn new(endpoint: &str, reason: Reason, attempt: u32) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            reason: reason.as_str().to_owned(),
            attempt,
            last_status: None,
            last_error: String::new(),
            failed_at: now_rfc3339(),
            event_type: None,
            tenant: None,
            environment: None,
        }
    }

    /// `headers` (the original message's) with this dead letter's headers
    /// set; every header of the contract is written, `hookpost-last-status`
    /// as void when there was no HTTP status.
    pub fn write(&self, headers: FieldTable) -> FieldTable {
        // Never keep the original message's type, tenant or environment
        // headers: an AMQP client could have set them to point `dlq --tenant`
        // at someone else.
        let mut headers: FieldTable = headers
            .inner()
            .iter()
            .filter(|(name, _)| {
                ![header::EVENT_TYPE, header::TENANT, header::ENVIRONMENT].contains(&name.as_str())
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let mut error = self.last_error.clone();
        truncate_utf8(&mut error, MAX_ERROR_BYTES);
        headers.insert(header::ENDPOINT.into(), text(&self.endpoint));
        headers.insert(
            header::ATTEMPT.into(),
            AMQPValue::LongLongInt(self.attempt.into()),
        );
        headers.insert(header::REASON.into(), text(&self.reason));
        headers.insert(
            header::LAST_STATUS.into(),
            self.last_status
                .map_or(AMQPValue::Void, |s| AMQPValue::LongLongInt(s.into())),
        );
        headers.insert(header::LAST_ERROR.into(), text(&error));
        headers.insert(header::FAILED_AT.into(), text(&self.failed_at));
        for (name, value) in [
            (header::EVENT_TYPE, &self.event_type),
            (header::TENANT, &self.tenant),
            (header::ENVIRONMENT, &self.environment),
        ] {
            if let Some(value) = value {
                headers.insert(name.into(), text(value));
            }
        }
        headers
    }

    /// Reads what `headers` say (any message: a missing fact stays empty,
    /// the attempt 0).
    pub fn read(headers: &FieldTable) -> Self {
        Self {
            endpoint: text(headers, header::ENDPOINT).unwrap_or_default(),
            reason: text(headers, header::REASON).unwrap_or_default(),
            attempt: attempt(headers).unwrap_or(0),
            last_status: int(headers, header::LAST_STATUS).and_then(|n| u16::try_from(n).ok()),
            last_error: text(headers, header::LAST_ERROR).unwrap_or_default(),
            failed_at: text(headers, header::FAILED_AT).unwrap_or_default(),
            event_type: text(headers, header::EVENT_TYPE),
            tenant: text(headers, header::TENANT),
            environment: text(headers, header::ENVIRONMENT),
        }
    }
}

/// The `hookpost-attempt` of a message, if it has a usable one (≥ 1).
pub fn attempt(headers: &FieldTable) -> Option<u32> {
    int(headers, header::ATTEMPT)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
}

/// A text header (long or short string).
pub fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An integer header, whatever integer type (or decimal text) a client used.
pub fn int(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_reads_back_as_written() {
        let mut original = FieldTable::default();
        original.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        let written = DeadLetter {
            endpoint: "crm".into(),
            reason: Reason::Exhausted.as_str().into(),
            attempt: 6,
            last_status: Some(503),
            last_error: "HTTP 503".into(),
            failed_at: "2026-12-02T13:00:00Z".into(),
            event_type: Some("order.created".into()),
            tenant: Some("acme".into()),
            environment: Some("snd".into()),
        };
        original.insert(
            header::TENANT.into(),
            AMQPValue::LongString("forged".into()),
        );
        let headers = written.write(original.clone());
        assert_eq!(DeadLetter::read(&headers), written);
        // A header the original message carried is not kept when the dead
        // letter has no value for it.
        let mut untenanted = written.clone();
        untenanted.tenant = None;
        assert_eq!(DeadLetter::read(&untenanted.write(original)).tenant, None);
        assert_eq!(text(&headers, "x-custom").as_deref(), Some("kept"));
        // Without a status, type, tenant or environment: void status, no
        // header for the others.
        let bare = DeadLetter::new("crm", Reason::EndpointDeleted, 1);
        let headers = bare.write(FieldTable::default());
        assert_eq!(
            headers.inner().get(header::LAST_STATUS),
            Some(&AMQPValue::Void)
        );
        assert_eq!(DeadLetter::read(&headers), bare);
        for name in header::DEAD_LETTER.iter().filter(|n| {
            ![
                "x-death",
                header::EVENT_TYPE,
                header::TENANT,
                header::ENVIRONMENT,
            ]
            .contains(*n)
        }) {
            assert!(headers.inner().contains_key(*name), "{name} written");
        }
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let mut d = DeadLetter::new("e", Reason::Rejected, 1);
        d.last_error = "é".repeat(MAX_ERROR_BYTES);
        let read = DeadLetter::read(&d.write(FieldTable::default()));
        assert!(read.last_error.len() <= MAX_ERROR_BYTES);
        assert!(read.last_error.chars().all(|c| c == 'é'));
    }

    #[test]
    fn reasons_round_trip_and_attempts_accept_any_integer() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("delivery_limit"), None);
        let mut h = FieldTable::default();
        for (value, want) in [
            (AMQPValue::LongInt(3), Some(3)),
            (AMQPValue::ShortInt(2), Some(2)),
            (AMQPValue::LongString("4".into()), Some(4)),
            (AMQPValue::LongLongInt(0), None),
            (AMQPValue::LongLongInt(-1), None),
            (AMQPValue::Boolean(true), None),
        ] {
            h.insert(header::ATTEMPT.into(), value);
            assert_eq!(attempt(&h), want);
        }
        assert!(header::is_reserved("Hookpost-Attempt"));
        assert!(!header::is_reserved("x-hookpost"));
    }
}
