//! Topic routing: the routing keys events are published with, the binding
//! keys endpoints are bound with, and how the broker matches one against the
//! other (`*` one word, `#` zero or more), so tools that filter by pattern
//! (the admin's `dlq --type`) agree with the broker.
//!
//! # Scopes
//! An event may carry a `tenant` (the customer) and an `environment` (`prd`,
//! `snd`). The broker, not the dispatcher, keeps them apart:
//! - an event with neither goes to `<prefix>.events` with its type as the
//!   routing key, as before tenants existed;
//! - an event with either goes to `<prefix>.events.scoped` with the key
//!   `t=<tenant>.e=<environment>.<type>` (an absent value is empty:
//!   `t=.e=snd.order.created`).
//!
//! `=` never appears in a type or a pattern, so the two scope words cannot be
//! confused with the type's words, and a pattern can never reach across them
//! (see [`binding_keys`]).

/// Longest tenant or environment name.
pub const MAX_SCOPE_LEN: usize = 64;
/// Longest AMQP routing key (a short string).
pub const MAX_KEY_LEN: usize = 255;

/// Whether `name` is a valid tenant or environment: 1 to 64 of `[a-z0-9_-]`.
pub fn is_valid_scope(name: &str) -> bool {
    (1..=MAX_SCOPE_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The exchange an event or a binding belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// `<prefix>.events`: events without a tenant or environment.
    Events,
    /// `<prefix>.events.scoped`: events with a tenant, an environment or both.
    Scoped,
}

impl Exchange {
    /// The exchange a binding key is for: scoped keys are the ones with `=`.
    pub fn of_key(key: &str) -> Self {
        if key.contains('=') {
            Self::Scoped
        } else {
            Self::Events
        }
    }
}

/// The scope words of a key: `t=<tenant>.e=<environment>`.
fn scope_words(tenant: Option<&str>, environment: Option<&str>) -> String {
    format!(
        "t={}.e={}",
        tenant.unwrap_or_default(),
        environment.unwrap_or_default()
    )
}

/// Where an event of `event_type` in this scope is published: the exchange
/// and the routing key.
pub fn route(
    tenant: Option<&str>,
    environment: Option<&str>,
    event_type: &str,
) -> (Exchange, String) {
    if tenant.is_none() && environment.is_none() {
        return (Exchange::Events, event_type.to_owned());
    }
    (
        Exchange::Scoped,
        format!("{}.{event_type}", scope_words(tenant, environment)),
    )
}

/// The keys an endpoint's queue is bound with, for its `patterns`:
/// - no tenant, no environment (a global endpoint's base settings): each
///   pattern on `<prefix>.events` (events without a scope) and
///   `*.e=.<pattern>` on the scoped exchange (every tenant's events without
///   an environment);
/// - tenant `T`: `t=T.e=.<pattern>` (only `T`'s events);
/// - environment `E` (a variant): `*.e=E.<pattern>` without a tenant,
///   `t=T.e=E.<pattern>` with one;
/// - and a pattern whose first word is `hookpost` also as
///   `hookpost.<scope>.<pattern>`: hookpost's operational events
///   ([`OPERATIONAL_WORD`]) reach only endpoints that name them, never a
///   catch-all `#`.
///
/// Which exchange a key is for: [`Exchange::of_key`].
pub fn binding_keys(
    tenant: Option<&str>,
    environment: Option<&str>,
    patterns: &[String],
) -> Vec<String> {
    let scope = match tenant {
        Some(t) => format!("t={t}.e={}", environment.unwrap_or_default()),
        None => format!("*.e={}", environment.unwrap_or_default()),
    };
    let mut keys = Vec::with_capacity(patterns.len() * 2);
    if tenant.is_none() && environment.is_none() {
        keys.extend(patterns.iter().cloned());
    }
    keys.extend(patterns.iter().map(|p| format!("{scope}.{p}")));
    keys.extend(
        patterns
            .iter()
            .filter(|p| p.split('.').next() == Some(OPERATIONAL_WORD))
            .map(|p| format!("{OPERATIONAL_WORD}.{scope}.{p}")),
    );
    keys
}

/// The first word of hookpost's operational event types, and of their
/// routing keys on the scoped exchange: `hookpost.t=<tenant>.e=.<type>`.
/// A scoped binding starts with the scope's `t=` or `*` word followed by
/// `e=`, so none of the ordinary ones matches such a key.
pub const OPERATIONAL_WORD: &str = "hookpost";

/// The routing key of an operational event of `event_type` for an endpoint
/// of `tenant` (on the scoped exchange).
pub fn operational_key(tenant: Option<&str>, event_type: &str) -> String {
    format!(
        "{OPERATIONAL_WORD}.{}.{event_type}",
        scope_words(tenant, None)
    )
}

/// Whether an endpoint of this tenant and environment may receive an event
/// of that scope: the rule the bindings implement, checked again at delivery
/// (an AMQP client can publish a key that disagrees with its envelope).
pub fn accepts(
    endpoint: (Option<&str>, Option<&str>),
    event: (Option<&str>, Option<&str>),
) -> bool {
    let (tenant, environment) = endpoint;
    tenant.is_none_or(|t| event.0 == Some(t)) && environment == event.1
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

    fn scope(i: u8) -> Option<&'static str> {
        [None, Some("a"), Some("b")][usize::from(i % 3)]
    }

    proptest::proptest! {
        /// The broker's matching of an event's key against an endpoint's
        /// binding keys is exactly the scope rule and the pattern.
        #[test]
        fn bindings_route_exactly_the_scope_rule(
            (ep_t, ep_e, ev_t, ev_e) in (0u8..3, 0u8..3, 0u8..3, 0u8..3),
            pattern in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "t", "e", "*", "#"]), 1..5),
            words in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "t", "e"]), 1..5),
        ) {
            let (pattern, event_type) = (pattern.join("."), words.join("."));
            let endpoint = (scope(ep_t), scope(ep_e));
            let event = (scope(ev_t), scope(ev_e));
            let (exchange, key) = route(event.0, event.1, &event_type);
            let routed = binding_keys(endpoint.0, endpoint.1, std::slice::from_ref(&pattern))
                .iter()
                .any(|k| Exchange::of_key(k) == exchange && topic_matches(k, &key));
            proptest::prop_assert_eq!(
                routed,
                accepts(endpoint, event) && topic_matches(&pattern, &event_type),
                "{:?} {:?} {} {}", endpoint, event, pattern, key
            );
        }
    }

    #[test]
    fn keys_follow_the_documented_scheme() {
        assert_eq!(
            route(None, None, "order.created"),
            (Exchange::Events, "order.created".into())
        );
        assert_eq!(
            route(Some("acme"), None, "order.created").1,
            "t=acme.e=.order.created"
        );
        assert_eq!(route(None, Some("snd"), "x").1, "t=.e=snd.x");
        let p = ["order.*".to_owned()];
        assert_eq!(binding_keys(None, None, &p), ["order.*", "*.e=.order.*"]);
        assert_eq!(
            binding_keys(Some("acme"), Some("prd"), &p),
            ["t=acme.e=prd.order.*"]
        );
        assert_eq!(binding_keys(None, Some("snd"), &p), ["*.e=snd.order.*"]);
    }

    #[test]
    fn scope_names() {
        assert!(is_valid_scope("acme_co-1"));
        assert!(is_valid_scope(&"a".repeat(64)));
        assert!(!is_valid_scope(&"a".repeat(65)));
        for bad in ["", "Acme", "a.b", "a=b", "a b", "é", "*", "#"] {
            assert!(!is_valid_scope(bad), "{bad:?}");
        }
    }
}
