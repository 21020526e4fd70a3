//! The idle watchdog of [`crate::server`]: a connection on which no byte
//! moved, either way, for the idle timeout while no request was being
//! handled is closed. hyper's header-read timeout covers a client that never
//! finishes its request head; this covers the rest (a client that stops
//! reading a response, or goes quiet in a body nobody reads).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte, and how many of its requests are
/// being handled.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last progress.
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    /// Records progress now.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Marks a request as being handled until the guard drops; the handler's
    /// own time (a publish waiting for the broker) is not idleness.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Completes once the connection has been idle for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            let now = Instant::now();
            let wake = if self.busy.load(Ordering::SeqCst) > 0 {
                // A handler runs: look again shortly (it touches on its way
                // out, which moves the deadline).
                deadline.max(now + timeout.min(Duration::from_millis(100)))
            } else if now >= deadline {
                return;
            } else {
                deadline
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in progress; see [`Activity::busy`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An I/O stream that reports every byte read or written to its [`Activity`].
#[derive(Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(10);

    /// Time until `idle_for(IDLE)` completes, with `during` run alongside.
    async fn idle_after(activity: &Arc<Activity>, during: impl Future<Output = ()>) -> Duration {
        let start = Instant::now();
        tokio::join!(activity.idle_for(IDLE), during);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_the_timeout() {
        let activity = Activity::new();
        let waited = idle_after(&activity, async {}).await;
        assert_eq!(waited, IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_moves_the_deadline() {
        let activity = Activity::new();
        let a = activity.clone();
        let waited = idle_after(&activity, async move {
            tokio::time::sleep(Duration::from_secs(7)).await;
            a.touch();
        })
        .await;
        assert_eq!(waited, Duration::from_secs(17));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_is_not_idleness() {
        let activity = Activity::new();
        let a = activity.clone();
        let waited = idle_after(&activity, async move {
            let busy = a.busy();
            tokio::time::sleep(Duration::from_secs(45)).await;
            drop(busy);
        })
        .await;
        assert_eq!(waited, Duration::from_secs(55));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_and_writes_count_as_progress() {
        let activity = Activity::new();
        let (near, mut far) = tokio::io::duplex(64);
        let mut tracked = Tracked::new(near, activity.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        far.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        tracked.read_exact(&mut byte).await.expect("read");
        assert_eq!(activity.last_ms.load(Ordering::Relaxed), 3_000);
        tokio::time::sleep(Duration::from_secs(2)).await;
        tracked.write_all(b"y").await.expect("write");
        assert_eq!(activity.last_ms.load(Ordering::Relaxed), 5_000);
    }
}
