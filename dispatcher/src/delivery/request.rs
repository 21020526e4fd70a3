//! Building a delivery request: the body (the envelope, or a batch of them)
//! and hookpost's headers, signed per Standard Webhooks.

use bytes::Bytes;
use common::config::Endpoint;
use common::config::SignatureScheme;
use common::signing::{hex_signature_header, signature_header};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// `user-agent` of every request.
pub const USER_AGENT: &str = concat!("hookpost/", env!("CARGO_PKG_VERSION"));

/// One event to send: its id and its envelope exactly as published.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The event id.
    pub id: &'a str,
    /// The envelope's JSON bytes (already validated).
    pub body: &'a [u8],
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The body.
    pub body: Bytes,
    /// `webhook-id`: the event id, or for a batch an id derived from its events' ids.
    pub webhook_id: String,
    /// Headers hookpost sets (the endpoint's own are added by the sender).
    pub headers: Vec<(&'static str, String)>,
}

/// Builds the request for `parts`, sent as attempt `attempt` at Unix time `now`.
///
/// With `batch_size = 1` the body is the bare envelope; otherwise
/// `{"events": [...], "batch_info": {"size", "timestamp", "source"}}` (even
/// when a batch holds a single event, so a receiver sees one shape).
pub fn build(
    endpoint: &Endpoint,
    parts: &[Part<'_>],
    attempt: u32,
    now: time::OffsetDateTime,
) -> Prepared {
    let (body, webhook_id) = if endpoint.batch_size == 1 && parts.len() == 1 {
        (
            Bytes::copy_from_slice(parts[0].body),
            parts[0].id.to_owned(),
        )
    } else {
        (batch_body(parts, now), batch_id(parts))
    };
    let timestamp = now.unix_timestamp();
    let secrets = endpoint.signing_secrets(now);
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("user-agent", USER_AGENT.to_owned()),
        ("webhook-id", webhook_id.clone()),
        (common::contract::header::ATTEMPT, attempt.to_string()),
    ];
    match endpoint.signature {
        SignatureScheme::Standard => {
            headers.push(("webhook-timestamp", timestamp.to_string()));
            if !secrets.is_empty() {
                headers.push((
                    "webhook-signature",
                    signature_header(&secrets, &webhook_id, timestamp, &body),
                ));
            }
        }
        SignatureScheme::Hex => {
            headers.push(("x-webhook-timestamp", timestamp.to_string()));
            if !secrets.is_empty() {
                headers.push((
                    "x-webhook-signature",
                    hex_signature_header(&secrets, timestamp, &body),
                ));
            }
        }
    }
    Prepared {
        body,
        webhook_id,
        headers,
    }
}

fn batch_body(parts: &[Part<'_>], now: time::OffsetDateTime) -> Bytes {
    let total: usize = parts.iter().map(|p| p.body.len() + 1).sum();
    let mut body = Vec::with_capacity(total + 128);
    body.extend_from_slice(b"{\"events\":[");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        // Each envelope was parsed as JSON before: embedding it verbatim keeps
        // the producer's exact bytes.
        body.extend_from_slice(part.body);
    }
    let timestamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let info =
        serde_json::json!({ "size": parts.len(), "timestamp": timestamp, "source": "hookpost" });
    body.extend_from_slice(b"],\"batch_info\":");
    body.extend_from_slice(info.to_string().as_bytes());
    body.push(b'}');
    Bytes::from(body)
}

/// `batch_` + the first 128 bits of SHA-256 over the events' ids, in order.
fn batch_id(parts: &[Part<'_>]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    let mut id = String::from("batch_");
    for byte in &digest[..16] {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Config;

    fn endpoint(batch_size: u32) -> Endpoint {
        let text = format!(
            "[[endpoints]]\nid = \"e\"\nurl = \"https://example.com/\"\nevents = [\"#\"]\nbatch_size = {batch_size}\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n"
        );
        Config::from_toml_str(&text, "t.toml".as_ref(), &[])
            .unwrap()
            .endpoints
            .remove(0)
    }

    fn header_of(prepared: &Prepared, name: &str) -> Option<String> {
        prepared
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    const NOW: time::OffsetDateTime = time::macros::datetime!(2026-11-29 12:00:00 UTC);

    #[test]
    fn single_event_is_the_bare_envelope() {
        let body = br#"{"id":"e1","type":"a","timestamp":"2026-11-29T12:00:00Z","data":null}"#;
        let prepared = build(&endpoint(1), &[Part { id: "e1", body }], 3, NOW);
        assert_eq!(&prepared.body[..], body);
        assert_eq!(prepared.webhook_id, "e1");
        let header = |name| header_of(&prepared, name);
        assert_eq!(header("hookpost-attempt").as_deref(), Some("3"));
        assert_eq!(header("webhook-timestamp").as_deref(), Some("1795953600"));
        let secret =
            common::signing::SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
                .unwrap();
        common::signing::verify(
            &[secret],
            "e1",
            1_795_953_600,
            body,
            &header("webhook-signature").unwrap(),
            1_795_953_600,
        )
        .unwrap();
    }

    #[test]
    fn hex_scheme_signs_timestamp_dot_body() {
        let text = "[[endpoints]]\nid = \"e\"\nurl = \"https://example.com/\"\nevents = [\"#\"]\nsignature = \"hex\"\nsecrets = [\"a-plain-secret-of-the-saas-kind\", \"second-secret-0123456789\"]\n";
        let endpoint = Config::from_toml_str(text, "t.toml".as_ref(), &[])
            .unwrap()
            .endpoints
            .remove(0);
        let body = br#"{"id":"e1","type":"a","timestamp":"2026-11-29T12:00:00Z","data":null}"#;
        let prepared = build(&endpoint, &[Part { id: "e1", body }], 1, NOW);
        let header = |name| header_of(&prepared, name);
        assert_eq!(header("x-webhook-timestamp").as_deref(), Some("1795953600"));
        assert_eq!(header("webhook-signature"), None);
        assert_eq!(header("webhook-timestamp"), None);
        let expected: Vec<String> = [
            "a-plain-secret-of-the-saas-kind",
            "second-secret-0123456789",
        ]
        .iter()
        .map(|key| {
            use hmac::{KeyInit, Mac};
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
            mac.update(b"1795953600.");
            mac.update(body);
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
        assert_eq!(header("x-webhook-signature"), Some(expected.join(",")));
    }

    #[test]
    fn batch_body_embeds_the_envelopes() {
        let a = br#"{"id":"a","type":"t","timestamp":"2026-11-29T12:00:00Z","data":1}"#;
        let b = br#"{"id":"b","type":"t","timestamp":"2026-11-29T12:00:00Z","data":2}"#;
        let prepared = build(
            &endpoint(10),
            &[Part { id: "a", body: a }, Part { id: "b", body: b }],
            1,
            NOW,
        );
        let value: serde_json::Value = serde_json::from_slice(&prepared.body).unwrap();
        assert_eq!(value["events"][1]["data"], 2);
        assert_eq!(value["batch_info"]["size"], 2);
        assert_eq!(value["batch_info"]["source"], "hookpost");
        assert_eq!(value["batch_info"]["timestamp"], "2026-11-29T12:00:00Z");
        assert!(prepared.webhook_id.starts_with("batch_") && prepared.webhook_id.len() == 38);
        let again = build(
            &endpoint(10),
            &[Part { id: "a", body: a }, Part { id: "b", body: b }],
            1,
            NOW,
        );
        assert_eq!(
            again.webhook_id, prepared.webhook_id,
            "derived deterministically"
        );
        let one = build(&endpoint(10), &[Part { id: "a", body: a }], 1, NOW);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&one.body).unwrap()["events"].is_array()
        );
    }
}
