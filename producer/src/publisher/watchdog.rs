//! A publish call's deadline: `amqp.publish_timeout_ms` after the broker
//! last made progress for the call, not after the call started.
//!
//! The deadline starts at the call's start plus the timeout and moves to
//! "now plus the timeout" each time the lane reports progress (an event of
//! the call confirmed, told sixteen times per timeout at most, see
//! [`super::lane::Ticket::progress`]). So a long `publish_many` that the
//! broker confirms steadily never times out, while a broker that stops
//! confirming, or stays away while the publisher reconnects (a lost channel
//! is not progress), fails the call between 15/16 of a timeout and one
//! timeout after its last confirm.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

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

    /// Waits for `answer`, moving the deadline `timeout` past each report on
    /// `progress`; `None` when the deadline passes first. A closed `progress`
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
                    Ok(()) => self.deadline = Instant::now() + self.timeout,
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
    async fn no_progress_for_the_timeout_fails_one_timeout_after_the_last_report() {
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
        assert_eq!(started.elapsed(), 5 * TIMEOUT + TIMEOUT);
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
        assert_eq!(watchdog.deadline(), started + 3 * TIMEOUT / 2 + TIMEOUT);
        tokio::time::sleep(TIMEOUT / 4).await;
        let (_answer, answered) = oneshot::channel::<()>();
        let (_progress, mut progressed) = watch::channel(0);
        assert!(watchdog.wait(answered, &mut progressed).await.is_none());
        assert_eq!(started.elapsed(), 3 * TIMEOUT / 2 + TIMEOUT);
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
