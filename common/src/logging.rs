//! Log setup shared by the binaries: `tracing` to standard error, filtered by
//! `HOOKPOST_LOG` (for example `info`, `debug`, `dispatcher=debug`).

/// Installs the subscriber; `default` is the filter when `HOOKPOST_LOG` is unset.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Logs a failure that repeats with backoff: the first occurrence, then at
/// most once per interval, the interval doubling from `first` up to `max`,
/// each time with the number of occurrences since the last line. A quiet
/// spell as long as `max` starts over.
#[derive(Debug, Clone)]
pub struct Throttle {
    first: std::time::Duration,
    max: std::time::Duration,
    interval: std::time::Duration,
    last: Option<tokio::time::Instant>,
    seen: u64,
}

impl Throttle {
    /// A throttle whose interval grows from `first` to `max`.
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Self {
        Self {
            first,
            max,
            interval: first,
            last: None,
            seen: 0,
        }
    }

    /// Records one occurrence; `Some(n)` when it should be logged now, with
    /// the `n` occurrences this line stands for (this one included).
    pub fn hit(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        self.seen += 1;
        let due = match self.last {
            None => true,
            Some(last) if now.duration_since(last) >= self.max + self.interval => {
                // Quiet for a long time: a new episode.
                self.interval = self.first;
                true
            }
            Some(last) => now.duration_since(last) >= self.interval,
        };
        if !due {
            return None;
        }
        if self.last.is_some() {
            self.interval = (self.interval * 2).min(self.max);
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.seen))
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn repeats_are_logged_with_backoff_and_a_count() {
        let mut t = Throttle::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut lines = Vec::new();
        // One failure every 100 ms for 20 s: 200 failures.
        for i in 0..200u64 {
            if let Some(n) = t.hit() {
                lines.push((i, n));
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // At 0 s, then after 1, 2, 4, 8, 8 s: the count covers every failure.
        assert_eq!(
            lines.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 10, 30, 70, 150]
        );
        assert_eq!(lines.iter().map(|(_, n)| n).sum::<u64>(), 151);
        assert_eq!(lines[1].1, 10);
        // After a quiet spell the next failure is logged at once.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(t.hit(), Some(50));
    }
}
