//! A dead letter as operators see it, and the filters of `hookpost-admin dlq`.

use common::contract::text;
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
        let letter = common::contract::DeadLetter::read(headers);
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
    /// Event type pattern (`order.*`, `#`).
    pub type_pattern: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Failed at or after.
    pub since: Option<OffsetDateTime>,
    /// Failed before.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Whether `view` passes every filter set. A time filter excludes
    /// messages without a `hookpost-failed-at`.
    pub fn matches(&self, view: &DeadLetterView) -> bool {
        self.endpoint.as_ref().is_none_or(|e| *e == view.endpoint)
            && self
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
    }
}

/// AMQP topic matching: `*` is one word, `#` zero or more.
///
/// Runs the pattern as an automaton over the event type's words, keeping the
/// set of pattern positions reachable so far: time is words × pattern words,
/// whatever the pattern (a backtracking matcher is exponential in the number
/// of `#`s on a key that does not match).
pub fn topic_matches(pattern: &str, event_type: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    // reach[i]: the first i pattern words can match the words read so far.
    let mut reach = vec![false; p.len() + 1];
    reach[0] = true;
    skip_hashes(&p, &mut reach);
    let words = event_type.split('.').filter(|_| !event_type.is_empty());
    for word in words {
        let mut next = vec![false; p.len() + 1];
        for (i, w) in p.iter().enumerate() {
            if !reach[i] {
                continue;
            }
            match *w {
                // `#` takes this word and may take more.
                "#" => next[i] = true,
                "*" => next[i + 1] = true,
                w if w == word => next[i + 1] = true,
                _ => {}
            }
        }
        skip_hashes(&p, &mut next);
        if !next.contains(&true) {
            return false;
        }
        reach = next;
    }
    reach[p.len()]
}

/// A `#` may match no word: a position before one reaches the next.
fn skip_hashes(p: &[&str], reach: &mut [bool]) {
    for (i, w) in p.iter().enumerate() {
        if reach[i] && *w == "#" {
            reach[i + 1] = true;
        }
    }
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-29T10:00:00Z`) or a
/// duration ago (`90s`, `30m`, `2h`, `7d`).
///
/// # Errors
/// A message showing both accepted forms.
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("order.*", "order.created"));
        assert!(!topic_matches("order.*", "order.created.v2"));
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("*.created", "user.created"));
        assert!(!topic_matches("order.created", "order.paid"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#.#", "a"));
        assert!(!topic_matches("*", ""));
        assert!(!topic_matches("a.#.z", "a.b.c"));
    }

    /// The former backtracking matcher, kept as the reference.
    fn reference(pattern: &str, event_type: &str) -> bool {
        fn go(p: &[&str], t: &[&str]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(&"#"), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
                (Some(&"*"), Some(_)) => go(&p[1..], &t[1..]),
                (Some(w), Some(v)) if w == v => go(&p[1..], &t[1..]),
                _ => false,
            }
        }
        let p: Vec<&str> = pattern.split('.').collect();
        let t: Vec<&str> = if event_type.is_empty() {
            Vec::new()
        } else {
            event_type.split('.').collect()
        };
        go(&p, &t)
    }

    proptest::proptest! {
        #[test]
        fn topic_matching_agrees_with_the_reference(
            pattern in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", "#"]), 1..7),
            words in proptest::collection::vec(proptest::sample::select(vec!["a", "b"]), 0..7),
        ) {
            let (pattern, event_type) = (pattern.join("."), words.join("."));
            proptest::prop_assert_eq!(
                topic_matches(&pattern, &event_type),
                reference(&pattern, &event_type),
                "{} against {:?}", pattern, event_type
            );
        }
    }

    /// With backtracking this took longer than any test timeout (exponential
    /// in the 20 `#`s); now it is 40 × 41 steps.
    #[test]
    fn many_hashes_on_a_key_that_does_not_match_finish_at_once() {
        let pattern = format!("{}x", "#.".repeat(20));
        let key = vec!["w"; 40].join(".");
        let started = std::time::Instant::now();
        assert!(!topic_matches(&pattern, &key));
        assert!(topic_matches(&pattern, &format!("{key}.x")));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
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
