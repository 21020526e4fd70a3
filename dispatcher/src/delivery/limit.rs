//! Per-endpoint request rate limit: a token bucket refilled at `per_s`
//! tokens a second, holding at most `burst`. A request waits for a token
//! before it is sent, so waiting costs no retry attempt: the deliveries stay
//! prefetched and unacknowledged meanwhile.

use common::config::RateLimit;
use std::time::Duration;
use tokio::time::Instant;

/// A token bucket.
#[derive(Debug)]
pub struct Limiter {
    per_s: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            per_s: f64::from(limit.per_s),
            burst: f64::from(limit.burst),
            tokens: f64::from(limit.burst),
            at: Instant::now(),
        }
    }

    /// How long until a token is free at `now` (zero: take it now).
    fn wait_at(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_s)
        }
    }

    /// Waits for a token and takes it.
    pub async fn acquire(&mut self) {
        loop {
            let wait = self.wait_at(Instant::now());
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// The prefetch to use under a rate limit: at most what the endpoint can be
/// sent in ten minutes, so no delivery waits in this process longer than the
/// broker's consumer timeout (30 minutes by default) allows.
pub fn capped_prefetch(prefetch: u16, limit: Option<RateLimit>, batch_size: u32) -> u16 {
    let Some(limit) = limit else {
        return prefetch;
    };
    let ten_minutes = u64::from(limit.per_s)
        .saturating_mul(u64::from(batch_size))
        .saturating_mul(600)
        .max(u64::from(batch_size));
    u16::try_from(ten_minutes).map_or(prefetch, |cap| prefetch.min(cap))
}

/// The prefetch of a consumer on a shared channel: at most four times what
/// the endpoint works on at once (`max_in_flight` batches), at least one batch.
///
/// A shared channel acks one delivery at a time, and RabbitMQ finds the
/// delivery an ack names by walking the channel's unacked deliveries from
/// the oldest. A stuck endpoint's prefetched messages are the oldest there:
/// with a prefetch of 1,000 they made a neighbour's every ack walk past
/// 1,000 entries and cut its rate by a third (BENCHMARKS.md, noisy
/// neighbour). Capped, a stuck neighbour holds a few dozen.
pub fn shared_prefetch(prefetch: u16, max_in_flight: u32, batch_size: u32) -> u16 {
    let working = u64::from(max_in_flight.max(1)).saturating_mul(u64::from(batch_size.max(1)));
    let cap = working.saturating_mul(4).max(u64::from(batch_size.max(1)));
    u16::try_from(cap).map_or(prefetch, |cap| prefetch.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_consumer_prefetches_four_times_what_it_works_on() {
        assert_eq!(shared_prefetch(1000, 16, 1), 64);
        assert_eq!(shared_prefetch(1000, 2, 100), 800);
        assert_eq!(shared_prefetch(200, 16, 100), 200, "never raised");
        assert_eq!(shared_prefetch(1000, 1, 1), 4);
        assert_eq!(shared_prefetch(65535, u32::MAX, 1000), 65535, "no overflow");
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let mut limiter = Limiter::new(RateLimit {
            per_s: 10,
            burst: 5,
        });
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst passes at once");
        for _ in 0..20 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2010),
            "20 more at 10/s take 2 s, took {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_up_to_the_burst_only() {
        let mut limiter = Limiter::new(RateLimit { per_s: 2, burst: 3 });
        for _ in 0..3 {
            limiter.acquire().await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[test]
    fn prefetch_is_capped_to_ten_minutes_of_sending() {
        let limit = Some(RateLimit { per_s: 1, burst: 1 });
        assert_eq!(capped_prefetch(200, limit, 1), 200);
        assert_eq!(capped_prefetch(u16::MAX, limit, 1), 600);
        assert_eq!(capped_prefetch(u16::MAX, limit, 10), 6000);
        assert_eq!(capped_prefetch(u16::MAX, None, 1), u16::MAX);
    }
}
