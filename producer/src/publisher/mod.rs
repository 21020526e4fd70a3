//! [`Publisher`]: publish events to `<prefix>.events` and return only once the
//! broker has confirmed them.
//!
//! Every publish is `mandatory` and persistent, on a channel in confirm mode.
//! A publisher spreads its calls over [`LANES`] channels on its one
//! connection, each call on the next in turn, and a long `publish_many` part
//! by part ([`PART`] events each) over all of them. One task per channel
//! (`lane.rs`) publishes for every caller: publishes and confirms are in
//! flight at once (up to [`WINDOW`] unconfirmed per channel), across
//! concurrent callers too. So the events of one call may reach the broker
//! out of their order (hookpost never promised an order). A nack or a returned message is an error for the
//! event (and the call that published it), never a success. When the connection drops,
//! the unconfirmed events are published again on a new connection; so an
//! event may reach the broker twice (at-least-once), and none is reported
//! confirmed without a confirm.
//!
//! With the archive on, a call also waits for the stream message holding its
//! events' copies: its own after each run of 256 events (`copies.rs`), or,
//! for a smaller call, one shared with other calls' copies (`packer.rs`).
//!
//! `amqp.publish_timeout_ms` bounds how long a call waits without progress,
//! not the whole call (`watchdog.rs`): the call fails with
//! [`PublishError::Timeout`] (or [`PublishError::Unavailable`] while
//! reconnecting) once that long has passed since the broker last confirmed
//! one of its events (or since the call started). So a `publish_many` of
//! 100,000 events the broker confirms steadily succeeds however long it
//! takes, and a broker that stops confirming, or stays away, fails it
//! between one and one and a quarter timeouts after its last confirm,
//! never sooner (the lane tells a call of its progress sixteen times per
//! timeout at most, `book.rs`, and each report moves the deadline a timeout
//! and a quarter ahead, `watchdog.rs`).
//!
//! While the broker blocks the connection (`connection.blocked`: a memory or
//! disk alarm), publishing fails at once with [`PublishError::Blocked`]
//! instead of waiting out the timeout: an alarm lasts until an operator or
//! the consumers free the resource, far longer than a publish should wait.

mod book;
mod channel;
mod copies;
mod error;
mod lane;
mod packer;
mod parts;
mod prepare;
mod watchdog;

use common::Event;
use common::amqp::{AmqpClient, AmqpError};
use common::config::Config;
use common::metrics::ProducerMetrics;
use common::topology::Topology;
use copies::with_copies;
pub use copies::{COPIES_PER_MESSAGE, COPY_MESSAGE_BYTES};
pub use error::PublishError;
use lane::{CopyCounters, Item, Lane, Outcome, Ticket};
use lapin::Channel;
use lapin::types::ShortString;
use packer::Packer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use watchdog::Watchdog;

/// Most publishes awaiting their confirm at once on one lane, across all callers.
pub const WINDOW: usize = 1000;

/// Lanes (channels) a publisher spreads its calls over, each call (or part
/// of a long call) on the next in turn: one channel is one process in the
/// broker, and four publish 5 to 13% faster than one on the project's
/// 2-core machine (BENCHMARKS.md, session 33).
pub const LANES: usize = 4;

/// Events per part of a longer call: each part is serialized and handed to
/// the lane while the broker takes the parts before it (a multiple of
/// [`COPIES_PER_MESSAGE`], so the archive messages stay full).
pub const PART: usize = 2 * COPIES_PER_MESSAGE;

/// A connection to the broker for publishing events. Cheap to share behind an
/// `Arc`; concurrent publishes share its [`LANES`] channels and are in flight
/// together.
#[derive(Debug)]
pub struct Publisher {
    inner: Arc<Inner>,
    /// Packs the archive copies of small calls together (`packer.rs`);
    /// started by the first publish when the archive is on, again if its
    /// task is gone (its runtime shut down).
    packer: std::sync::Mutex<Option<Packer>>,
}

/// What a [`Publisher`] holds, shared with the tasks it starts.
#[derive(Debug)]
struct Inner {
    client: AmqpClient,
    topology: Topology,
    timeout: Duration,
    /// The lanes ([`LANES`]), each a channel of its own on the one
    /// connection, opened when first used; a call (or a long call's part)
    /// takes the next in turn.
    lanes: Mutex<Vec<Option<Arc<Lane>>>>,
    next_lane: std::sync::atomic::AtomicUsize,
    /// The current channel, readable without waiting for `channel`'s lock.
    current: std::sync::Mutex<Option<Channel>>,
    metrics: std::sync::OnceLock<ProducerMetrics>,
    /// Cancelled by [`Publisher::close`]: no connection is opened after it,
    /// and a setup the close interrupted is not retried or logged.
    closed: CancellationToken,
    events_exchange: ShortString,
    scoped_exchange: ShortString,
    max_bytes: usize,
    /// `[archive]` and the stream's name, when enabled.
    archive: Option<(common::config::ArchiveConfig, ShortString)>,
    /// The archive copies' counters, shared with every lane.
    copy_counters: lane::Counters,
}

impl Publisher {
    /// A publisher for the broker and prefix in `config`. Connects lazily, on
    /// the first publish (see [`Publisher::connect`] to fail fast).
    pub fn new(config: &Config) -> Self {
        Self {
            inner: Arc::new(Inner::new(config)),
            packer: std::sync::Mutex::new(None),
        }
    }

    /// Connects and declares the exchanges now.
    ///
    /// # Errors
    /// [`PublishError::Unavailable`] when the broker cannot be reached within
    /// the publish timeout, [`PublishError::Topology`] when it refuses a declaration.
    pub async fn connect(config: &Config) -> Result<Self, PublishError> {
        let publisher = Self::new(config);
        let inner = &publisher.inner;
        inner.lane(Instant::now() + inner.timeout).await?;
        Ok(publisher)
    }

    /// Counts publishes in these metrics (the first metrics given stay).
    #[must_use]
    pub fn with_metrics(self, metrics: ProducerMetrics) -> Self {
        let _ = self.inner.copy_counters.set(CopyCounters {
            written: metrics.archive_records.with_label_values(&["written"]),
            lost: metrics.archive_records.with_label_values(&["lost"]),
            bytes: metrics.archive_bytes.clone(),
        });
        let _ = self.inner.metrics.set(metrics);
        self
    }

    /// The underlying connection supervisor (for readiness checks).
    pub fn client(&self) -> &AmqpClient {
        &self.inner.client
    }

    /// Whether a confirm-mode channel with the exchanges declared is open now.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Publishes one event; returns once the broker confirmed it.
    ///
    /// # Errors
    /// See [`PublishError`].
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.publish_many(std::slice::from_ref(event)).await
    }

    /// Publishes events pipelined; returns once the broker confirmed all of
    /// them. On error, some may have been stored: publishing them again is
    /// safe (receivers dedupe on `webhook-id`). The publish timeout bounds
    /// the wait for the broker's next confirm, not the whole call: a long
    /// call the broker confirms steadily succeeds.
    ///
    /// # Errors
    /// See [`PublishError`].
    pub async fn publish_many(&self, events: &[Event]) -> Result<(), PublishError> {
        let packer = self.packer();
        self.inner.publish_many(events, packer.as_ref()).await
    }

    /// The packer, when the archive is on.
    fn packer(&self) -> Option<Packer> {
        let (_, stream) = self.inner.archive.as_ref()?;
        let mut packer = self
            .packer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = packer.as_ref().filter(|p| p.is_running()) {
            return Some(running.clone());
        }
        let inner = self.inner.clone();
        let started = Packer::start(
            stream.clone(),
            self.inner.copy_counters.clone(),
            move |items| {
                let inner = inner.clone();
                async move { inner.send(items).await }
            },
        );
        *packer = Some(started.clone());
        Some(started)
    }

    /// How many of its channels (at most [`LANES`]) are open now: they open
    /// as calls need them, and again after a reconnect.
    pub async fn channels_open(&self) -> usize {
        self.inner.open_lanes().await
    }

    /// Why the broker blocks this publisher's connection, if it does (see
    /// [`PublishError::Blocked`]).
    pub fn blocked(&self) -> Option<String> {
        self.inner.client.blocked()
    }

    /// Closes the connection, for good: later publishes fail rather than
    /// open a new connection. Bounded even when the broker blocks it: at
    /// most [`common::amqp::CLOSE_TIMEOUT`] for a channel setup under way to
    /// finish, then the client's own close (twice that at most).
    pub async fn close(&self) {
        self.inner.close().await;
    }
}

impl Inner {
    fn new(config: &Config) -> Self {
        // With the config's replica counts: the archive is declared with
        // `registry.control_replicas`, as the dispatchers declare it.
        let topology = Topology::for_config(config);
        Self {
            client: AmqpClient::new(
                config.amqp.urls.clone(),
                "hookpost-producer",
                config.amqp.max_reconnect_delay,
            ),
            timeout: config.amqp.publish_timeout,
            lanes: Mutex::new(vec![None; LANES]),
            next_lane: std::sync::atomic::AtomicUsize::new(0),
            current: std::sync::Mutex::new(None),
            metrics: std::sync::OnceLock::new(),
            closed: CancellationToken::new(),
            events_exchange: topology.events_exchange().into(),
            scoped_exchange: topology.scoped_exchange().into(),
            max_bytes: config.amqp.max_message_bytes,
            copy_counters: lane::Counters::default(),
            archive: config
                .archive
                .enabled
                .then(|| (config.archive.clone(), topology.archive().into())),
            topology,
        }
    }

    /// Whether a confirm-mode channel with the exchanges declared is open now.
    fn is_ready(&self) -> bool {
        self.client.is_connected()
            && self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| c.status().connected())
    }

    async fn publish_many(
        &self,
        events: &[Event],
        packer: Option<&Packer>,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.publish_all(events, packer).await;
        if let Some(m) = self.metrics.get() {
            let outcome = if result.is_ok() {
                "confirmed"
            } else {
                "failed"
            };
            m.events_published
                .with_label_values(&[outcome])
                .inc_by(events.len() as u64);
            m.publish_duration.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn publish_all(
        &self,
        events: &[Event],
        packer: Option<&Packer>,
    ) -> Result<(), PublishError> {
        if let Some(reason) = self.client.blocked() {
            return Err(PublishError::Blocked { reason });
        }
        // Nothing is sent unless every event may be.
        self.check(events)?;
        let now = time::OffsetDateTime::now_utc();
        if events.len() > PART {
            return self.send_in_parts(events, now).await;
        }
        // A call of fewer events than one archive message holds has its
        // copies packed with other calls' (`packer.rs`).
        let packer = packer.filter(|_| !events.is_empty() && events.len() < COPIES_PER_MESSAGE);
        let mut items = self.prepare(events, packer.is_none(), now)?;
        let mut copied = None;
        if let (Some(packer), Some((_, stream))) = (packer, &self.archive) {
            if packer::takes(&items) {
                copied = Some(packer.copy(&items, now));
            } else {
                items = with_copies(items, stream, now);
            }
        }
        self.send(items).await?;
        let Some(copied) = copied else {
            return Ok(());
        };
        match copied.await {
            Ok(Ok(())) => Ok(()),
            // The call's events are confirmed, its copies are not: the
            // call's own first event is named, not another call's.
            Ok(Err(PublishError::Timeout { timeout, .. })) => Err(PublishError::Timeout {
                id: events.first().map(|e| e.id.clone()).unwrap_or_default(),
                timeout,
            }),
            Ok(Err(e)) => Err(e),
            // The packer's task is gone: the runtime is shutting down.
            Err(_) => Err(PublishError::Unavailable(AmqpError::Shutdown)),
        }
    }

    /// Publishes `pending` on the lane (again on a new channel when one is
    /// lost) until the broker confirmed every item, or the call fails.
    async fn send(&self, mut pending: Vec<Arc<Item>>) -> Result<(), PublishError> {
        // One deadline for the call, moved by each confirm, carried across
        // reconnects (a lost channel is not progress).
        let mut watchdog = Watchdog::start(self.timeout);
        let slot = self
            .next_lane
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % LANES;
        while !pending.is_empty() {
            let lane = self.lane_at(slot, watchdog.deadline()).await?;
            let ticket = lane.submit(pending.clone());
            // Bounded, and cut short when the broker blocks the connection
            // (memory or disk alarm): it then stops reading our frames.
            match self.wait(&mut watchdog, &pending, ticket).await? {
                Ok(Outcome::Confirmed) => return Ok(()),
                Ok(Outcome::Nacked { id }) => {
                    // A channel that saw a quorum queue without a leader can
                    // keep refusing after a new one is elected (seen on a
                    // 3.10 cluster after a node died: every later publish on
                    // the channel nacked, a new channel's acked at once).
                    // The next call starts on a new channel.
                    self.replace_lane(&lane).await;
                    return Err(PublishError::Nacked { id });
                }
                Ok(Outcome::Unroutable { id, reply }) => {
                    return Err(PublishError::Unroutable { id, reply });
                }
                Ok(Outcome::Lost { unconfirmed }) => pending = unconfirmed,
                // The lane closed before taking the job: nothing confirmed.
                Err(_) => {}
            }
            if let Some(first) = pending.first() {
                if watchdog.expired() {
                    return Err(PublishError::Timeout {
                        id: first.id.clone(),
                        timeout: self.timeout,
                    });
                }
                tracing::warn!(
                    unconfirmed = pending.len(),
                    "Broker channel lost while publishing; publishing again."
                );
                self.forget_lane(&lane).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Waits for the answer to the job of `items` until the watchdog's
    /// deadline (moved by the job's progress), or until the broker blocks the
    /// connection, whichever comes first.
    async fn wait(
        &self,
        watchdog: &mut Watchdog,
        items: &[Arc<Item>],
        ticket: Ticket,
    ) -> Result<Result<Outcome, tokio::sync::oneshot::error::RecvError>, PublishError> {
        let Ticket {
            answer,
            mut progress,
        } = ticket;
        let mut blocked = self.client.watch_blocked();
        let done = tokio::select! {
            done = watchdog.wait(answer, &mut progress) => done,
            Ok(reason) = blocked.wait_for(Option::is_some) => {
                return Err(PublishError::Blocked {
                    reason: reason.clone().unwrap_or_default(),
                });
            }
        };
        done.ok_or_else(|| {
            let oldest = *progress.borrow();
            PublishError::Timeout {
                id: items
                    .get(oldest)
                    .or(items.first())
                    .map(|item| item.id.clone())
                    .unwrap_or_default(),
                timeout: self.timeout,
            }
        })
    }

    async fn close(&self) {
        self.closed.cancel();
        // A channel setup under way finishes first (no new one starts after
        // the cancel): a channel opened while the connection closes makes
        // lapin log an error.
        let _setup = tokio::time::timeout(common::amqp::CLOSE_TIMEOUT, self.lanes.lock()).await;
        self.client.close().await;
    }
}
