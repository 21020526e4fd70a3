//! The broker channels the endpoint workers of one connection share.
//!
//! RabbitMQ caps a connection at `channel_max` channels (2,047 by default),
//! so a channel (or two) per endpoint stops one dispatcher near a thousand
//! endpoints. Here consumers are spread over at most `amqp.consume_channels`
//! channels: up to that many endpoints get a channel of their own; beyond
//! it, endpoints share the least-used channel, each consumer with its own
//! prefetch (`basic.qos` with `global = false` sets the limit of consumers
//! started after it on the channel, so the two calls are made together under
//! the channel's setup lock). Retries, parks and dead letters are published
//! on `amqp.publish_channels` confirm channels that the workers share (each
//! endpoint always on the same one).
//!
//! Acks. A channel that has only ever had one consumer acks in ranges
//! (`multiple = true`, [`super::acks`]): every delivery below a settled tag
//! is one that consumer has already taken. With two consumers on a channel
//! that no longer holds: a delivery of one may still wait in its consumer's
//! buffer, not yet registered, while the other settles a higher tag. A
//! shared channel therefore acks one delivery at a time, for as long as it
//! lives.
//!
//! A channel whose last consumer leaves is closed, which also returns to
//! the queue anything its consumers left unacknowledged. A channel that
//! failed is dropped from the pool; the next lease opens a new one.
//!
//! A broker refusal closes the channel for every consumer on it, so a
//! worker checks on a channel of its own that its queue exists before it
//! consumes or probes on a shared one ([`Channels::queue_exists`]): a queue
//! deleted by hand then costs its own endpoint a restart, not its
//! neighbours.

use crate::delivery::acks::{AckTracker, FLUSH_EVERY};
use crate::delivery::route::BROKER_TIMEOUT;
use common::amqp::{reply, reply_code};
use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::{Channel, Connection};
use prometheus::IntGaugeVec;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The channels of one connection generation.
#[derive(Debug, Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Arc<Connection>,
    max_consume: usize,
    consume: Mutex<Vec<Arc<ConsumeChannel>>>,
    publish: Vec<Mutex<Option<Channel>>>,
    /// Publishing channels opened (a replacement counts once).
    publish_open: AtomicUsize,
    /// For passive declares, which a missing queue closes.
    check: Mutex<Option<Channel>>,
    /// `hookpost_amqp_channels{role}`.
    gauge: IntGaugeVec,
    /// More endpoints than consumer channels: channels are or will be shared.
    crowded: std::sync::atomic::AtomicBool,
}

/// One consumer channel and who uses it.
#[derive(Debug)]
struct ConsumeChannel {
    channel: Channel,
    acks: Arc<AckTracker>,
    /// Workers holding a lease on it.
    users: AtomicUsize,
    /// `basic.qos` + `basic.consume` of one worker at a time.
    setup: Mutex<()>,
    /// Stops its ack flusher.
    flusher: CancellationToken,
    /// A consumer cancel went unanswered: closed for all when that worker lets go.
    unanswered: AtomicBool,
}

/// A worker's place on a consumer channel; give it back with [`Lease::release`].
#[derive(Debug)]
pub struct Lease {
    slot: Arc<ConsumeChannel>,
    pool: Arc<Inner>,
    shared: bool,
    released: bool,
}

impl Channels {
    /// The pool of `conn`: at most `consume_channels` consumer channels and
    /// `publish_channels` confirm channels (both at least 1).
    pub fn new(
        conn: Arc<Connection>,
        consume_channels: usize,
        publish_channels: usize,
        gauge: IntGaugeVec,
    ) -> Self {
        gauge.with_label_values(&["consume"]).set(0);
        gauge.with_label_values(&["publish"]).set(0);
        Self {
            inner: Arc::new(Inner {
                conn,
                max_consume: consume_channels.max(1),
                consume: Mutex::new(Vec::new()),
                publish: (0..publish_channels.max(1))
                    .map(|_| Mutex::new(None))
                    .collect(),
                publish_open: AtomicUsize::new(0),
                check: Mutex::new(None),
                gauge,
                crowded: AtomicBool::new(false),
            }),
        }
    }

    /// A place on a consumer channel: a new channel while fewer than
    /// `consume_channels` are open, else the least-used one (which then
    /// acks one delivery at a time).
    ///
    /// # Errors
    /// The broker refused a new channel (or the connection is gone).
    pub async fn lease(&self) -> Result<Lease, lapin::Error> {
        let mut open = self.inner.consume.lock().await;
        open.retain(|c| c.channel.status().connected());
        self.inner.count_consumers(open.len());
        let shared = open.len() >= self.inner.max_consume;
        let slot = if open.len() < self.inner.max_consume {
            let opening = common::amqp::open_channel(&self.inner.conn);
            let channel = self
                .wait(opening)
                .await
                .ok_or_else(|| no_answer("channel.open"))??;
            let slot = Arc::new(ConsumeChannel {
                channel,
                acks: Arc::new(AckTracker::default()),
                users: AtomicUsize::new(0),
                setup: Mutex::new(()),
                flusher: CancellationToken::new(),
                unanswered: AtomicBool::new(false),
            });
            tokio::spawn(flush_acks(slot.acks.clone(), slot.flusher.clone()));
            open.push(slot.clone());
            self.inner.count_consumers(open.len());
            slot
        } else {
            let slot = open
                .iter()
                .min_by_key(|c| c.users.load(Ordering::SeqCst))
                .cloned()
                .ok_or(lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Closed,
                    "no consumer channel",
                ))?;
            slot.acks.share().await;
            slot
        };
        slot.users.fetch_add(1, Ordering::SeqCst);
        Ok(Lease {
            slot,
            pool: self.inner.clone(),
            shared,
            released: false,
        })
    }

    /// The confirm channel `endpoint` republishes on (always the same one,
    /// so its retries and dead letters keep their order); a closed one is
    /// replaced.
    ///
    /// # Errors
    /// The broker refused a new channel (or the connection is gone).
    pub async fn publisher(&self, endpoint: &str) -> Result<Channel, lapin::Error> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        endpoint.hash(&mut hasher);
        let i = usize::try_from(hasher.finish() % self.inner.publish.len() as u64).unwrap_or(0);
        let mut slot = self.inner.publish[i].lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let opening = async {
            let ch = common::amqp::open_channel(&self.inner.conn).await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(ch)
        };
        let ch = self
            .wait(opening)
            .await
            .ok_or_else(|| no_answer("channel.open"))??;
        if slot.replace(ch.clone()).is_none() {
            let n = self.inner.publish_open.fetch_add(1, Ordering::Relaxed) + 1;
            self.inner
                .gauge
                .with_label_values(&["publish"])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(ch)
    }

    /// Whether `queue` exists, asked on a channel of its own (a passive
    /// declare of a missing queue closes the channel it is made on).
    ///
    /// # Errors
    /// A broker error other than the queue's absence.
    pub async fn queue_exists(&self, queue: &str) -> Result<bool, lapin::Error> {
        let mut check = self.inner.check.lock().await;
        let ch = match check.as_ref() {
            Some(ch) if ch.status().connected() => ch.clone(),
            _ => {
                let opening = common::amqp::open_channel(&self.inner.conn);
                let ch = self
                    .wait(opening)
                    .await
                    .ok_or_else(|| no_answer("channel.open"))??;
                *check = Some(ch.clone());
                ch
            }
        };
        let declare = ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        );
        // Bounded: the lock is held, and stopping the pool waits for it.
        let Some(declared) = self.wait(declare).await else {
            *check = None;
            return Err(no_answer("queue.declare (passive)"));
        };
        match declared {
            Ok(_) => Ok(true),
            Err(e) if reply_code(&e) == Some(reply::NOT_FOUND) => {
                *check = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the connection under the pool is still up.
    pub fn is_open(&self) -> bool {
        self.inner.conn.status().connected()
    }

    /// Waits for a broker operation on this connection up to
    /// [`BROKER_TIMEOUT`](crate::delivery::route::BROKER_TIMEOUT), and not
    /// once the connection is gone (see [`common::amqp::while_alive`]):
    /// `None` when it gave up.
    pub async fn wait<T>(&self, op: impl Future<Output = T>) -> Option<T> {
        wait_on(&self.inner.conn, op).await
    }

    /// Closes the publishing and checking channels (call once every worker
    /// has stopped, before the connection closes). Left to lapin, a channel
    /// whose last handle goes is closed by a task of its own, which fails
    /// with "invalid channel state" and logs an ERROR when the connection
    /// is closing at the same time.
    pub async fn close(&self) {
        let mut open: Vec<Channel> = Vec::new();
        for slot in &self.inner.publish {
            open.extend(slot.lock().await.take());
        }
        open.extend(self.inner.check.lock().await.take());
        let closing = open
            .iter()
            .filter(|ch| ch.status().connected())
            .map(|ch| ch.close(200, "stopping".into()));
        let _ = self.wait(futures_util::future::join_all(closing)).await;
    }

    /// Tells the pool how many endpoints consume: beyond `consume_channels`
    /// channels get shared, and [`Lease::may_be_shared`] says so from the
    /// first lease (a consumer's prefetch is fixed when it starts).
    pub fn expect_consumers(&self, endpoints: usize) {
        self.inner
            .crowded
            .store(endpoints > self.inner.max_consume, Ordering::SeqCst);
    }

    /// Consumer channels open now (for tests and logs).
    pub async fn consumer_channels(&self) -> usize {
        self.inner.consume.lock().await.len()
    }
}

impl Lease {
    /// The channel to consume (and probe) on.
    pub fn channel(&self) -> &Channel {
        &self.slot.channel
    }

    /// Whether other workers use (or may use) the channel too.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether other workers use the channel or may join it later (more
    /// endpoints than channels).
    pub fn may_be_shared(&self) -> bool {
        self.shared || self.pool.crowded.load(Ordering::SeqCst)
    }

    /// The channel's ack tracker.
    pub fn acks(&self) -> Arc<AckTracker> {
        self.slot.acks.clone()
    }

    /// Sets this consumer's prefetch and starts it: the two calls are made
    /// together, so no other worker's `basic.qos` comes between them.
    ///
    /// # Errors
    /// The broker's error (the channel is then closed for every user).
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<lapin::Consumer, lapin::Error> {
        let _turn = self.slot.setup.lock().await;
        let starting = async {
            self.slot
                .channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            self.slot
                .channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    lapin::options::BasicConsumeOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
        };
        // Bounded like every wait under a lock here (the setup lock), and
        // not past the channel's life (another user may close it).
        let alive =
            || self.pool.conn.status().connected() && self.slot.channel.status().connected();
        common::amqp::while_alive(alive, BROKER_TIMEOUT, starting)
            .await
            .ok_or_else(|| no_answer("basic.consume"))?
    }

    /// Cancels the consumer `tag`, bounded: `true` once the broker answered.
    /// Unanswered on a live channel, the consumer may still hold deliveries
    /// there: the channel is closed for all when this worker lets go.
    pub async fn cancel(&self, endpoint: &str, tag: lapin::types::ShortString) -> bool {
        let channel = &self.slot.channel;
        let cancel = channel.basic_cancel(tag, lapin::options::BasicCancelOptions::default());
        let answered = wait_on_channel(channel, cancel)
            .await
            .is_some_and(|r| r.is_ok());
        if !answered && channel.status().connected() {
            tracing::warn!(
                endpoint,
                "The broker did not answer a consumer cancel; its channel will be closed so that what the consumer held goes back to the queue."
            );
            self.slot.unanswered.store(true, Ordering::SeqCst);
        }
        answered
    }

    /// Gives the place back; the last user closes the channel (after a
    /// final ack flush), which returns anything still unacked to its queue.
    pub async fn release(mut self) {
        self.released = true;
        release(&self.pool, &self.slot).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            let (pool, slot) = (self.pool.clone(), self.slot.clone());
            tokio::spawn(async move { release(&pool, &slot).await });
        }
    }
}

impl Inner {
    fn count_consumers(&self, open: usize) {
        self.gauge
            .with_label_values(&["consume"])
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }
}

async fn release(pool: &Inner, slot: &Arc<ConsumeChannel>) {
    let mut open = pool.consume.lock().await;
    let last = slot.users.fetch_sub(1, Ordering::SeqCst) == 1;
    let unanswered = slot.unanswered.load(Ordering::SeqCst);
    if !last && !unanswered {
        return;
    }
    // Out of the pool (while it closes, the pool may open one more).
    open.retain(|c| !Arc::ptr_eq(c, slot));
    pool.count_consumers(open.len());
    drop(open);
    if !last {
        // Others use it: closed for them too, not waiting for the answer
        // (lapin marks it closing at once); their workers start again, and
        // what they had in flight is redelivered.
        let closing = slot.channel.close(200, "consumer cancel unanswered".into());
        let _ = wait_on_channel(&slot.channel, closing).await;
        return;
    }
    slot.flusher.cancel();
    let _ = slot.acks.flush().await;
    let _ = wait_on(&pool.conn, slot.channel.close(200, "released".into())).await;
}

/// The error for a broker operation given up by [`Channels::wait`].
pub(crate) fn no_answer(what: &str) -> lapin::Error {
    let why = std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer to {what} (the connection died, or 30 s passed)"),
    );
    lapin::ErrorKind::IOError(Arc::new(why)).into()
}

async fn wait_on<T>(conn: &Connection, op: impl Future<Output = T>) -> Option<T> {
    common::amqp::while_alive(|| conn.status().connected(), BROKER_TIMEOUT, op).await
}

/// [`wait_on`] for an operation on `channel`: not past the channel's life.
pub(crate) async fn wait_on_channel<T>(
    channel: &Channel,
    op: impl Future<Output = T>,
) -> Option<T> {
    common::amqp::while_alive(|| channel.status().connected(), BROKER_TIMEOUT, op).await
}

/// Acks the channel's settled deliveries at least every [`FLUSH_EVERY`].
async fn flush_acks(acks: Arc<AckTracker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if acks.flush().await.is_err() {
            return;
        }
    }
}
