//! Log setup shared by the binaries: `tracing` to standard error, filtered by
//! `HOOKPOST_LOG` (for example `info`, `debug`, `dispatcher=debug`).

/// Installs the subscriber; `default` is the filter when `HOOKPOST_LOG` is
/// unset. Does nothing when the process has one already (tests call it once
/// per test).
pub fn init(default: &str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOKPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(ExpectedAnswers)
        .with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Hides lapin's own ERROR line for a channel the broker closed with
/// 404 NOT_FOUND in answer to a queue.declare. hookpost asks "does this queue or stream exist yet?" with a
/// passive declare, and the broker answers "no" by closing the channel:
/// an expected answer, which the caller handles (and logs in context when
/// it matters), not an error. The same for 406 PRECONDITION_FAILED on a
/// queue.declare: the control stream's retention check asks "was it
/// declared with these arguments?" that way, and every other declare turns
/// a 406 into an error naming the queue (`TopologyError::Conflict`).
#[derive(Debug, Clone, Copy)]
pub struct ExpectedAnswers;

impl<S> tracing_subscriber::layer::Filter<S> for ExpectedAnswers {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !is_expected_answer(event)
    }
}

fn is_expected_answer(event: &tracing::Event<'_>) -> bool {
    let meta = event.metadata();
    if meta.target() != "lapin::channel" || *meta.level() != tracing::Level::ERROR {
        return false;
    }
    struct Method(bool);
    impl tracing::field::Visit for Method {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "method" {
                // queue.declare (class 50, method 10): the passive check.
                let method = format!("{value:?}");
                self.0 = (method.contains("reply_code: 404,")
                    || method.contains("reply_code: 406,"))
                    && method.contains("class_id: 50, method_id: 10");
            }
        }
    }
    let mut method = Method(false);
    event.record(&mut method);
    method.0
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

    /// The throttle for a failure that repeats while a dependency is away:
    /// 10 s, doubling to 5 minutes.
    pub fn for_failures() -> Self {
        Self::new(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(300),
        )
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
