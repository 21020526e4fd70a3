//! Acknowledging in ranges. Acking each message on its own costs the broker
//! about 30% of its throughput; one `basic.ack` with `multiple = true` acks
//! every unacked delivery up to a tag. That is only safe up to the lowest
//! delivery still being worked on, so this tracker keeps the tags received and
//! not yet settled, and acks the settled ones below the lowest of those, when
//! 64 are waiting or every few milliseconds.
//!
//! Nacks (requeues) go out at once and one by one: a nacked delivery is no
//! longer unacked at the broker, so a later range ack cannot touch it.
//!
//! A channel shared by several consumers ([`super::channels`]) acks one
//! delivery at a time instead, as soon as it is settled
//! ([`AckTracker::share`]): there a lower tag may belong to another
//! consumer's delivery not registered yet.

use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::Mutex;

/// Settled deliveries that trigger an ack at once.
pub const FLUSH_AT: usize = 64;
/// Longest a settled delivery waits for its ack.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Longest wait for the broker to take an ack or a nack.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The ack state of one consumer channel.
#[derive(Debug, Default)]
pub struct AckTracker {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Received and not settled yet.
    outstanding: BTreeSet<u64>,
    /// Settled (to be acked), with an acker for each tag.
    settled: BTreeMap<u64, Acker>,
    /// Several consumers use the channel: no range acks.
    shared: bool,
}

impl AckTracker {
    /// Records deliveries as being worked on. Call in delivery order, before
    /// any of them can be settled.
    pub async fn register<'a>(&self, deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let mut inner = self.inner.lock().await;
        for d in deliveries {
            inner.outstanding.insert(d.delivery_tag);
        }
    }

    /// Marks a delivery done (acked soon, in a range).
    ///
    /// # Errors
    /// When a range ack this triggered failed (the channel is gone; the
    /// broker then redelivers the messages).
    pub async fn settle(&self, delivery: &Delivery) -> Result<(), lapin::Error> {
        let mut inner = self.inner.lock().await;
        inner.outstanding.remove(&delivery.delivery_tag);
        if inner.shared {
            // One at a time anyway: at once, so a consumer whose prefetch is
            // below FLUSH_AT never waits for the flusher's tick.
            drop(inner);
            let sent = send(
                &delivery.acker,
                delivery.acker.ack(BasicAckOptions { multiple: false }),
            )
            .await;
            // On a timeout the broker redelivers the message.
            return sent.unwrap_or(Ok(true)).map(drop);
        }
        inner
            .settled
            .insert(delivery.delivery_tag, delivery.acker.clone());
        if inner.settled.len() >= FLUSH_AT {
            flush(&mut inner).await?;
        }
        Ok(())
    }

    /// Returns a delivery to its queue now, untouched.
    pub async fn requeue(&self, delivery: &Delivery) {
        let mut inner = self.inner.lock().await;
        inner.outstanding.remove(&delivery.delivery_tag);
        inner.settled.remove(&delivery.delivery_tag);
        let nack = delivery.acker.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        });
        // If even this fails, the channel is gone and the broker requeues it.
        let _ = send(&delivery.acker, nack).await;
    }

    /// From now on, acks one delivery at a time: call before a second
    /// consumer starts on the channel.
    pub async fn share(&self) {
        self.inner.lock().await.shared = true;
    }

    /// Acks what can be acked now.
    ///
    /// # Errors
    /// When the ack failed (the channel is gone).
    pub async fn flush(&self) -> Result<(), lapin::Error> {
        flush(&mut *self.inner.lock().await).await
    }

    /// Deliveries settled and not acked yet (for tests and shutdown checks).
    pub async fn waiting(&self) -> usize {
        self.inner.lock().await.settled.len()
    }
}

async fn flush(inner: &mut Inner) -> Result<(), lapin::Error> {
    if inner.shared {
        return flush_each(inner).await;
    }
    let lowest_open = inner.outstanding.first().copied().unwrap_or(u64::MAX);
    let Some((&upto, acker)) = inner.settled.range(..lowest_open).next_back() else {
        return Ok(());
    };
    let acker = acker.clone();
    let sent = send(&acker, acker.ack(BasicAckOptions { multiple: true })).await;
    // Whatever happened, these are settled: on failure the broker redelivers them.
    inner.settled = inner.settled.split_off(&(upto + 1));
    sent.map_or(Ok(()), |result| result.map(drop))
}

/// Acks every settled delivery on its own (a shared channel).
async fn flush_each(inner: &mut Inner) -> Result<(), lapin::Error> {
    let settled = std::mem::take(&mut inner.settled);
    let Some(first) = settled.values().next() else {
        return Ok(());
    };
    // Sent together: lapin writes them in order without waiting for each.
    let acks = settled
        .values()
        .map(|acker| acker.ack(BasicAckOptions { multiple: false }));
    let sent = send(first, futures_util::future::join_all(acks)).await;
    match sent {
        Some(results) => results
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(true))
            .map(drop),
        // The broker redelivers whatever was not acked.
        None => Ok(()),
    }
}

/// Waits for an ack or nack on `acker`'s channel up to [`SEND_TIMEOUT`],
/// and not once the channel is gone (lapin can leave one begun as the
/// connection failed pending: see [`common::amqp::while_alive`]). `None`:
/// given up, and the broker redelivers.
async fn send<T>(acker: &Acker, op: impl Future<Output = T>) -> Option<T> {
    common::amqp::while_alive(|| !acker.poisoned(), SEND_TIMEOUT, op).await
}
