//! A lane: one confirm-mode channel and the one task that publishes on it.
//!
//! Every caller of [`super::Publisher`] hands its events to the lane as a job
//! and awaits one answer for the whole job, and meanwhile hears of the job's
//! progress (see [`Ticket::progress`]): the caller's timeout counts from the
//! last progress, not from the start of a long job. The lane's task keeps up to
//! [`super::WINDOW`] publishes in flight at once, across jobs: it does not
//! wait for one `basic.publish` to be written before issuing the next, nor
//! for a confirm before the next publish. So concurrent callers and a long
//! `publish_many` go at the broker's pace.
//!
//! One task per channel, because lapin numbers a publish (its delivery tag)
//! and queues its frames in two steps: two tasks publishing on one channel at
//! once can swap the order, and a confirm would then be counted for the other
//! event.
//!
//! A returned message (mandatory, no queue took it) reaches lapin before the
//! confirm that covers it, and lapin hands it to whichever confirm it
//! completes next, which may belong to another event or another job. So the
//! lane finds the returned event by its `message_id` (the event id), and
//! before it answers a job it takes every confirm that is already in
//! (`drain`): the one carrying the return was completed no later than the
//! returned event's own.

use super::book::Book;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::{mpsc, oneshot, watch};

/// One event ready to publish: serialized once, published again as is after
/// a reconnect.
#[derive(Debug)]
pub(super) struct Item {
    /// The event id, also the message's `message_id`.
    pub(super) id: String,
    /// `<prefix>.events`, or `<prefix>.events.scoped` for an event with a
    /// tenant or environment (`common::routing`).
    pub(super) exchange: ShortString,
    pub(super) routing_key: ShortString,
    /// A slice of the buffer its call's events were serialized into
    /// together (`prepare.rs`).
    pub(super) body: bytes::Bytes,
    pub(super) properties: BasicProperties,
    /// For an archive message (`common::archive`), not an event: how many
    /// events' copies it holds (0 for an event). Sent without `mandatory`;
    /// a refusal counts its copies lost instead of failing the job.
    pub(super) copies: usize,
}

/// Where a lane counts the archive copies it wrote and lost.
#[derive(Debug, Clone)]
pub(super) struct CopyCounters {
    pub(super) written: prometheus::IntCounter,
    pub(super) lost: prometheus::IntCounter,
    pub(super) bytes: prometheus::IntCounter,
}

/// A job's answer.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The broker confirmed every event of the job.
    Confirmed,
    /// The broker refused this event (nack).
    Nacked { id: String },
    /// The broker returned this event: no queue took it.
    Unroutable { id: String, reply: String },
    /// The channel failed; these events have no confirm (some may be stored).
    Lost { unconfirmed: Vec<Arc<Item>> },
}

/// A caller's events and where to answer it.
pub(super) struct Job {
    pub(super) items: Vec<Arc<Item>>,
    pub(super) answer: oneshot::Sender<Outcome>,
    pub(super) progress: watch::Sender<usize>,
}

/// What a caller holds for its job.
#[derive(Debug)]
pub(super) struct Ticket {
    /// The job's one answer. Fails when the lane closed without answering:
    /// nothing of the job is confirmed then.
    pub(super) answer: oneshot::Receiver<Outcome>,
    /// Changes (even to the same value) when the broker made progress for
    /// the job: one of its events confirmed or, while none of them is in
    /// flight yet (they wait their turn behind other jobs), any confirm on
    /// the channel; told at most sixteen times per publish timeout, or four
    /// times while it waits its turn (the watchdog gives each report a
    /// timeout and a quarter, so the call fails between one and one and a
    /// quarter timeouts after its last confirm, or the channel's). The value
    /// is the index of the job's oldest unconfirmed event, kept current
    /// between the times it is told.
    pub(super) progress: watch::Receiver<usize>,
}

/// The lane's handle: its channel and the way to its task.
#[derive(Debug)]
pub(super) struct Lane {
    channel: Channel,
    /// The connection its channel is on (not kept alive by it).
    connection: std::sync::Weak<lapin::Connection>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Whether the archive was there when the lane opened: if not, copies
    /// are counted lost and not sent.
    archive: bool,
    counters: Counters,
}

/// The counters, set when the publisher gets its metrics (maybe after the
/// lane opened).
pub(super) type Counters = Arc<std::sync::OnceLock<CopyCounters>>;

impl Lane {
    /// Starts the task publishing on `channel` (in confirm mode).
    pub(super) fn start(
        channel: Channel,
        connection: &Arc<lapin::Connection>,
        window: usize,
        timeout: std::time::Duration,
        archive: bool,
        counters: Counters,
    ) -> Self {
        // Unbounded: each waiting caller has at most one job queued, and each
        // job is bounded by the caller's own limits (ingest body size, --count).
        let (jobs, queue) = mpsc::unbounded_channel();
        // A caller hears of its progress sixteen times per timeout at most
        // (waiting its turn, of the channel's, four times), and at least
        // while the broker confirms: its watchdog never fires while the
        // broker confirms anything.
        let book = Book::new(timeout / super::watchdog::REPORTS_PER_TIMEOUT);
        tokio::spawn(run(channel.clone(), window, book, queue, counters.clone()));
        Self {
            channel,
            connection: Arc::downgrade(connection),
            jobs,
            archive,
            counters,
        }
    }

    /// Whether its channel is on `connection`.
    pub(super) fn is_on(&self, connection: &Arc<lapin::Connection>) -> bool {
        std::ptr::eq(self.connection.as_ptr(), Arc::as_ptr(connection))
    }

    /// Closes its channel (best effort, in the background): events of other
    /// calls still unconfirmed on it are then published again on a new one.
    pub(super) fn close(&self) {
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                channel.close(200, "replaced after a nack".into()),
            )
            .await;
        });
    }

    /// Its channel.
    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Whether the archive was there when the lane opened.
    pub(super) fn archive(&self) -> bool {
        self.archive
    }

    /// Whether its channel is open and its task still takes jobs.
    pub(super) fn is_open(&self) -> bool {
        self.channel.status().connected() && !self.jobs.is_closed()
    }

    /// Queues `items`; the answer comes once every one is confirmed or one
    /// failed. A closed lane drops the job: the answer then fails, which the
    /// caller reads as "none confirmed".
    pub(super) fn submit(&self, mut items: Vec<Arc<Item>>) -> Ticket {
        if !self.archive {
            let lost: usize = items.iter().map(|item| item.copies).sum();
            items.retain(|item| item.copies == 0);
            if let Some(c) = self.counters.get() {
                c.lost.inc_by(lost as u64);
            }
        }
        let (job, ticket) = Job::new(items);
        let _ = self.jobs.send(job);
        ticket
    }
}

impl Job {
    pub(super) fn new(items: Vec<Arc<Item>>) -> (Self, Ticket) {
        let (answer, answered) = oneshot::channel();
        let (progress, progressed) = watch::channel(0);
        let job = Self {
            items,
            answer,
            progress,
        };
        (
            job,
            Ticket {
                answer: answered,
                progress: progressed,
            },
        )
    }
}

/// An event in a lane: its job and its index in the job.
pub(super) type Key = (u64, usize);
/// A publish settled: its confirm, or why there is none.
pub(super) type Done = (Key, Result<Confirmation, lapin::Error>);

async fn run(
    channel: Channel,
    window: usize,
    mut book: Book,
    mut queue: mpsc::UnboundedReceiver<Job>,
    counters: Counters,
) {
    // Publishes in flight, each borrowing the channel, held inline in the
    // set's own task node (not boxed: one allocation per publish, not two
    // and a copy of the future).
    let mut in_flight = FuturesUnordered::new();
    let mut closed = false;
    loop {
        while in_flight.len() < window {
            let Some((key, item)) = book.next_to_send() else {
                break;
            };
            in_flight.push(publish(&channel, key, item));
        }
        if closed && in_flight.is_empty() {
            // The publisher let go of this lane and nothing is left to publish.
            return;
        }
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let mut broken = book.resolve(done);
                // Take every confirm already in before answering (see the
                // module doc: a return may ride on another event's confirm).
                while let Some(done) = ready(&mut in_flight).await {
                    broken |= book.resolve(done);
                }
                // Counted before the answers: a caller that reads the
                // counters once answered finds its copies in them. And
                // before a broken channel's end: copies confirmed in this
                // round are stored.
                if let Some(c) = counters.get() {
                    let (written, lost, bytes) = std::mem::take(&mut book.copies);
                    c.written.inc_by(written);
                    c.lost.inc_by(lost);
                    c.bytes.inc_by(bytes);
                }
                if broken {
                    book.lose_all();
                    return;
                }
                book.answer_finished();
                book.report_progress(tokio::time::Instant::now());
            }
            job = queue.recv(), if !closed => match job {
                Some(job) => book.add(job),
                None => closed = true,
            },
        }
    }
}

/// The next result already in, without waiting.
async fn ready<F: Future<Output = Done>>(in_flight: &mut FuturesUnordered<F>) -> Option<Done> {
    std::future::poll_fn(|cx| match in_flight.poll_next_unpin(cx) {
        Poll::Ready(done) => Poll::Ready(done),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Publishes one event and waits for its confirm.
async fn publish(channel: &Channel, key: Key, item: Arc<Item>) -> Done {
    let result = async {
        channel
            .basic_publish(
                item.exchange.clone(),
                item.routing_key.clone(),
                // mandatory: an event no queue takes comes back as an error
                // instead of vanishing (the alternate exchange normally takes it).
                // Not for archive copies: the archive never fails a publish.
                BasicPublishOptions {
                    mandatory: item.copies == 0,
                    ..BasicPublishOptions::default()
                },
                &item.body,
                item.properties.clone(),
            )
            .await?
            .await
    }
    .await;
    (key, result)
}
