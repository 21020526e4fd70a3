//! Topic routing: how the broker matches an event's routing key against an
//! endpoint's binding patterns (`*` one word, `#` zero or more), so tools
//! that filter by pattern (the admin's `dlq --type`) agree with the broker.

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
}
