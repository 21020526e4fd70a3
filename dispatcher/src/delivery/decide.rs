//! What happens to one event after its request was classified: a pure
//! function of the verdict ([`crate::delivery::classify`]), the event's attempt number
//! and the endpoint's retry policy, kept apart from the classification (an
//! HTTP result means the same for every endpoint; what to do about it is the
//! endpoint's policy) and from the routing that carries it out
//! ([`crate::delivery::route`]).

use crate::delivery::classify::{Reason, Verdict};
use common::config::OnExhausted;
use common::retry::RetryPolicy;

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It was delivered: ack it.
    Ack,
    /// Try again after the wait tier `tier_ms`, as attempt `next_attempt`.
    Retry {
        /// The wait queue's delay.
        tier_ms: u64,
        /// The attempt number the retry carries (`hookpost-attempt`).
        next_attempt: u32,
    },
    /// Park it in the dead-letter queue.
    DeadLetter(Reason),
    /// Discard it (retries used up with `on_exhausted = "drop"`).
    Drop,
}

/// The action for an event on its `attempt` (1 = first try) after `verdict`.
/// Retry `n` is attempt `n + 1`: an event whose attempt is past
/// `max_retries` has used its retries.
pub fn decide(
    verdict: &Verdict,
    attempt: u32,
    retry: &RetryPolicy,
    on_exhausted: OnExhausted,
) -> Action {
    match verdict {
        Verdict::Delivered => Action::Ack,
        Verdict::DeadLetter(reason) => Action::DeadLetter(*reason),
        Verdict::Retry { .. } if attempt > retry.max_retries => match on_exhausted {
            OnExhausted::DeadLetter => Action::DeadLetter(Reason::Exhausted),
            OnExhausted::Drop => Action::Drop,
        },
        Verdict::Retry { after } => Action::Retry {
            tier_ms: retry.tier_for(attempt, *after),
            next_attempt: attempt.saturating_add(1),
        },
    }
}

/// Whether the verdict pauses the endpoint (410 Gone: "disable on 410").
pub fn pauses(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::DeadLetter(Reason::Gone))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            retry_delay_ms: 1_000,
            max_retry_delay_ms: 8_000,
        }
    }

    const RETRY: Verdict = Verdict::Retry { after: None };

    #[test]
    fn delivered_is_acked_on_any_attempt_and_policy() {
        for attempt in [1, 2, 6, 100] {
            for on_exhausted in [OnExhausted::DeadLetter, OnExhausted::Drop] {
                for max in [0, 1, 5] {
                    assert_eq!(
                        decide(&Verdict::Delivered, attempt, &policy(max), on_exhausted),
                        Action::Ack
                    );
                }
            }
        }
    }

    #[test]
    fn dead_letter_verdicts_keep_their_reason_whatever_the_attempt() {
        for reason in [
            Reason::Rejected,
            Reason::Gone,
            Reason::Malformed,
            Reason::TransformError,
        ] {
            for on_exhausted in [OnExhausted::DeadLetter, OnExhausted::Drop] {
                for attempt in [1, 3, 50] {
                    assert_eq!(
                        decide(
                            &Verdict::DeadLetter(reason),
                            attempt,
                            &policy(3),
                            on_exhausted
                        ),
                        Action::DeadLetter(reason),
                        "{reason:?} on attempt {attempt}: never dropped, never retried"
                    );
                }
            }
        }
    }

    #[test]
    fn retries_double_up_to_the_cap_then_exhaust() {
        let p = policy(5);
        // Attempts 1..=5 retry after 1, 2, 4, 8, 8 s as attempts 2..=6.
        let tiers: Vec<Action> = (1..=5)
            .map(|a| decide(&RETRY, a, &p, OnExhausted::DeadLetter))
            .collect();
        assert_eq!(
            tiers,
            [1_000, 2_000, 4_000, 8_000, 8_000]
                .iter()
                .zip(2..)
                .map(|(&tier_ms, next_attempt)| Action::Retry {
                    tier_ms,
                    next_attempt
                })
                .collect::<Vec<_>>()
        );
        // Attempt 6 has used its 5 retries.
        assert_eq!(
            decide(&RETRY, 6, &p, OnExhausted::DeadLetter),
            Action::DeadLetter(Reason::Exhausted)
        );
        assert_eq!(decide(&RETRY, 6, &p, OnExhausted::Drop), Action::Drop);
        // A redelivered message with a later attempt number too.
        assert_eq!(decide(&RETRY, 60, &p, OnExhausted::Drop), Action::Drop);
    }

    #[test]
    fn no_retries_means_the_first_failure_exhausts() {
        assert_eq!(
            decide(&RETRY, 1, &policy(0), OnExhausted::DeadLetter),
            Action::DeadLetter(Reason::Exhausted)
        );
    }

    #[test]
    fn retry_after_moves_to_a_later_tier_never_an_earlier_one() {
        let p = policy(5);
        let later = Verdict::Retry {
            after: Some(Duration::from_millis(3_000)),
        };
        assert_eq!(
            decide(&later, 1, &p, OnExhausted::DeadLetter),
            Action::Retry {
                tier_ms: 4_000,
                next_attempt: 2
            }
        );
        let sooner = Verdict::Retry {
            after: Some(Duration::from_millis(10)),
        };
        assert_eq!(
            decide(&sooner, 3, &p, OnExhausted::DeadLetter),
            Action::Retry {
                tier_ms: 4_000,
                next_attempt: 4
            }
        );
    }

    #[test]
    fn only_gone_pauses() {
        assert!(pauses(&Verdict::DeadLetter(Reason::Gone)));
        for v in [
            Verdict::Delivered,
            RETRY,
            Verdict::DeadLetter(Reason::Rejected),
            Verdict::DeadLetter(Reason::Exhausted),
        ] {
            assert!(!pauses(&v), "{v:?}");
        }
    }
}
