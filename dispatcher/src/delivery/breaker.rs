//! Per-endpoint circuit breaker. After `failures` consecutive failed requests
//! (no answer, timeout, 5xx, 429, or another retryable status) it opens: the
//! dispatcher stops taking the endpoint's messages, which wait in its queue
//! with their attempts untouched. After `cooldown` it goes half-open and sends
//! one delivery as a probe: success closes it, failure opens it again.
//!
//! Non-retryable answers (4xx) are answers: they neither trip nor reset it.

use common::config::BreakerPolicy;
use std::sync::Mutex;
use tokio::time::Instant;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Delivering.
    Closed,
    /// Suspended until then.
    Open {
        /// End of the cooldown.
        until: Instant,
    },
    /// Cooldown over: one probe delivery decides.
    HalfOpen,
}

impl State {
    /// The `hookpost_circuit_breaker_state` value.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open { .. } => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// One endpoint's breaker, shared by its batch tasks.
#[derive(Debug)]
pub struct Breaker {
    policy: Option<BreakerPolicy>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    consecutive: u32,
    state: State,
}

impl Breaker {
    /// A closed breaker; `None` never opens.
    pub fn new(policy: Option<BreakerPolicy>) -> Self {
        Self {
            policy,
            inner: Mutex::new(Inner {
                consecutive: 0,
                state: State::Closed,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// A request succeeded. Returns the new state if it changed: only a
    /// half-open breaker closes (a late success of a request sent before the
    /// breaker opened does not cut the cooldown short).
    pub fn success(&self) -> Option<State> {
        let mut inner = self.lock();
        inner.consecutive = 0;
        if inner.state != State::HalfOpen {
            return None;
        }
        inner.state = State::Closed;
        Some(State::Closed)
    }

    /// A request failed at `now`. Returns the new state if it changed (opened).
    pub fn failure(&self, now: Instant) -> Option<State> {
        let policy = self.policy?;
        let mut inner = self.lock();
        inner.consecutive = inner.consecutive.saturating_add(1);
        let trips = match inner.state {
            State::Closed => inner.consecutive >= policy.failures,
            State::HalfOpen => true,
            State::Open { .. } => false,
        };
        if !trips {
            return None;
        }
        inner.state = State::Open {
            until: now + policy.cooldown,
        };
        Some(inner.state)
    }

    /// Moves an open breaker whose cooldown is over to half-open.
    pub fn cooled_down(&self, now: Instant) -> Option<State> {
        let mut inner = self.lock();
        match inner.state {
            State::Open { until } if now >= until => {
                inner.state = State::HalfOpen;
                Some(State::HalfOpen)
            }
            _ => None,
        }
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.lock().consecutive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker() -> Breaker {
        Breaker::new(Some(BreakerPolicy {
            failures: 3,
            cooldown: Duration::from_secs(30),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures() {
        let b = breaker();
        let now = Instant::now();
        assert_eq!(b.failure(now), None);
        assert_eq!(b.failure(now), None);
        assert_eq!(b.success(), None, "a success resets the count");
        assert_eq!(b.failure(now), None);
        assert_eq!(b.failure(now), None);
        assert_eq!(
            b.failure(now),
            Some(State::Open {
                until: now + Duration::from_secs(30)
            })
        );
        assert_eq!(b.failure(now), None, "already open");
        assert_eq!(
            b.success(),
            None,
            "a late success does not close an open breaker"
        );
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_closes_or_reopens() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            b.failure(now);
        }
        assert_eq!(b.cooled_down(now + Duration::from_secs(29)), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.cooled_down(Instant::now()), Some(State::HalfOpen));
        let later = Instant::now();
        assert_eq!(
            b.failure(later),
            Some(State::Open {
                until: later + Duration::from_secs(30)
            }),
            "a failed probe reopens at once"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        b.cooled_down(Instant::now());
        assert_eq!(b.success(), Some(State::Closed));
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_policy_it_never_opens() {
        let b = Breaker::new(None);
        for _ in 0..1000 {
            assert_eq!(b.failure(Instant::now()), None);
        }
        assert_eq!(b.state(), State::Closed);
    }
}
