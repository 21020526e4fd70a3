//! What an HTTP result means for a delivery (README, "Outcomes and retries"): a pure
//! function, so every status class is unit-tested here.

use std::time::Duration;

pub use common::contract::Reason;

/// What came back from one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// An HTTP status, with `Retry-After` if the endpoint sent one.
    Status {
        /// The status code.
        code: u16,
        /// `Retry-After`, parsed.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: timeout, connection refused or reset, TLS error, DNS.
    Failed {
        /// The error, for `hookpost-last-error`.
        error: String,
        /// Whether it was the timeout.
        timeout: bool,
    },
    /// The endpoint's address is not allowed (`http.allowed_networks`).
    Blocked {
        /// Why.
        error: String,
    },
}

/// The verdict on a request, before the retry budget is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// Worth another try, no sooner than `after` if set.
    Retry {
        /// The endpoint's `Retry-After`, capped.
        after: Option<Duration>,
    },
    /// Not worth another try.
    DeadLetter(Reason),
}

/// An endpoint's `retry_on_status`: codes to retry and codes never to retry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides<'a> {
    /// Retried although the built-in rules would dead-letter them.
    pub add: &'a [u16],
    /// Dead-lettered (`rejected`) although the built-in rules would retry them.
    pub remove: &'a [u16],
}

impl Overrides<'_> {
    /// No overrides: the built-in rules.
    pub const NONE: Overrides<'static> = Overrides {
        add: &[],
        remove: &[],
    };
}

/// Classifies a response. `Retry-After` counts on 429 and 503 (and on codes
/// in `overrides.add`) only, capped at `max_retry_after`.
pub fn classify(
    response: &Response,
    max_retry_after: Duration,
    overrides: &Overrides<'_>,
) -> Verdict {
    if let Response::Status { code, retry_after } = response {
        if overrides.add.contains(code) {
            return Verdict::Retry {
                after: retry_after.map(|d| d.min(max_retry_after)),
            };
        }
        if overrides.remove.contains(code) {
            return Verdict::DeadLetter(Reason::Rejected);
        }
    }
    match response {
        Response::Status {
            code: 200..=299, ..
        } => Verdict::Delivered,
        Response::Status {
            code: 429 | 503,
            retry_after,
        } => Verdict::Retry {
            after: retry_after.map(|d| d.min(max_retry_after)),
        },
        Response::Status {
            code: 408 | 425 | 500..=599,
            ..
        } => Verdict::Retry { after: None },
        Response::Status { code: 410, .. } => Verdict::DeadLetter(Reason::Gone),
        Response::Status { .. } => Verdict::DeadLetter(Reason::Rejected),
        Response::Failed { .. } => Verdict::Retry { after: None },
        Response::Blocked { .. } => Verdict::DeadLetter(Reason::Rejected),
    }
}

/// Parses `Retry-After`: delay-seconds, or an HTTP date (relative to `now`)
/// in any of the three formats a recipient must accept (RFC 9110 section
/// 5.6.7): IMF-fixdate, obsolete RFC 850 and ANSI C `asctime()`.
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = time::OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
    let delta = at - now;
    Some(if delta.is_positive() {
        delta.unsigned_abs()
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAP: Duration = Duration::from_secs(60);

    fn status(code: u16) -> Verdict {
        classify(
            &Response::Status {
                code,
                retry_after: None,
            },
            CAP,
            &Overrides::NONE,
        )
    }

    #[test]
    fn every_status_class() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(status(code), Verdict::Delivered, "{code}");
        }
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(status(code), Verdict::Retry { after: None }, "{code}");
        }
        assert_eq!(status(410), Verdict::DeadLetter(Reason::Gone));
        for code in [
            100, 301, 302, 307, 308, 400, 401, 403, 404, 405, 409, 413, 422, 451,
        ] {
            assert_eq!(
                status(code),
                Verdict::DeadLetter(Reason::Rejected),
                "{code}"
            );
        }
        let timeout = Response::Failed {
            error: "timed out".into(),
            timeout: true,
        };
        assert_eq!(
            classify(&timeout, CAP, &Overrides::NONE),
            Verdict::Retry { after: None }
        );
        let blocked = Response::Blocked {
            error: "private".into(),
        };
        assert_eq!(
            classify(&blocked, CAP, &Overrides::NONE),
            Verdict::DeadLetter(Reason::Rejected)
        );
    }

    #[test]
    fn retry_after_on_429_and_503_only_and_capped() {
        let with = |code, secs| {
            classify(
                &Response::Status {
                    code,
                    retry_after: Some(Duration::from_secs(secs)),
                },
                CAP,
                &Overrides::NONE,
            )
        };
        assert_eq!(
            with(429, 5),
            Verdict::Retry {
                after: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(with(503, 3600), Verdict::Retry { after: Some(CAP) });
        assert_eq!(with(500, 5), Verdict::Retry { after: None });
    }

    #[test]
    fn retry_after_formats() {
        let now = time::macros::datetime!(2026-11-29 12:00:00 UTC);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Obsolete RFC 850 (two-digit year) and ANSI C asctime (space-padded day).
        assert_eq!(
            parse_retry_after("Sunday, 29-Nov-26 12:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun Nov 29 12:00:05 2026", now),
            Some(Duration::from_secs(5))
        );
        let early = time::macros::datetime!(2026-11-01 12:00:00 UTC);
        assert_eq!(
            parse_retry_after("Sun Nov  1 12:00:07 2026", early),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("Sun, 29 Nov 2026 12:00:30", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn overrides_add_and_remove_retryable_codes() {
        let rules = Overrides {
            add: &[409, 410],
            remove: &[500, 503],
        };
        let of = |code| {
            classify(
                &Response::Status {
                    code,
                    retry_after: Some(Duration::from_secs(5)),
                },
                CAP,
                &rules,
            )
        };
        assert_eq!(
            of(409),
            Verdict::Retry {
                after: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            of(410),
            Verdict::Retry {
                after: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(of(500), Verdict::DeadLetter(Reason::Rejected));
        assert_eq!(of(503), Verdict::DeadLetter(Reason::Rejected));
        assert_eq!(of(502), Verdict::Retry { after: None });
        assert_eq!(of(404), Verdict::DeadLetter(Reason::Rejected));
        assert_eq!(of(200), Verdict::Delivered);
    }

    proptest! {
        #[test]
        fn retry_after_never_panics(s in "\\PC{0,40}") {
            let _ = parse_retry_after(&s, time::OffsetDateTime::UNIX_EPOCH);
        }

        #[test]
        fn seconds_round_trip(n in 0u64..10_000_000) {
            prop_assert_eq!(parse_retry_after(&n.to_string(), time::OffsetDateTime::UNIX_EPOCH), Some(Duration::from_secs(n)));
        }
    }
}
