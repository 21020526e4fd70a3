//! A lane's bookkeeping: which event a confirm or a return settles, each
//! job's answer and progress, and the archive copies counted. Kept apart from
//! the channel ([`super::lane`]) so that it is tested without a broker.

use super::lane::{Done, Item, Job, Key, Outcome};
use lapin::Confirmation;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Where each job stands. Kept apart from the channel so the bookkeeping
/// (which event a confirm or a return settles) is tested without a broker.
#[derive(Default)]
pub(super) struct Book {
    next_job: u64,
    jobs: HashMap<u64, JobState>,
    /// Events not yet published, in order.
    to_send: VecDeque<Key>,
    /// Archive copies (events) settled since the last count: written, lost,
    /// bytes written.
    pub(super) copies: (u64, u64, u64),
    /// Least time between two progress reports to the jobs waiting their
    /// turn, and four times that of a job's own (see
    /// [`Book::report_progress`]); zero reports every round.
    report_every: Duration,
    /// When the jobs waiting their turn were last told of progress.
    waiting_reported: Option<Instant>,
    /// Jobs whose state changed since the last round (an event settled,
    /// the job failed or was added empty): only these can be answered,
    /// forgotten or have progressed, so a round visits these, not every
    /// job (thousands of single-event calls may wait behind the window).
    /// Each job once (see [`JobState::touched`]); the buffer is kept from
    /// round to round.
    touched: Vec<u64>,
}

struct JobState {
    items: Vec<Arc<Item>>,
    confirmed: Vec<bool>,
    confirmed_count: usize,
    /// The index of its oldest unconfirmed event.
    oldest_unconfirmed: usize,
    /// One of its events was confirmed since the last progress report.
    progressed: bool,
    /// When its caller was last woken with its progress.
    told: Option<Instant>,
    /// Published, confirm not yet in.
    in_flight: usize,
    /// Answered with a failure; its events not yet published never will be.
    failed: bool,
    /// In [`Book::touched`] already this round: a round settles hundreds of
    /// one job's events, and each would otherwise add it again.
    touched: bool,
    answer: Option<oneshot::Sender<Outcome>>,
    progress: watch::Sender<usize>,
}

impl Book {
    /// A book that tells the jobs waiting their turn of the channel's
    /// progress at most once per `report_every`, and a job of its own four
    /// times as often at most.
    pub(super) fn new(report_every: Duration) -> Self {
        Self {
            report_every,
            ..Self::default()
        }
    }

    /// Marks `job` as changed this round (once).
    fn touch(&mut self, job: u64) {
        if let Some(state) = self.jobs.get_mut(&job)
            && !std::mem::replace(&mut state.touched, true)
        {
            self.touched.push(job);
        }
    }

    pub(super) fn add(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        let n = job.items.len();
        self.to_send.extend((0..n).map(|i| (id, i)));
        self.jobs.insert(
            id,
            JobState {
                confirmed: vec![false; n],
                confirmed_count: 0,
                oldest_unconfirmed: 0,
                progressed: false,
                told: None,
                in_flight: 0,
                items: job.items,
                failed: false,
                touched: false,
                answer: Some(job.answer),
                progress: job.progress,
            },
        );
        if n == 0 {
            self.touch(id);
            self.answer_finished();
        }
    }

    /// The next event to publish, skipping those of failed jobs and of jobs
    /// nobody waits for any more (the call failed on another of its chunks,
    /// or was dropped): what is not sent of those never will be.
    pub(super) fn next_to_send(&mut self) -> Option<(Key, Arc<Item>)> {
        while let Some(key) = self.to_send.pop_front() {
            let Some(job) = self.jobs.get_mut(&key.0) else {
                continue;
            };
            if job.answer.as_ref().is_some_and(oneshot::Sender::is_closed) {
                job.answer = None;
                job.failed = true;
                if !std::mem::replace(&mut job.touched, true) {
                    self.touched.push(key.0);
                }
            }
            if !job.failed {
                job.in_flight += 1;
                return Some((key, job.items[key.1].clone()));
            }
        }
        None
    }

    /// Records one event's result; true when the channel failed.
    pub(super) fn resolve(&mut self, (key, result): Done) -> bool {
        let returned = match result {
            Err(_) => return true,
            Ok(Confirmation::Ack(returned)) => {
                self.settle(key, true);
                returned
            }
            Ok(Confirmation::NotRequested) => {
                self.settle(key, true);
                None
            }
            Ok(Confirmation::Nack(returned)) => {
                self.settle(key, false);
                returned
            }
        };
        if let Some(message) = returned {
            let id = message
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            self.returned(&id, message.reply_text.as_str());
        }
        false
    }

    pub(super) fn settle(&mut self, (job, i): Key, acked: bool) {
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        if !std::mem::replace(&mut state.touched, true) {
            self.touched.push(job);
        }
        state.in_flight -= 1;
        let item = &state.items[i];
        let copies = item.copies as u64;
        if copies > 0 {
            if acked {
                self.copies.0 += copies;
                self.copies.2 += item.body.len() as u64;
            } else {
                self.copies.1 += copies;
            }
        }
        // Refused copies are lost, not the events: the job goes on.
        if acked || copies > 0 {
            state.confirmed[i] = true;
            state.confirmed_count += 1;
            state.progressed = true;
            while state.confirmed.get(state.oldest_unconfirmed) == Some(&true) {
                state.oldest_unconfirmed += 1;
            }
        } else {
            let id = state.items[i].id.clone();
            state.fail(Outcome::Nacked { id });
        }
    }

    /// The broker returned event `id`: every job still waiting for it fails.
    /// An archive message carries the id of its first event but is never
    /// `mandatory`, so it is never what came back: a job holding only the
    /// copies of other calls' events (`packer.rs`) does not fail with it.
    pub(super) fn returned(&mut self, id: &str, reply: &str) {
        let mut found = false;
        for (job, state) in &mut self.jobs {
            if state
                .items
                .iter()
                .any(|item| item.copies == 0 && item.id == id)
            {
                found = true;
                if !std::mem::replace(&mut state.touched, true) {
                    self.touched.push(*job);
                }
                state.fail(Outcome::Unroutable {
                    id: id.to_owned(),
                    reply: reply.to_owned(),
                });
            }
        }
        if !found {
            tracing::warn!(event = %id, reply, "Broker returned an event no publish waits for.");
        }
    }

    /// Answers the jobs whose every event is confirmed; forgets failed jobs
    /// once none of their events is in flight. Only the jobs touched since
    /// the last round can have changed.
    pub(super) fn answer_finished(&mut self) {
        for job in &self.touched {
            let Some(state) = self.jobs.get_mut(job) else {
                continue;
            };
            let done = if state.failed {
                state.in_flight == 0
            } else if state.confirmed_count < state.items.len() {
                false
            } else {
                if let Some(answer) = state.answer.take() {
                    let _ = answer.send(Outcome::Confirmed);
                }
                true
            };
            if done {
                self.jobs.remove(job);
            }
        }
    }

    /// Tells each waiting job that the broker made progress for it, after a
    /// round of confirms (`now`): one of its events was confirmed, or none
    /// of its events is in flight (they wait their turn, and the confirms
    /// just in make room for them). A job hears of its own progress at most
    /// once per quarter of `report_every` (the watchdog gives each report a
    /// timeout and a quarter, so a call never fails sooner than a timeout
    /// after its last confirm), and the jobs
    /// waiting their turn all together once per `report_every`: a round
    /// settles a few events of a part of 512, and waking
    /// the caller for each round cost the publisher a tenth of its CPU
    /// (BENCHMARKS.md, session 34); with thousands of callers queued behind
    /// the window, telling each of them on every round would wake every
    /// caller's task hundreds of times a second for nothing, and visiting
    /// them all would cost the round as much. The value (the oldest
    /// unconfirmed event) is kept current in between, without waking the
    /// caller: a call that times out names the right event.
    pub(super) fn report_progress(&mut self, now: Instant) {
        let is_due = |at: Option<Instant>, every: Duration| {
            at.is_none_or(|at| now.saturating_duration_since(at) >= every)
        };
        let own_every = self.report_every / 4;
        for job in self.touched.drain(..) {
            let Some(state) = self.jobs.get_mut(&job) else {
                continue;
            };
            state.touched = false;
            if state.progressed {
                state.progressed = false;
                if state.answer.is_some() {
                    let due = is_due(state.told, own_every);
                    if due {
                        state.told = Some(now);
                    }
                    let oldest = state.oldest_unconfirmed;
                    state.progress.send_if_modified(|at| {
                        *at = oldest;
                        due
                    });
                }
            }
        }
        let due = is_due(self.waiting_reported, self.report_every);
        if due {
            self.waiting_reported = Some(now);
            for state in self.jobs.values_mut() {
                if state.answer.is_some() && state.in_flight == 0 {
                    state.progress.send_replace(state.oldest_unconfirmed);
                }
            }
        }
    }

    /// The channel failed: every waiting job learns which events have no confirm.
    pub(super) fn lose_all(&mut self) {
        for (_, mut state) in self.jobs.drain() {
            let unconfirmed = state
                .items
                .iter()
                .zip(&state.confirmed)
                .filter(|(_, confirmed)| !**confirmed)
                .map(|(item, _)| item.clone())
                .collect();
            if let Some(answer) = state.answer.take() {
                let _ = answer.send(Outcome::Lost { unconfirmed });
            }
        }
        self.to_send.clear();
        self.touched.clear();
    }
}

impl JobState {
    /// Answers at once with the first failure; the job's events not yet
    /// published are not (those in flight settle unseen).
    fn fail(&mut self, failure: Outcome) {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(failure);
        }
        self.failed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::lane::Ticket;
    use lapin::BasicProperties;
    use lapin::message::{BasicReturnMessage, Delivery};

    fn item(id: &str) -> Arc<Item> {
        Arc::new(Item {
            copies: 0,
            id: id.to_owned(),
            exchange: "x".into(),
            routing_key: "t".into(),
            body: bytes::Bytes::new(),
            properties: BasicProperties::default().with_message_id(id.into()),
        })
    }

    fn ticket(book: &mut Book, ids: &[&str]) -> Ticket {
        let (job, ticket) = Job::new(ids.iter().map(|id| item(id)).collect());
        book.add(job);
        ticket
    }

    fn job(book: &mut Book, ids: &[&str]) -> oneshot::Receiver<Outcome> {
        ticket(book, ids).answer
    }

    fn ack(book: &mut Book, key: Key) {
        assert!(!book.resolve((key, Ok(Confirmation::Ack(None)))));
        book.answer_finished();
        book.report_progress(Instant::now());
    }

    fn returned(id: &str) -> BasicReturnMessage {
        let mut delivery = Delivery::mock(0, "x".into(), "t".into(), false, Vec::new());
        delivery.properties = BasicProperties::default().with_message_id(id.into());
        BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }
    }

    fn send_all(book: &mut Book) -> Vec<Key> {
        std::iter::from_fn(|| book.next_to_send().map(|(key, _)| key)).collect()
    }

    #[test]
    fn a_refused_archive_copy_is_counted_lost_and_the_job_still_succeeds() {
        let mut book = Book::default();
        let copy = |id: &str| {
            Arc::new(Item {
                copies: 1,
                id: id.to_owned(),
                exchange: "".into(),
                routing_key: "archive".into(),
                body: bytes::Bytes::from_static(b"{}"),
                properties: BasicProperties::default().with_message_id(id.into()),
            })
        };
        let (j, mut ticket) = Job::new(vec![item("a"), copy("a"), item("b"), copy("b")]);
        book.add(j);
        let keys = send_all(&mut book);
        assert_eq!(keys.len(), 4);
        book.resolve((keys[0], Ok(Confirmation::Ack(None))));
        book.resolve((keys[1], Ok(Confirmation::Nack(None))));
        book.resolve((keys[2], Ok(Confirmation::Ack(None))));
        book.resolve((keys[3], Ok(Confirmation::Ack(None))));
        book.answer_finished();
        assert!(matches!(ticket.answer.try_recv(), Ok(Outcome::Confirmed)));
        assert_eq!(book.copies, (1, 1, 2), "written, lost, bytes written");
        // A refused event still fails its job.
        let mut answered = job(&mut book, &["c"]);
        let keys = send_all(&mut book);
        book.resolve((keys[0], Ok(Confirmation::Nack(None))));
        assert!(matches!(answered.try_recv(), Ok(Outcome::Nacked { .. })));
    }

    #[test]
    fn a_job_nobody_waits_for_is_not_sent_and_then_forgotten() {
        let mut book = Book::default();
        let first = ticket(&mut book, &["a", "b"]);
        let mut waited = job(&mut book, &["c"]);
        let (key, _) = book.next_to_send().expect("a");
        drop(first);
        // "a" is in flight; "b" is not sent now that its caller is gone.
        let rest = send_all(&mut book);
        assert_eq!(rest.len(), 1, "only c: {rest:?}");
        ack(&mut book, key);
        ack(&mut book, rest[0]);
        assert!(matches!(waited.try_recv(), Ok(Outcome::Confirmed)));
        assert!(book.jobs.is_empty(), "the abandoned job is forgotten");
    }

    #[test]
    fn a_job_dropped_before_any_of_it_was_sent_is_forgotten_at_the_next_round() {
        let mut book = Book::default();
        let mut waited = job(&mut book, &["a"]);
        drop(ticket(&mut book, &["x", "y"]));
        let sent = send_all(&mut book);
        assert_eq!(sent.len(), 1, "only a: {sent:?}");
        ack(&mut book, sent[0]);
        assert!(matches!(waited.try_recv(), Ok(Outcome::Confirmed)));
        assert!(book.jobs.is_empty(), "the abandoned job is forgotten");
        assert!(book.touched.is_empty());
    }

    #[test]
    fn a_round_lists_a_job_once_however_many_of_its_events_settle() {
        let mut book = Book::default();
        let ids: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut answered = job(&mut book, &ids[..]);
        let mut waiting = job(&mut book, &["x"]);
        let keys = send_all(&mut book);
        for key in &keys[..50] {
            assert!(!book.resolve((*key, Ok(Confirmation::Ack(None)))));
        }
        assert_eq!(book.touched, [0]);
        book.answer_finished();
        book.report_progress(Instant::now());
        assert!(book.touched.is_empty());
        assert!(answered.try_recv().is_err(), "half confirmed");
        // The next round lists it again, and the other job once.
        for key in &keys[50..] {
            assert!(!book.resolve((*key, Ok(Confirmation::Ack(None)))));
        }
        assert_eq!(book.touched, [0, 1]);
        book.answer_finished();
        book.report_progress(Instant::now());
        assert!(matches!(answered.try_recv(), Ok(Outcome::Confirmed)));
        assert!(matches!(waiting.try_recv(), Ok(Outcome::Confirmed)));
        assert!(book.jobs.is_empty() && book.touched.is_empty());
    }

    #[test]
    fn a_job_is_answered_once_every_event_is_confirmed() {
        let mut book = Book::default();
        let mut answered = job(&mut book, &["a", "b"]);
        let keys = send_all(&mut book);
        assert_eq!(keys.len(), 2);
        assert!(!book.resolve((keys[1], Ok(Confirmation::Ack(None)))));
        book.answer_finished();
        assert!(answered.try_recv().is_err(), "one confirm is still missing");
        assert!(!book.resolve((keys[0], Ok(Confirmation::Ack(None)))));
        book.answer_finished();
        assert!(matches!(answered.try_recv(), Ok(Outcome::Confirmed)));
        assert!(book.jobs.is_empty());
    }

    #[test]
    fn a_return_carried_by_another_jobs_confirm_fails_only_the_returned_event() {
        let mut book = Book::default();
        let mut first = job(&mut book, &["a1", "a2"]);
        let mut second = job(&mut book, &["b1"]);
        let keys = send_all(&mut book);
        // lapin hands the return of b1 to whichever confirm it completes
        // first: here a1's.
        book.resolve((keys[0], Ok(Confirmation::Ack(Some(returned("b1"))))));
        book.resolve((keys[1], Ok(Confirmation::Ack(None))));
        book.resolve((keys[2], Ok(Confirmation::Ack(None))));
        book.answer_finished();
        assert!(matches!(first.try_recv(), Ok(Outcome::Confirmed)));
        match second.try_recv() {
            Ok(Outcome::Unroutable { id, reply }) => {
                assert_eq!((id.as_str(), reply.as_str()), ("b1", "NO_ROUTE"));
            }
            other => panic!("b1 must fail as unroutable: {other:?}"),
        }
    }

    #[test]
    fn a_return_fails_the_events_job_not_a_job_of_archive_copies_sharing_its_id() {
        let mut book = Book::default();
        let mut event = job(&mut book, &["e1"]);
        // The packer's message holding e1's copy carries e1's id.
        let (copies, mut packed) = Job::new(vec![Arc::new(Item {
            copies: 3,
            id: "e1".to_owned(),
            exchange: "".into(),
            routing_key: "archive".into(),
            body: bytes::Bytes::from_static(b"{}"),
            properties: BasicProperties::default().with_message_id("e1".into()),
        })]);
        book.add(copies);
        let keys = send_all(&mut book);
        book.resolve((keys[0], Ok(Confirmation::Ack(Some(returned("e1"))))));
        book.resolve((keys[1], Ok(Confirmation::Ack(None))));
        book.answer_finished();
        assert!(matches!(
            event.try_recv(),
            Ok(Outcome::Unroutable { id, .. }) if id == "e1"
        ));
        assert!(matches!(packed.answer.try_recv(), Ok(Outcome::Confirmed)));
        assert_eq!(book.copies, (3, 0, 2));
    }

    #[test]
    fn a_nack_fails_its_job_at_once_and_the_rest_is_not_published() {
        let mut book = Book::default();
        let mut answered = job(&mut book, &["a", "b", "c"]);
        let mut other = job(&mut book, &["d"]);
        let (a, _) = book.next_to_send().expect("a");
        book.resolve((a, Ok(Confirmation::Nack(None))));
        match answered.try_recv() {
            Ok(Outcome::Nacked { id }) => assert_eq!(id, "a"),
            other => panic!("a must be nacked: {other:?}"),
        }
        // b and c are skipped; d is next.
        let rest = send_all(&mut book);
        assert_eq!(rest.len(), 1);
        book.resolve((rest[0], Ok(Confirmation::Ack(None))));
        book.answer_finished();
        assert!(matches!(other.try_recv(), Ok(Outcome::Confirmed)));
        assert!(book.jobs.is_empty());
    }

    #[test]
    fn a_failed_channel_hands_back_only_the_unconfirmed_events() {
        let mut book = Book::default();
        let mut answered = job(&mut book, &["a", "b", "c"]);
        let keys = send_all(&mut book);
        book.resolve((keys[1], Ok(Confirmation::Ack(None))));
        let broken = book.resolve((
            keys[0],
            Err(lapin::Error::from(lapin::ErrorKind::InvalidChannel(1))),
        ));
        assert!(broken);
        book.lose_all();
        match answered.try_recv() {
            Ok(Outcome::Lost { unconfirmed }) => {
                let ids: Vec<&str> = unconfirmed.iter().map(|i| i.id.as_str()).collect();
                assert_eq!(ids, ["a", "c"]);
            }
            other => panic!("lost expected: {other:?}"),
        }
    }

    #[test]
    fn an_empty_job_is_confirmed_at_once() {
        let mut book = Book::default();
        let mut answered = job(&mut book, &[]);
        assert!(matches!(answered.try_recv(), Ok(Outcome::Confirmed)));
    }

    #[test]
    fn each_confirm_reports_progress_with_the_oldest_unconfirmed_event() {
        let mut book = Book::default();
        let mut t = ticket(&mut book, &["a", "b", "c"]);
        let keys = send_all(&mut book);
        ack(&mut book, keys[1]);
        assert!(t.progress.has_changed().expect("open"), "b confirmed");
        assert_eq!(*t.progress.borrow_and_update(), 0, "a is still unconfirmed");
        ack(&mut book, keys[0]);
        assert!(t.progress.has_changed().expect("open"));
        assert_eq!(*t.progress.borrow_and_update(), 2, "a and b confirmed");
        ack(&mut book, keys[2]);
        assert!(matches!(t.answer.try_recv(), Ok(Outcome::Confirmed)));
    }

    #[test]
    fn a_job_waiting_its_turn_progresses_with_the_jobs_ahead_of_it() {
        let mut book = Book::default();
        let mut ahead = ticket(&mut book, &["a1", "a2"]);
        let mut behind = ticket(&mut book, &["b1"]);
        // A window of one: a1 goes out, a2 and b1 wait.
        let (a1, _) = book.next_to_send().expect("a1");
        ack(&mut book, a1);
        assert!(ahead.progress.has_changed().expect("open"));
        assert!(
            behind.progress.has_changed().expect("open"),
            "room was made"
        );
        ahead.progress.mark_unchanged();
        behind.progress.mark_unchanged();
        let (a2, _) = book.next_to_send().expect("a2");
        let (b1, _) = book.next_to_send().expect("b1");
        // Once b1 is in flight, only its own confirm is progress for it.
        ack(&mut book, a2);
        assert!(matches!(ahead.answer.try_recv(), Ok(Outcome::Confirmed)));
        assert!(!behind.progress.has_changed().expect("open"));
        ack(&mut book, b1);
        assert!(matches!(behind.answer.try_recv(), Ok(Outcome::Confirmed)));
    }

    #[test]
    fn jobs_hear_of_progress_at_most_once_per_interval() {
        let every = Duration::from_millis(100);
        let mut book = Book::new(every);
        let mut ahead = ticket(&mut book, &["a1", "a2", "a3", "a4"]);
        let mut behind: Vec<Ticket> = (0..50)
            .map(|i| ticket(&mut book, &[format!("b{i}").as_str()]))
            .collect();
        let start = Instant::now();
        // A window of one: a1 goes out, everything else waits.
        let mut sent = book.next_to_send().expect("a1").0;
        for (round, at) in [0, 10, 20, 130].into_iter().enumerate() {
            book.settle(sent, true);
            book.answer_finished();
            book.report_progress(start + Duration::from_millis(at));
            // The job whose event was confirmed hears of it on the first
            // round, not within the interval after (the last round answers
            // it), and its value is current every round.
            if round < 3 {
                assert_eq!(
                    ahead.progress.has_changed().expect("open"),
                    round == 0,
                    "round {round}"
                );
                assert_eq!(*ahead.progress.borrow_and_update(), round + 1);
            }
            // The ones waiting: on the first round, not on the next two
            // (within the interval), again once it has passed.
            let told = behind
                .iter_mut()
                .filter(|t| t.progress.has_changed().expect("open"))
                .count();
            assert_eq!(
                told,
                if at == 0 || at == 130 { 50 } else { 0 },
                "at {at} ms"
            );
            behind.iter_mut().for_each(|t| t.progress.mark_unchanged());
            if round < 3 {
                sent = book.next_to_send().expect("next of a").0;
            }
        }
        assert!(matches!(ahead.answer.try_recv(), Ok(Outcome::Confirmed)));
    }

    #[test]
    fn a_job_in_flight_is_told_again_once_the_interval_has_passed() {
        let every = Duration::from_millis(100);
        let mut book = Book::new(every);
        let mut t = ticket(&mut book, &["a", "b", "c", "d"]);
        let keys = send_all(&mut book);
        let start = Instant::now();
        // A job's own progress: at most once per quarter interval (25 ms).
        for (key, at, told) in [
            (keys[0], 0, true),
            (keys[1], 20, false),
            (keys[2], 40, true),
        ] {
            assert!(!book.resolve((key, Ok(Confirmation::Ack(None)))));
            book.answer_finished();
            book.report_progress(start + Duration::from_millis(at));
            assert_eq!(t.progress.has_changed().expect("open"), told, "at {at} ms");
            assert_eq!(*t.progress.borrow_and_update(), key.1 + 1, "at {at} ms");
        }
    }

    #[test]
    fn a_job_whose_events_are_not_confirmed_sees_no_progress() {
        let mut book = Book::default();
        let mut stuck = ticket(&mut book, &["s"]);
        let mut moving = ticket(&mut book, &["m1", "m2"]);
        let keys = send_all(&mut book);
        // The broker confirms the other job's events, never s (a queue
        // without its quorum, say).
        ack(&mut book, keys[1]);
        ack(&mut book, keys[2]);
        assert!(matches!(moving.answer.try_recv(), Ok(Outcome::Confirmed)));
        assert!(!stuck.progress.has_changed().expect("open"));
        assert!(stuck.answer.try_recv().is_err());
    }
}
