//! The retry schedule: retry `n` (1-based) waits
//! `min(retry_delay_ms * 2^(n-1), max_retry_delay_ms)` in a wait queue.
//!
//! Delays are quantised to the schedule's own values ("tiers"), one wait queue
//! each, because a queue has a single TTL (README, "Outcomes and retries"). A `Retry-After` asked by
//! an endpoint is rounded up to the nearest tier, so the number of wait queues
//! stays bounded whatever endpoints answer.

use std::time::Duration;

/// One endpoint's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before retry 1, in ms.
    pub retry_delay_ms: u64,
    /// Cap of the delay, in ms.
    pub max_retry_delay_ms: u64,
}

impl RetryPolicy {
    /// Delay in ms before retry `n` (1-based; 0 is treated as 1).
    pub fn delay_ms(&self, n: u32) -> u64 {
        let exponent = n.saturating_sub(1).min(63);
        let factor = 1u64.checked_shl(exponent).unwrap_or(u64::MAX);
        self.retry_delay_ms
            .saturating_mul(factor)
            .min(self.max_retry_delay_ms)
    }

    /// Every distinct delay the schedule uses, ascending: the wait tiers to declare.
    pub fn tiers_ms(&self) -> Vec<u64> {
        let mut tiers: Vec<u64> = (1..=self.max_retries.max(1))
            .map(|n| self.delay_ms(n))
            .collect();
        tiers.dedup();
        tiers
    }

    /// The tier to wait in before retry `n`, lengthened to honour `retry_after`
    /// (rounded up to the next tier, at most the longest tier).
    pub fn tier_for(&self, n: u32, retry_after: Option<Duration>) -> u64 {
        let base = self.delay_ms(n);
        let Some(wanted) = retry_after else {
            return base;
        };
        let wanted = u64::try_from(wanted.as_millis()).unwrap_or(u64::MAX);
        if wanted <= base {
            return base;
        }
        let tiers = self.tiers_ms();
        tiers
            .iter()
            .copied()
            .find(|&t| t >= wanted)
            .or_else(|| tiers.last().copied())
            .unwrap_or(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 5,
        retry_delay_ms: 1000,
        max_retry_delay_ms: 5000,
    };

    #[test]
    fn doubles_then_caps() {
        let delays: Vec<u64> = (1..=5).map(|n| POLICY.delay_ms(n)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 5000, 5000]);
        assert_eq!(POLICY.tiers_ms(), [1000, 2000, 4000, 5000]);
        assert_eq!(POLICY.delay_ms(0), 1000);
    }

    #[test]
    fn retry_after_rounds_up_to_a_tier() {
        assert_eq!(POLICY.tier_for(1, Some(Duration::from_millis(1500))), 2000);
        assert_eq!(POLICY.tier_for(3, Some(Duration::from_millis(10))), 4000);
        assert_eq!(POLICY.tier_for(1, Some(Duration::from_secs(3600))), 5000);
        assert_eq!(POLICY.tier_for(2, None), 2000);
    }

    proptest! {
        #[test]
        fn schedule_is_monotonic_and_bounded(delay in 1u64..100_000, cap in 1u64..10_000_000, retries in 0u32..100) {
            let p = RetryPolicy { max_retries: retries, retry_delay_ms: delay, max_retry_delay_ms: cap.max(delay) };
            let mut last = 0;
            for n in 1..=retries {
                let d = p.delay_ms(n);
                prop_assert!(d >= last && d <= p.max_retry_delay_ms && d >= p.retry_delay_ms.min(p.max_retry_delay_ms));
                prop_assert!(p.tiers_ms().contains(&d));
                last = d;
            }
            prop_assert!(p.tiers_ms().len() <= 64);
        }
    }
}
