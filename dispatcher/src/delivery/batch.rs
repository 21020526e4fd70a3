//! Batching: a batch is flushed when it holds `size` items or `interval` after
//! its first item arrived, whichever comes first. Items already waiting are
//! taken without waiting (as many as the runtime's cooperative budget lets a
//! single poll take), so `interval = 0` still batches a backlog.

use futures_util::{FutureExt, Stream, StreamExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a filling batch takes what arrived meanwhile.
const TICK: Duration = Duration::from_millis(1);

/// The next batch from `stream`: `None` when the stream ended or `stop`
/// fired before a first item. A partial batch is returned early when the
/// stream ends or `stop` fires.
pub async fn next_batch<S, T>(
    stream: &mut S,
    size: usize,
    interval: Duration,
    stop: &CancellationToken,
) -> Option<Vec<T>>
where
    S: Stream<Item = T> + Unpin,
{
    let first = tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        item = stream.next() => item?,
    };
    let deadline = tokio::time::Instant::now() + interval;
    let mut batch = Vec::with_capacity(size.min(1024));
    batch.push(first);
    // Whatever is already buffered joins without waiting.
    while batch.len() < size {
        match stream.next().now_or_never() {
            Some(Some(item)) => batch.push(item),
            Some(None) => return Some(batch),
            None => break,
        }
    }
    if interval.is_zero() {
        return Some(batch);
    }
    // Then each arrival, and what else arrives within a TICK of it, which
    // is taken at once: the broker's deliveries would otherwise wake the
    // runtime one at a time, and an idle stream costs nothing.
    while batch.len() < size {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            item = stream.next() => match item {
                Some(item) => batch.push(item),
                None => break,
            },
        }
        if batch.len() >= size {
            break;
        }
        let tick = deadline.min(tokio::time::Instant::now() + TICK);
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(tick) => {}
        }
        while batch.len() < size {
            match stream.next().now_or_never() {
                Some(Some(item)) => batch.push(item),
                Some(None) => return Some(batch),
                None => break,
            }
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    fn channel() -> (mpsc::UnboundedSender<u32>, impl Stream<Item = u32> + Unpin) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, receiver_stream(rx))
    }

    /// An mpsc receiver as a `Stream`.
    fn receiver_stream(rx: mpsc::UnboundedReceiver<u32>) -> impl Stream<Item = u32> + Unpin {
        Box::pin(
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|v| (v, rx)) },
            )
            .fuse(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_when_full() {
        let (tx, mut stream) = channel();
        for i in 0..7 {
            tx.send(i).unwrap();
        }
        let stop = CancellationToken::new();
        let started = Instant::now();
        assert_eq!(
            next_batch(&mut stream, 3, Duration::from_secs(10), &stop).await,
            Some(vec![0, 1, 2])
        );
        assert_eq!(
            next_batch(&mut stream, 3, Duration::from_secs(10), &stop).await,
            Some(vec![3, 4, 5])
        );
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "full batches do not wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fills_the_batch_within_a_tick_of_its_last_item() {
        // Items arriving one at a time are taken a tick at a time, and a
        // batch that fills returns at the tick it filled on, not at the
        // interval.
        let (tx, mut stream) = channel();
        let stop = CancellationToken::new();
        let sender = tokio::spawn(async move {
            for i in 0..5 {
                tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            tx
        });
        let started = Instant::now();
        let batch = next_batch(&mut stream, 5, Duration::from_secs(10), &stop).await;
        assert_eq!(batch, Some(vec![0, 1, 2, 3, 4]));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(12) && took <= Duration::from_millis(12) + TICK,
            "{took:?}"
        );
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ending_while_a_batch_fills_returns_what_it_has() {
        let (tx, mut stream) = channel();
        let stop = CancellationToken::new();
        tx.send(1).unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(2).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(tx);
        });
        let started = Instant::now();
        let batch = next_batch(&mut stream, 10, Duration::from_secs(10), &stop).await;
        assert_eq!(batch, Some(vec![1, 2]));
        assert!(
            started.elapsed() <= Duration::from_millis(10) + TICK,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            next_batch(&mut stream, 10, Duration::from_secs(10), &stop).await,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_at_the_interval_after_the_first_item() {
        let (tx, mut stream) = channel();
        let stop = CancellationToken::new();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(1).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send(2).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send(3).unwrap(); // after the 500 ms window of item 1
            tx
        });
        let started = Instant::now();
        let batch = next_batch(&mut stream, 10, Duration::from_millis(500), &stop).await;
        assert_eq!(batch, Some(vec![1, 2]));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1000),
            "500 ms wait for the first, then 500 ms window"
        );
        let _tx = sender.await.unwrap();
        assert_eq!(
            next_batch(&mut stream, 10, Duration::ZERO, &stop).await,
            Some(vec![3])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_takes_the_backlog_without_waiting() {
        let (tx, mut stream) = channel();
        for i in 0..4 {
            tx.send(i).unwrap();
        }
        let stop = CancellationToken::new();
        let started = Instant::now();
        assert_eq!(
            next_batch(&mut stream, 10, Duration::ZERO, &stop).await,
            Some(vec![0, 1, 2, 3])
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            next_batch(&mut stream, 1, Duration::ZERO, &stop).now_or_never(),
            None,
            "waits for an item"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stop_flushes_a_partial_batch_and_then_ends() {
        let (tx, mut stream) = channel();
        tx.send(1).unwrap();
        let stop = CancellationToken::new();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.cancel();
            })
        };
        let started = Instant::now();
        assert_eq!(
            next_batch(&mut stream, 10, Duration::from_secs(60), &stop).await,
            Some(vec![1])
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        canceller.await.unwrap();
        tx.send(2).unwrap();
        assert_eq!(
            next_batch(&mut stream, 10, Duration::from_secs(60), &stop).await,
            None
        );
    }

    proptest::proptest! {
        /// Whatever the backlog and the size, batches are full chunks in
        /// order, then the remainder; nothing lost, nothing repeated.
        #[test]
        fn batches_are_ordered_full_chunks(n in 0usize..300, size in 1usize..60, interval_ms in 0u64..100) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let batches = rt.block_on(async {
                let (tx, mut stream) = channel();
                for i in 0..n {
                    tx.send(i as u32).unwrap();
                }
                drop(tx);
                let stop = CancellationToken::new();
                let mut out = Vec::new();
                while let Some(b) = next_batch(&mut stream, size, Duration::from_millis(interval_ms), &stop).await {
                    out.push(b);
                }
                out
            });
            let flat: Vec<u32> = batches.iter().flatten().copied().collect();
            proptest::prop_assert_eq!(flat, (0..n as u32).collect::<Vec<_>>());
            for (i, b) in batches.iter().enumerate() {
                proptest::prop_assert!(!b.is_empty() && b.len() <= size);
                // With an interval, only the last batch may be partial. With
                // none, a batch takes what is ready at once, which tokio's
                // cooperative budget can cut short.
                if interval_ms > 0 && i + 1 < batches.len() {
                    proptest::prop_assert_eq!(b.len(), size);
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ended_stream_returns_the_rest_then_none() {
        let (tx, mut stream) = channel();
        tx.send(1).unwrap();
        drop(tx);
        let stop = CancellationToken::new();
        assert_eq!(
            next_batch(&mut stream, 10, Duration::from_secs(1), &stop).await,
            Some(vec![1])
        );
        assert_eq!(
            next_batch(&mut stream, 10, Duration::from_secs(1), &stop).await,
            None
        );
    }
}
