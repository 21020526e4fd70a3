//! A publish call's deadline: `amqp.publish_timeout_ms` after the broker
//! last made progress for the call, not after the call started.
//!
//! The deadline starts at the call's start plus the timeout and moves to
//! "now plus a timeout and a quarter" each time the lane reports progress
//! (an event of the call confirmed, told sixteen times per timeout at most,
//! or four times while the call waits its turn, see
//! [`super::lane::Ticket::progress`]: a report comes up to a quarter
//! timeout after the confirm it tells of). So a long `publish_many` that
//! the broker confirms steadily never times out, while a broker that stops
//! confirming, or stays away while the publisher reconnects (a lost channel
//! is not progress), fails the call between one and one and a quarter
//! timeouts after its last confirm, never sooner.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How many times per timeout at most the lane tells a call waiting its
/// turn of progress (a call in flight hears of its own four times as
/// often; `book.rs`). A report moves the deadline one timeout and one such
/// interval ahead, so a call never fails sooner than one timeout after its
/// last confirm, and at most a quarter timeout later.
pub(super) const REPORTS_PER_TIMEOUT: u32 = 4;

/// The deadline of one publish call.
#[derive(Debug)]
pub(super) struct Watchdog {
    timeout: Duration,
    deadline: Instant,
}

impl Watchdog {
    /// A deadline `timeout` from now.
    pub(super) fn start(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// When the call fails unless the broker makes progress before.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the deadline has passed.
    pub(super) fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Waits for `answer`, moving the deadline a timeout and a report
    /// interval past each report on `progress` (the report may come up to an
    /// interval after the confirm it tells of); `None` when the deadline
    /// passes first. A closed `progress`
    /// (the lane let go of the job) only stops the moves.
    pub(super) async fn wait<T>(
        &mut self,
        answer: impl Future<Output = T>,
        progress: &mut watch::Receiver<usize>,
    ) -> Option<T> {
        tokio::pin!(answer);
        let mut open = true;
        loop {
            // Biased: an answer or a progress report that came in before the
            // deadline wins over a deadline seen at the same wake.
            tokio::select! {
                biased;
                done = &mut answer => return Some(done),
                changed = progress.changed(), if open => match changed {
                    Ok(()) => {
                        self.deadline =
                            Instant::now() + self.timeout + self.timeout / REPORTS_PER_TIMEOUT;
                    }
                    Err(_) => open = false,
                },
                () = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_millis(200);

    /// Reports progress every `every`, `times` times, then answers after
    /// one more `every`.
    fn steady(every: Duration, times: usize) -> (oneshot::Receiver<()>, watch::Receiver<usize>) {
        let (answer, answered) = oneshot::channel();
        let (progress, progressed) = watch::channel(0);
        tokio::spawn(async move {
            for i in 1..=times {
                tokio::time::sleep(every).await;
                progress.send_replace(i);
            }
            tokio::time::sleep(every).await;
            let _ = answer.send(());
            // The lane drops the job once answered.
            drop(progress);
        });
        (answered, progressed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_call_with_steady_progress_succeeds() {
        let started = Instant::now();
        let mut watchdog = Watchdog::start(TIMEOUT);
        let (answer, mut progress) = steady(TIMEOUT / 2, 100);
        let done = watchdog.wait(answer, &mut progress).await;
        assert!(done.is_some(), "answered");
        assert!(started.elapsed() >= 50 * TIMEOUT, "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn no_progress_fails_a_timeout_and_a_quarter_after_the_last_report() {
        let started = Instant::now();
        let mut watchdog = Watchdog::start(TIMEOUT);
        let (answer, answered) = oneshot::channel::<()>();
        let (progress, mut progressed) = watch::channel(0);
        tokio::spawn(async move {
            for i in 1..=10 {
                tokio::time::sleep(TIMEOUT / 2).await;
                progress.send_replace(i);
            }
            // Then the broker stalls: no report, no answer.
            std::future::pending::<()>().await;
            drop((answer, progress));
        });
        assert!(watchdog.wait(answered, &mut progressed).await.is_none());
        assert_eq!(started.elapsed(), 5 * TIMEOUT + TIMEOUT + TIMEOUT / 4);
        assert_eq!(*progressed.borrow(), 10);
        assert!(watchdog.expired());
    }

    #[tokio::test(start_paused = true)]
    async fn without_any_progress_the_call_fails_after_the_timeout() {
        let started = Instant::now();
        let mut watchdog = Watchdog::start(TIMEOUT);
        let (_answer, answered) = oneshot::channel::<()>();
        let (_progress, mut progressed) = watch::channel(0);
        assert!(watchdog.wait(answered, &mut progressed).await.is_none());
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_carries_over_to_the_next_wait() {
        // A lost channel is not progress: the reconnect and the next job
        // get what is left of the deadline.
        let started = Instant::now();
        let mut watchdog = Watchdog::start(TIMEOUT);
        let (answer, mut progress) = steady(TIMEOUT / 2, 3);
        let done = watchdog.wait(answer, &mut progress).await;
        assert!(matches!(done, Some(Ok(()))), "answered");
        let deadline = started + 3 * TIMEOUT / 2 + TIMEOUT + TIMEOUT / 4;
        assert_eq!(watchdog.deadline(), deadline);
        tokio::time::sleep(TIMEOUT / 4).await;
        let (_answer, answered) = oneshot::channel::<()>();
        let (_progress, mut progressed) = watch::channel(0);
        assert!(watchdog.wait(answered, &mut progressed).await.is_none());
        assert_eq!(Instant::now(), deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_progress_channel_does_not_spin_or_extend() {
        let started = Instant::now();
        let mut watchdog = Watchdog::start(TIMEOUT);
        let (_answer, answered) = oneshot::channel::<()>();
        let (progress, mut progressed) = watch::channel(0);
        drop(progress);
        assert!(watchdog.wait(answered, &mut progressed).await.is_none());
        assert_eq!(started.elapsed(), TIMEOUT);
    }
}
