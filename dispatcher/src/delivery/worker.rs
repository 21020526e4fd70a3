//! One endpoint's worker: takes a place on a consumer channel of the pool
//! ([`super::channels`]), consumes its queue (or probes it while the breaker
//! is half-open), gathers batches and runs `attempt::process` on each,
//! within the endpoint's concurrency and rate limits; in-flight batches
//! finish before it returns, and what it had prefetched goes back to the
//! queue.

use crate::delivery::attempt::process;
use crate::delivery::availability::is_paused;
use crate::delivery::batch::next_batch;
use crate::delivery::breaker::{Breaker, State as BreakerState};
use crate::delivery::channels::{Channels, Lease};
use crate::delivery::failures::FailureLines;
use crate::delivery::limit::Limiter;
use crate::delivery::route::Router;
use common::config::Endpoint;
use common::metrics::DispatcherMetrics;
use common::topology::Topology;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicGetOptions;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a worker shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Names.
    pub topology: Topology,
    /// The HTTP client and its settings (`[http]`), replaced in place when
    /// a reload changes them.
    pub http: crate::delivery::http_client::HttpClient,
    /// Metrics.
    pub metrics: DispatcherMetrics,
    /// Prefetch per consumer (raised to the batch size if smaller).
    pub prefetch: u16,
    /// Largest message delivered; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// Endpoints paused after a 410, until their config changes.
    pub paused: Arc<std::sync::Mutex<std::collections::HashMap<String, url::Url>>>,
    /// Endpoints an operator paused (`hookpost-admin endpoints pause`).
    pub holds: tokio::sync::watch::Receiver<common::registry::control::Holds>,
    /// The broker channels of this connection, shared by every worker.
    pub channels: Channels,
    /// Where transforms run.
    pub sandbox: crate::delivery::transform::Sandbox,
    /// Logs endpoint channel failures with backoff across all endpoints
    /// (a broker limit fails many endpoints at once, again and again).
    pub channel_failures: Arc<std::sync::Mutex<common::logging::Throttle>>,
    /// Where each attempt is recorded.
    pub log: crate::delivery::log::AttemptLog,
    /// Where operational events go.
    pub notices: crate::delivery::notices::Notices,
}

impl Shared {
    /// Counts a repeated failure; `Some(n)` when it should be logged now
    /// (with backoff), standing for `n` failures.
    pub fn failure_due(&self) -> Option<u64> {
        self.channel_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hit()
    }
}

/// Why a worker stopped.
#[derive(Debug)]
pub enum Exit {
    /// `stop` fired; in-flight batches finished.
    Stopped,
    /// The circuit breaker opened: wait for its cooldown, then run again (to probe).
    Suspended,
    /// The channel or connection failed; the supervisor should rebuild.
    Lost(String),
}

/// Runs the pipeline for `endpoint` on the pool's channels until `stop`
/// fires, the breaker opens, or the channel fails. In-flight requests finish
/// before it returns; deliveries it had not taken go back to the queue.
/// `just_declared`: this process declared the queue moments ago (the first
/// run after a declaration), so the check that it exists is skipped.
pub async fn run(
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    breaker: Arc<Breaker>,
    lines: Arc<FailureLines>,
    just_declared: bool,
) -> Exit {
    match consume(&endpoint, &shared, &stop, &breaker, lines, just_declared).await {
        Ok(exit) => exit,
        Err(e) => Exit::Lost(e.to_string()),
    }
}

type Deliveries = std::pin::Pin<Box<dyn futures_util::Stream<Item = Delivery> + Send>>;

async fn consume(
    endpoint: &Arc<Endpoint>,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    breaker: &Arc<Breaker>,
    lines: Arc<FailureLines>,
    just_declared: bool,
) -> Result<Exit, lapin::Error> {
    let id = endpoint.id.as_str();
    if is_paused(shared, endpoint) {
        shared.metrics.paused.with_label_values(&[id]).set(1);
        tracing::warn!(endpoint = %id, "Endpoint is paused after a 410 Gone; change its config and reload to resume.");
        stop.cancelled().await;
        return Ok(Exit::Stopped);
    }
    if crate::delivery::availability::held(&shared.holds.borrow(), id) {
        return Ok(Exit::Suspended);
    }
    shared.metrics.paused.with_label_values(&[id]).set(0);
    let state = breaker.state();
    shared
        .metrics
        .breaker_state
        .with_label_values(&[id])
        .set(state.gauge());
    if matches!(state, BreakerState::Open { .. }) {
        return Ok(Exit::Suspended);
    }
    let queue = shared.topology.endpoint_queue(id);
    let lease = Box::pin(shared.channels.lease()).await?;
    // A refusal closes a channel for every consumer on it: on a shared one,
    // make sure the queue exists first (unless it was declared just now:
    // checking 10,000 queues one at a time would slow every start).
    if lease.is_shared()
        && !just_declared
        && !Box::pin(shared.channels.queue_exists(&queue)).await?
    {
        Box::pin(lease.release()).await;
        return Ok(Exit::Lost(format!("queue {queue} does not exist")));
    }
    let acks = lease.acks();
    let router = Router::new(
        shared.channels.clone(),
        shared.topology.clone(),
        endpoint.id.clone(),
        acks.clone(),
    );
    let consume = lease.channel().clone();
    let mut prefetch = crate::delivery::limit::capped_prefetch(
        shared
            .prefetch
            .max(u16::try_from(endpoint.batch_size).unwrap_or(u16::MAX)),
        endpoint.rate_limit,
        endpoint.batch_size,
    );
    if lease.may_be_shared() {
        prefetch = crate::delivery::limit::shared_prefetch(
            prefetch,
            endpoint.max_in_flight,
            endpoint.batch_size,
        );
    }

    // A consumer error (channel or connection lost) ends the stream.
    let lost: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    // `consuming` ends the loop (shutdown, pause or suspension); `pause` says
    // it was a 410, `suspend` that the breaker opened.
    let consuming = stop.child_token();
    let pause = CancellationToken::new();
    let suspend = CancellationToken::new();
    let in_flight = Arc::new(Semaphore::new(endpoint.max_in_flight as usize));
    let mut limiter = endpoint.rate_limit.map(Limiter::new);
    let tracker = TaskTracker::new();
    // An operator's pause suspends the worker like an open breaker.
    let hold_watch = {
        let (mut holds, consuming, suspend, id) = (
            shared.holds.clone(),
            consuming.clone(),
            suspend.clone(),
            endpoint.id.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                r = holds.wait_for(|h| crate::delivery::availability::held(h, &id)) => if r.is_ok() {
                    suspend.cancel();
                    consuming.cancel();
                },
                () = consuming.cancelled() => {}
            }
        })
    };
    let stops = Stops {
        consuming: consuming.clone(),
        pause: pause.clone(),
        suspend: suspend.clone(),
        breaker: breaker.clone(),
        lines,
    };
    let batch_size = endpoint.batch_size as usize;
    // Each batch task holds the worker's `Shared` by one reference count,
    // not a copy of its dozens of handles (cloned per event at batch 1).
    let task_shared = Arc::clone(shared);
    let mut lost_publisher = false;
    // The consumer starts once the breaker is closed; while it is half-open,
    // single messages are fetched as probes instead (nothing is prefetched).
    let mut consumer: Option<(Deliveries, lapin::types::ShortString)> = None;
    loop {
        if consuming.is_cancelled() {
            break;
        }
        let probing = breaker.state() == BreakerState::HalfOpen;
        let batch = if probing {
            match Box::pin(get_one(&consume, &queue, &consuming)).await {
                Ok(Some(delivery)) => vec![delivery],
                Ok(None) => break,
                Err(e) => {
                    note_lost(&lost, &e);
                    break;
                }
            }
        } else {
            if consumer.is_none() {
                // Bounded prefetch: a slow endpoint holds at most this many messages.
                match Box::pin(start_consumer(&lease, &queue, prefetch, &lost)).await {
                    Ok(started) => consumer = Some(started),
                    Err(e) => {
                        note_lost(&lost, &e);
                        break;
                    }
                }
                shared.metrics.consuming.with_label_values(&[id]).set(1);
                tracing::info!(endpoint = %id, queue = %queue, prefetch, "Consuming.");
            }
            let Some((deliveries, _)) = consumer.as_mut() else {
                break;
            };
            let Some(batch) =
                next_batch(deliveries, batch_size, endpoint.batch_interval, &consuming).await
            else {
                break;
            };
            batch
        };
        acks.register(&batch).await;
        if let Some(limiter) = limiter.as_mut() {
            tokio::select! {
                () = limiter.acquire() => {}
                () = consuming.cancelled() => {}
            }
        }
        let permit = if consuming.is_cancelled() || !router.is_open() {
            None
        } else {
            tokio::select! {
                p = in_flight.clone().acquire_owned() => p.ok(),
                () = consuming.cancelled() => None,
            }
        };
        let Some(permit) = permit else {
            // Shutting down, pausing, suspending, or the publish channel died:
            // hand the batch back untouched.
            lost_publisher = !router.is_open();
            Box::pin(hand_back(
                &router,
                &batch,
                suspend.is_cancelled() && !lost_publisher,
            ))
            .await;
            break;
        };
        if probing {
            // The probe's outcome decides whether consuming starts.
            Box::pin(process(endpoint, shared, &router, batch, &stops)).await;
            drop(permit);
            continue;
        }
        let (endpoint, shared, router, stops) = (
            endpoint.clone(),
            task_shared.clone(),
            router.clone(),
            stops.clone(),
        );
        // Boxed: spawning moves the task's future, and `process` (with the
        // HTTP request inline) is several KB.
        tracker.spawn(async move {
            Box::pin(process(&endpoint, &shared, &router, batch, &stops)).await;
            drop(permit);
        });
    }
    // Stop taking new messages and give back what was prefetched (the
    // channel may stay open for other endpoints), let in-flight requests
    // finish (each bounded by its timeout), then leave the channel.
    if let Some(consumer) = consumer.take() {
        let park = suspend.is_cancelled() && router.is_open();
        Box::pin(give_back_prefetched(
            id, &lease, consumer, &acks, &router, park,
        ))
        .await;
    }
    hold_watch.abort();
    tracker.close();
    tracker.wait().await;
    if let Err(e) = Box::pin(acks.flush()).await {
        tracing::warn!(endpoint = %id, error = %e, "Final acks failed; the broker redelivers those messages.");
    }
    Box::pin(lease.release()).await;
    shared.metrics.consuming.with_label_values(&[id]).set(0);
    if pause.is_cancelled() {
        shared.metrics.paused.with_label_values(&[id]).set(1);
        stop.cancelled().await;
        return Ok(Exit::Stopped);
    }
    if lost_publisher {
        return Ok(Exit::Lost("the publishing channel closed".to_owned()));
    }
    if suspend.is_cancelled() && !stop.is_cancelled() {
        return Ok(Exit::Suspended);
    }
    if !consuming.is_cancelled() {
        let why = lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| "consumer cancelled by the broker".to_owned());
        return Ok(Exit::Lost(why));
    }
    Ok(Exit::Stopped)
}

/// Cancels the consumer and returns what it had prefetched: to the tail of
/// the queue when `park` (a suspension: attempts untouched, where a requeue
/// would count toward the quorum queue's delivery limit), else by a requeue.
async fn give_back_prefetched(
    endpoint: &str,
    lease: &Lease,
    (mut deliveries, tag): (Deliveries, lapin::types::ShortString),
    acks: &crate::delivery::acks::AckTracker,
    router: &Router,
    park: bool,
) {
    let cancelled = lease.cancel(endpoint, tag).await;
    // After the cancel, the stream yields what was already sent, then ends.
    while cancelled
        && let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(2), deliveries.next()).await
    {
        acks.register(std::slice::from_ref(&delivery)).await;
        hand_back(router, std::slice::from_ref(&delivery), park).await;
    }
}

/// Records why the worker lost its channel (the cleanup after the loop runs as usual).
fn note_lost(lost: &std::sync::Mutex<Option<String>>, e: &lapin::Error) {
    *lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
}

async fn start_consumer(
    lease: &Lease,
    queue: &str,
    prefetch: u16,
    lost: &Arc<std::sync::Mutex<Option<String>>>,
) -> Result<(Deliveries, lapin::types::ShortString), lapin::Error> {
    let consumer = lease.consume(queue, prefetch).await?;
    let tag = consumer.tag();
    let lost_in_stream = lost.clone();
    let deliveries: Deliveries = Box::pin(
        consumer
            .take_while(move |r| {
                if let Err(e) = r {
                    *lost_in_stream
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                }
                std::future::ready(r.is_ok())
            })
            .filter_map(|r| std::future::ready(r.ok()))
            .fuse(),
    );
    Ok((deliveries, tag))
}

/// One message for a half-open breaker's probe; `None` once `stop` fires.
async fn get_one(
    channel: &lapin::Channel,
    queue: &str,
    stop: &CancellationToken,
) -> Result<Option<Delivery>, lapin::Error> {
    loop {
        let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false });
        // Bounded like the consumer's waits: given up, the worker's channel
        // counts as lost and the generation's rebuild returns what it held.
        let got = crate::delivery::channels::wait_on_channel(channel, get)
            .await
            .ok_or_else(|| crate::delivery::channels::no_answer("basic.get"))??;
        if let Some(message) = got {
            return Ok(Some(message.delivery));
        }
        tokio::select! {
            () = tokio::time::sleep(PROBE_POLL) => {}
            () = stop.cancelled() => return Ok(None),
        }
    }
}

/// How often a half-open breaker looks for a message to probe with.
const PROBE_POLL: Duration = Duration::from_millis(500);

/// Returns deliveries untaken: to the tail of the queue (`park`, attempts
/// untouched) or by a requeue.
pub(super) async fn hand_back(router: &Router, deliveries: &[Delivery], park: bool) {
    for d in deliveries {
        if park && router.park(d).await.is_ok() {
            continue;
        }
        router.requeue(d).await;
    }
}

/// The tokens a batch task may cancel, and the breaker it reports to.
#[derive(Clone)]
pub(super) struct Stops {
    /// Ends the consume loop.
    pub(super) consuming: CancellationToken,
    /// Marks the endpoint paused (410).
    pub(super) pause: CancellationToken,
    /// Marks the breaker open.
    pub(super) suspend: CancellationToken,
    /// The endpoint's circuit breaker.
    pub(super) breaker: Arc<Breaker>,
    /// Its per-event failure lines, logged with backoff.
    pub(super) lines: Arc<FailureLines>,
}
