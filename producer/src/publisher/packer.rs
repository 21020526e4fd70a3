//! The archive copies of small calls, packed together.
//!
//! A call of a few events (one `publish`, an ingest request of one event)
//! would otherwise get an archive message of its own: with many such calls
//! at once the broker handles two messages per event, and publishing runs at
//! about half its pace (BENCHMARKS.md, `concurrent-publish`). So such a call
//! hands its events to the packer, whose task puts the copies of every call
//! waiting for it into one stream message:
//!
//! - while fewer than [`IN_FLIGHT`] of its messages await their confirm, the
//!   copies of the calls waiting go at once (a call alone is not delayed);
//! - while [`IN_FLIGHT`] do, new calls' copies wait and go together in the
//!   next message (up to [`COPIES_PER_MESSAGE`] events and
//!   [`COPY_MESSAGE_BYTES`]).
//!
//! Each call hears the outcome of the message holding its copies, and
//! returns only after it, as a call whose copies travel with its events does.
//! When a message fails (no confirm within the publish timeout, the broker
//! blocking or away), the calls still waiting fail with it rather than wait
//! another timeout behind it, and their copies, never sent, are counted
//! lost. The copies of a call that is no longer waiting when its turn comes
//! (it failed, or was dropped) are not sent: its events may not have been.

use super::copies::{COPIES_PER_MESSAGE, COPY_MESSAGE_BYTES, pack};
use super::error::PublishError;
use super::lane::{Counters, Item};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::types::ShortString;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The packer's messages awaiting their confirm at once, at most.
pub(super) const IN_FLIGHT: usize = 4;

/// What a call waiting for its copies is told.
pub(super) type Copied = oneshot::Receiver<Result<(), PublishError>>;

/// One call's events whose copies wait for a message.
#[derive(Debug)]
struct Request {
    items: Vec<Arc<Item>>,
    bytes: usize,
    /// When the call was prepared: its copies' archive time.
    at: time::OffsetDateTime,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// The handle on the packer's task; the task ends once every clone is
/// dropped and its messages are settled.
#[derive(Debug, Clone)]
pub(super) struct Packer {
    requests: mpsc::UnboundedSender<Request>,
}

/// Whether the copies of `items` go through the packer: a call of fewer
/// events, and bytes, than one archive message holds.
pub(super) fn takes(items: &[Arc<Item>]) -> bool {
    items.len() < COPIES_PER_MESSAGE && bytes(items) <= COPY_MESSAGE_BYTES
}

fn bytes(items: &[Arc<Item>]) -> usize {
    items.iter().map(|item| item.body.len()).sum()
}

impl Packer {
    /// Starts the task, which publishes each message with `send` (the
    /// publisher's own send: the lane, reconnects, the publish timeout) and
    /// counts the copies it drops in `counters`.
    pub(super) fn start<S, F>(stream: ShortString, counters: Counters, send: S) -> Self
    where
        S: Fn(Vec<Arc<Item>>) -> F + Send + 'static,
        F: Future<Output = Result<(), PublishError>> + Send + 'static,
    {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(stream, counters, send, queue));
        Self { requests }
    }

    /// Whether its task still takes copies (it ends only with its runtime).
    pub(super) fn is_running(&self) -> bool {
        !self.requests.is_closed()
    }

    /// Hands over the copies of `items` (prepared at `at`); the answer comes
    /// once the message holding them is confirmed (or its copies counted
    /// lost), or with the error that message failed with.
    pub(super) fn copy(&self, items: &[Arc<Item>], at: time::OffsetDateTime) -> Copied {
        let (done, copied) = oneshot::channel();
        let request = Request {
            items: items.to_vec(),
            bytes: bytes(items),
            at,
            done,
        };
        // A stopped task drops the request: the call reads that as a failure.
        let _ = self.requests.send(request);
        copied
    }
}

async fn run<S, F>(
    stream: ShortString,
    counters: Counters,
    send: S,
    mut queue: mpsc::UnboundedReceiver<Request>,
) where
    S: Fn(Vec<Arc<Item>>) -> F,
    F: Future<Output = Result<(), PublishError>>,
{
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        while in_flight.len() < IN_FLIGHT && !waiting.is_empty() {
            let batch = take(&mut waiting);
            if batch.is_empty() {
                continue;
            }
            let at = batch.iter().map(|r| r.at).min().unwrap_or_else(now);
            let items: Vec<Arc<Item>> = batch.iter().flat_map(|r| r.items.clone()).collect();
            let message = Arc::new(pack(&items, &stream, at));
            let sent = send(vec![message]);
            in_flight.push(async move { (batch, sent.await) });
        }
        if !open && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            Some((batch, result)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = &result
                    && fails_those_behind(e)
                {
                    // The broker made no progress for a timeout, blocks
                    // publishing or is away: the calls waiting behind would
                    // fail the same way, a timeout later.
                    let lost: usize = waiting.iter().map(|r| r.items.len()).sum();
                    if let Some(c) = counters.get() {
                        c.lost.inc_by(lost as u64);
                    }
                    for request in waiting.drain(..) {
                        let _ = request.done.send(Err(e.clone()));
                    }
                }
                for request in batch {
                    let _ = request.done.send(result.clone());
                }
            }
            request = queue.recv(), if open => match request {
                Some(request) => {
                    waiting.push_back(request);
                    while let Ok(request) = queue.try_recv() {
                        waiting.push_back(request);
                    }
                }
                None => open = false,
            },
        }
    }
}

/// Whether a message's failure is the broker's state, which the messages
/// after it would meet too (not a refusal of this message: a copy refused is
/// counted lost, never an error).
fn fails_those_behind(e: &PublishError) -> bool {
    matches!(
        e,
        PublishError::Timeout { .. }
            | PublishError::Blocked { .. }
            | PublishError::Unavailable(_)
            | PublishError::Channel(_)
            | PublishError::Topology(_)
    )
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The oldest waiting requests whose copies fit one message (at least one,
/// unless none is waiting any more). A request whose call no longer waits is
/// dropped: the call failed or was dropped, maybe before its events went.
fn take(waiting: &mut VecDeque<Request>) -> Vec<Request> {
    let mut batch = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    while let Some(next) = waiting.front() {
        if next.done.is_closed() {
            waiting.pop_front();
            continue;
        }
        let fits = events + next.items.len() <= COPIES_PER_MESSAGE
            && bytes + next.bytes <= COPY_MESSAGE_BYTES;
        if !batch.is_empty() && !fits {
            break;
        }
        events += next.items.len();
        bytes += next.bytes;
        batch.extend(waiting.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::super::copies::tests::item;
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A send the test settles by hand: each message sent, and the way to
    /// answer it.
    type Sent = Arc<Mutex<Vec<(Arc<Item>, Option<oneshot::Sender<Result<(), PublishError>>>)>>>;

    fn packer() -> (Packer, Sent) {
        let sent: Sent = Arc::default();
        let packer = packer_counting(Counters::default(), sent.clone());
        (packer, sent)
    }

    fn packer_counting(counters: Counters, sent: Sent) -> Packer {
        let log = sent;
        Packer::start(
            "archive".into(),
            counters,
            move |mut items: Vec<Arc<Item>>| {
                assert_eq!(items.len(), 1, "one message per send");
                let (answer, answered) = oneshot::channel();
                log.lock()
                    .expect("log")
                    .push((items.remove(0), Some(answer)));
                async move { answered.await.expect("answered") }
            },
        )
    }

    /// `IN_FLIGHT` calls of one event, each sent before the next comes:
    /// every message the packer may have in flight is taken.
    async fn fill(packer: &Packer, at: time::OffsetDateTime) -> Vec<Copied> {
        let mut copied = Vec::new();
        for i in 0..IN_FLIGHT {
            copied.push(packer.copy(&[item(&format!("a{i}"), 1)], at));
            settle().await;
        }
        copied
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn copies(sent: &Sent) -> Vec<usize> {
        sent.lock()
            .expect("log")
            .iter()
            .map(|(m, _)| m.copies)
            .collect()
    }

    fn answer(sent: &Sent, n: usize, result: Result<(), PublishError>) {
        let answer = sent.lock().expect("log")[n].1.take().expect("unanswered");
        answer.send(result).expect("send waits");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_waiting_behind_the_messages_in_flight_share_the_next_one() {
        let (packer, sent) = packer();
        let at = now();
        // Alone, each call's copies go at once, up to IN_FLIGHT messages.
        let mut first = fill(&packer, at).await;
        assert_eq!(copies(&sent), vec![1; IN_FLIGHT]);
        // Then the calls wait, and their copies go together: 300 single
        // events make one message of 256 and one of 44.
        let rest: Vec<Copied> = (0..300)
            .map(|i| packer.copy(&[item(&format!("b{i}"), 10)], at))
            .collect();
        settle().await;
        assert_eq!(copies(&sent).len(), IN_FLIGHT, "nothing more in flight");
        assert!(
            first[0].try_recv().is_err(),
            "not answered before its confirm"
        );
        answer(&sent, 0, Ok(()));
        answer(&sent, 1, Ok(()));
        settle().await;
        assert!(first.remove(0).await.expect("answer").is_ok());
        let mut expected = vec![1; IN_FLIGHT];
        expected.extend([COPIES_PER_MESSAGE, 300 - COPIES_PER_MESSAGE]);
        assert_eq!(copies(&sent), expected);
        // The packed message holds the waiting calls' copies in order.
        let message = sent.lock().expect("log")[IN_FLIGHT].0.clone();
        assert_eq!(message.id, "b0");
        assert_eq!(message.routing_key.as_str(), "archive");
        let lines = common::history::unpacked(
            message
                .properties
                .content_encoding()
                .as_ref()
                .map(|e| e.as_str()),
            &message.body,
        )
        .expect("unpacks")
        .into_owned();
        assert_eq!(lines.split(|b| *b == b'\n').count(), COPIES_PER_MESSAGE);
        // Each call hears its own message's outcome.
        let messages = sent.lock().expect("log").len();
        for n in 2..messages {
            answer(&sent, n, Ok(()));
        }
        for copied in first.into_iter().chain(rest) {
            assert!(copied.await.expect("answer").is_ok());
        }
        drop(packer);
        settle().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_is_cut_at_the_byte_limit_and_a_big_call_goes_alone() {
        let (packer, sent) = packer();
        let at = now();
        let _busy = fill(&packer, at).await;
        let third = COPY_MESSAGE_BYTES / 3;
        let _waiting: Vec<Copied> = (0..4)
            .map(|i| packer.copy(&[item(&format!("b{i}"), third)], at))
            .collect();
        settle().await;
        answer(&sent, 0, Ok(()));
        answer(&sent, 1, Ok(()));
        settle().await;
        let mut expected = vec![1; IN_FLIGHT];
        expected.extend([3, 1]);
        assert_eq!(copies(&sent), expected);
        assert!(takes(&[item("x", COPY_MESSAGE_BYTES)]));
        assert!(!takes(&[item("x", COPY_MESSAGE_BYTES + 1)]));
        let many: Vec<Arc<Item>> = (0..COPIES_PER_MESSAGE)
            .map(|i| item(&i.to_string(), 1))
            .collect();
        assert!(!takes(&many));
        assert!(takes(&many[1..]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_message_fails_its_calls_and_those_waiting_behind_it() {
        let counters = Counters::default();
        let lost = prometheus::IntCounter::new("lost", "lost").expect("counter");
        let _ = counters.set(super::super::lane::CopyCounters {
            written: prometheus::IntCounter::new("written", "written").expect("counter"),
            lost: lost.clone(),
            bytes: prometheus::IntCounter::new("bytes", "bytes").expect("counter"),
        });
        let sent: Sent = Arc::default();
        let packer = packer_counting(counters, sent.clone());
        let at = now();
        let busy = fill(&packer, at).await;
        let waiting = packer.copy(&[item("b", 1), item("b2", 1)], at);
        settle().await;
        let timeout = PublishError::Timeout {
            id: "a0".into(),
            timeout: Duration::from_secs(5),
        };
        answer(&sent, 0, Err(timeout));
        settle().await;
        for copied in busy.into_iter().take(1).chain([waiting]) {
            assert!(
                matches!(
                    copied.await.expect("answer"),
                    Err(PublishError::Timeout { .. })
                ),
                "failed with the message"
            );
        }
        // Nothing was sent for the failed waiting call: its copies are lost.
        assert_eq!(copies(&sent), vec![1; IN_FLIGHT]);
        assert_eq!(lost.get(), 2);
        // The packer goes on: a later call's copies go in a new message.
        answer(&sent, 1, Ok(()));
        settle().await;
        let later = packer.copy(&[item("c", 1)], at);
        settle().await;
        assert_eq!(copies(&sent).len(), IN_FLIGHT + 1);
        answer(&sent, IN_FLIGHT, Ok(()));
        assert!(later.await.expect("answer").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_copies_of_a_call_no_longer_waiting_are_not_sent() {
        let (packer, sent) = packer();
        let at = now();
        let _busy = fill(&packer, at).await;
        let gone = packer.copy(&[item("gone", 1)], at);
        let kept = packer.copy(&[item("kept", 1)], at);
        settle().await;
        // The call failed (say its event was refused) before its turn.
        drop(gone);
        answer(&sent, 0, Ok(()));
        settle().await;
        let last = sent.lock().expect("log").last().map(|(m, _)| m.clone());
        let last = last.expect("a message");
        assert_eq!((last.id.as_str(), last.copies), ("kept", 1));
        answer(&sent, IN_FLIGHT, Ok(()));
        assert!(kept.await.expect("answer").is_ok());
        // A refusal of a message is not the broker's state: those waiting
        // behind it are not failed for it.
        assert!(!fails_those_behind(&PublishError::Nacked {
            id: "x".into()
        }));
        assert!(fails_those_behind(&PublishError::Blocked {
            reason: "low on memory".into()
        }));
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_once_the_handle_is_dropped_and_its_messages_settled() {
        let (packer, sent) = packer();
        let copied = packer.copy(&[item("a", 1)], now());
        drop(packer);
        settle().await;
        assert_eq!(copies(&sent), vec![1]);
        answer(&sent, 0, Ok(()));
        assert!(copied.await.expect("answered after the drop").is_ok());
        settle().await;
        // The task is gone: it held the send closure, and with it the log.
        assert_eq!(Arc::strong_count(&sent), 1);
    }
}
