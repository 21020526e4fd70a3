//! Opening a channel, and waiting on one, around two flaws of lapin 4.12
//! (the second: [`while_alive`]). The first: when the broker closes a channel (a 404 to a passive declare, a
//! 406 to a declaration with other arguments), lapin keeps that channel's
//! error under its id. Channel ids wrap at the connection's `channel_max`
//! (2,047 with RabbitMQ), and the next channel opened on that id fails at
//! once with the old error, after which lapin keeps the id taken for the
//! connection's life. In the management API, which opens a few channels per
//! write, one write in about 300 failed with a stale
//! `NOT_FOUND - no queue '<prefix>.control'` (a 503) for a stream that
//! existed. A refusal of `channel.open` itself is never a soft error (the
//! broker answers a bad open by closing the connection), so a soft error
//! here is such a stale one: open the next id instead.
//!
//! What remains of the flaw: each id skipped this way stays taken for the
//! connection's life (measured: after 50 refusals and the ids wrapping,
//! 1,997 of 2,047 channels could be held open at once). A connection loses
//! one channel for every channel the broker refused on it, once the ids
//! have wrapped; hookpost's refusals are rare outside a start (a missing
//! queue's passive declare, a declaration with other arguments), so this
//! is far below what a process needs, but a process that met thousands of
//! refusals on one connection would run out of channels until it
//! reconnects.

use lapin::protocol::AMQPErrorKind;
use lapin::{Channel, Connection, ErrorKind};

/// How many stale ids in a row are skipped before the error is returned.
const STALE_IDS: usize = 64;

/// Opens a channel on `conn`, skipping ids that carry an old channel's
/// error (see the module's docs). Use it for every channel.
///
/// # Errors
/// The connection's error, or the last stale error after [`STALE_IDS`] ids.
pub async fn open_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let mut skipped = 0;
    loop {
        match conn.create_channel().await {
            Err(e) if is_stale(&e) && skipped < STALE_IDS => {
                skipped += 1;
                tracing::debug!(error = %e, skipped, "A channel id came round with an old channel's error; opening the next one.");
            }
            opened => return opened,
        }
    }
}

/// Whether `e`, from opening a channel, is an earlier channel's refusal.
fn is_stale(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)))
}

/// How often [`while_alive`] looks at the connection or channel.
const ALIVE_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits for a broker operation for at most `limit`, and no longer than
/// `alive` holds (checked every 100 ms): `None` when it gave up.
///
/// lapin 4.12 can leave an operation pending for good when it was begun as
/// its connection failed (an ack, a publish or its confirm, queued after
/// lapin dropped the pending frames). A connection dropped under a
/// dispatcher's acks left its worker waiting out a 30 s timeout and the
/// dispatcher consuming nothing until then. The dispatcher's acks, nacks,
/// republishes, channel opens and closes, consumer starts and cancels, the
/// breaker's probes (`basic.get`), queue checks and depth polls go through
/// here.
pub async fn while_alive<T>(
    alive: impl Fn() -> bool,
    limit: std::time::Duration,
    op: impl Future<Output = T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    let watch = async {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(ALIVE_CHECK.min(left)).await;
            if !alive() {
                return;
            }
        }
    };
    tokio::select! {
        biased;
        done = op => Some(done),
        () = watch => None,
    }
}

#[cfg(test)]
mod tests {
    use super::while_alive;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn an_answer_comes_back_at_once() {
        let start = Instant::now();
        let done = while_alive(|| true, Duration::from_secs(30), async { 7 }).await;
        assert_eq!(done, Some(7));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_connection_ends_the_wait_within_a_check() {
        let alive = Arc::new(AtomicBool::new(true));
        let flip = alive.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            flip.store(false, Ordering::SeqCst);
        });
        let start = Instant::now();
        let done = while_alive(
            || alive.load(Ordering::SeqCst),
            Duration::from_secs(30),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(done, None);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_connection_waits_up_to_the_limit() {
        let start = Instant::now();
        let done = while_alive(
            || true,
            Duration::from_millis(1250),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(done, None);
        assert_eq!(start.elapsed(), Duration::from_millis(1250));
    }
}
