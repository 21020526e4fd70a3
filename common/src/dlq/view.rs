//! A dead letter as operators see it, and the filters of `hookpost-admin dlq`.

use crate::contract::text;
use crate::routing::topic_matches;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The facts about one dead letter, read from its headers and body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterView {
    /// Event id (`message_id`, else the envelope's `id`).
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Endpoint it failed for.
    pub endpoint: String,
    /// Why it failed.
    pub reason: String,
    /// The attempt that failed.
    pub attempts: u32,
    /// Last HTTP status.
    pub last_status: Option<u16>,
    /// Last error text.
    pub last_error: String,
    /// When it was dead-lettered.
    #[serde(with = "time::serde::rfc3339::option")]
    pub failed_at: Option<OffsetDateTime>,
    /// The tenant (`hookpost-tenant`, else the envelope's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The environment (`hookpost-environment`, else the envelope's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl DeadLetterView {
    /// Reads the view of a message (any message: a missing fact stays empty).
    pub fn of(properties: &BasicProperties, body: &[u8], prefix: &str) -> Self {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let envelope: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let id = properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| envelope["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let letter = crate::contract::DeadLetter::read(headers);
        let event_type = letter
            .event_type
            .clone()
            .or_else(|| properties.kind().as_ref().map(ToString::to_string))
            .or_else(|| envelope["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let death = first_death(headers);
        let endpoint = Some(letter.endpoint.clone())
            .filter(|e| !e.is_empty())
            .or_else(|| {
                let queue = death.and_then(|d| text(d, "queue"))?;
                queue
                    .strip_prefix(&format!("{prefix}.ep."))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let reason = Some(letter.reason.clone())
            .filter(|r| !r.is_empty())
            .or_else(|| death.and_then(|d| text(d, "reason")))
            .unwrap_or_default();
        Self {
            id,
            event_type,
            endpoint,
            reason,
            attempts: letter.attempt,
            last_status: letter.last_status,
            last_error: letter.last_error,
            failed_at: OffsetDateTime::parse(&letter.failed_at, &Rfc3339).ok(),
            tenant: letter
                .tenant
                .or_else(|| envelope["tenant"].as_str().map(str::to_owned)),
            environment: letter
                .environment
                .or_else(|| envelope["environment"].as_str().map(str::to_owned)),
        }
    }
}

fn first_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// Which dead letters a command applies to. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Endpoint id.
    pub endpoint: Option<String>,
    /// With `endpoint`: its environments' variants (`<id>~<env>`) too.
    pub with_variants: bool,
    /// Event type pattern (`order.*`, `#`).
    pub type_pattern: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Failed at or after.
    pub since: Option<OffsetDateTime>,
    /// Failed before.
    pub until: Option<OffsetDateTime>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Environment.
    pub environment: Option<String>,
}

impl Filter {
    /// Whether `view` passes every filter set. A time filter excludes
    /// messages without a `hookpost-failed-at`.
    pub fn matches(&self, view: &DeadLetterView) -> bool {
        self.endpoint.as_ref().is_none_or(|e| {
            *e == view.endpoint
                || (self.with_variants && crate::config::base_id(&view.endpoint) == e)
        }) && self
            .type_pattern
            .as_ref()
            .is_none_or(|p| topic_matches(p, &view.event_type))
            && self.reason.as_ref().is_none_or(|r| *r == view.reason)
            && self
                .since
                .is_none_or(|t| view.failed_at.is_some_and(|f| f >= t))
            && self
                .until
                .is_none_or(|t| view.failed_at.is_some_and(|f| f < t))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| view.tenant.as_ref() == Some(t))
            && self
                .environment
                .as_ref()
                .is_none_or(|e| view.environment.as_ref() == Some(e))
    }
}

pub use crate::history::parse_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_and_environment_come_from_the_headers_else_the_envelope_and_filter() {
        let mut letter =
            crate::contract::DeadLetter::new("shop~snd", crate::contract::Reason::Exhausted, 2);
        letter.tenant = Some("acme".into());
        letter.environment = Some("snd".into());
        let properties =
            BasicProperties::default().with_headers(letter.write(FieldTable::default()));
        let view = DeadLetterView::of(&properties, br#"{"tenant":"other"}"#, "hp");
        assert_eq!(view.tenant.as_deref(), Some("acme"));
        assert_eq!(view.environment.as_deref(), Some("snd"));
        // A message without the headers (dead-lettered by the broker) falls
        // back to the envelope.
        let bare = DeadLetterView::of(
            &BasicProperties::default(),
            br#"{"tenant":"globex","environment":"prd"}"#,
            "hp",
        );
        assert_eq!(bare.tenant.as_deref(), Some("globex"));
        let filter = |tenant: Option<&str>, environment: Option<&str>| Filter {
            tenant: tenant.map(str::to_owned),
            environment: environment.map(str::to_owned),
            ..Filter::default()
        };
        assert!(filter(Some("acme"), None).matches(&view));
        assert!(filter(Some("acme"), Some("snd")).matches(&view));
        assert!(!filter(Some("acme"), Some("prd")).matches(&view));
        assert!(!filter(Some("globex"), None).matches(&view));
        assert!(filter(None, None).matches(&view));
    }

    #[test]
    fn times() {
        let now = time::macros::datetime!(2026-11-29 12:00:00 UTC);
        assert_eq!(
            parse_time("2h", now).unwrap(),
            time::macros::datetime!(2026-11-29 10:00:00 UTC)
        );
        assert_eq!(
            parse_time("2026-11-01T00:00:00Z", now).unwrap(),
            time::macros::datetime!(2026-11-01 00:00:00 UTC)
        );
        for bad in ["yesterday", "2x", "h", "", "99999999999999999999d"] {
            assert!(
                parse_time(bad, now).unwrap_err().contains("RFC 3339"),
                "{bad}"
            );
        }
    }
}
