//! One endpoint's pipeline: consume its queue → batch → build and sign →
//! send → classify → ack, retry or dead-letter.

use crate::delivery::acks::AckTracker;
use crate::delivery::batch::next_batch;
use crate::delivery::breaker::{Breaker, State as BreakerState};
use crate::delivery::classify::{Overrides, Reason, Response, Verdict, classify};
use crate::delivery::decide::{self, Action};
use crate::delivery::limit::Limiter;
use crate::delivery::request::{Part, build};
use crate::delivery::route::{DeadLetter, Router, attempt_of};
use crate::delivery::send::Sender;
use crate::delivery::transform::SandboxError;
use common::Event;
use common::config::Endpoint;
use common::metrics::{DispatcherMetrics, status_class};
use common::topology::Topology;
use common::transform::Outcome;
use futures_util::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
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
    /// The HTTP client.
    pub sender: Sender,
    /// Metrics.
    pub metrics: DispatcherMetrics,
    /// Cap on `Retry-After`.
    pub max_retry_after: Duration,
    /// Prefetch per consumer (raised to the batch size if smaller).
    pub prefetch: u16,
    /// Largest message delivered; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// Endpoints paused after a 410, until their config changes.
    pub paused: Arc<std::sync::Mutex<std::collections::HashMap<String, url::Url>>>,
    /// Endpoints an operator paused (`hookpost-admin endpoints pause`).
    pub holds: tokio::sync::watch::Receiver<common::control::Holds>,
    /// Where transforms run.
    pub sandbox: crate::delivery::transform::Sandbox,
    /// Logs endpoint channel failures with backoff across all endpoints
    /// (a broker limit fails many endpoints at once, again and again).
    pub channel_failures: Arc<std::sync::Mutex<common::logging::Throttle>>,
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

/// Runs the pipeline for `endpoint` on `conn` until `stop` fires, the
/// breaker opens, or the channel fails. In-flight requests finish before it
/// returns; deliveries not yet acked go back to the queue when the channel
/// closes.
pub async fn run(
    endpoint: Arc<Endpoint>,
    shared: Shared,
    conn: Arc<Connection>,
    stop: CancellationToken,
    breaker: Arc<Breaker>,
) -> Exit {
    match consume(&endpoint, &shared, &conn, &stop, &breaker).await {
        Ok(exit) => exit,
        Err(e) => Exit::Lost(e.to_string()),
    }
}

type Deliveries = std::pin::Pin<Box<dyn futures_util::Stream<Item = Delivery> + Send>>;

async fn consume(
    endpoint: &Arc<Endpoint>,
    shared: &Shared,
    conn: &Connection,
    stop: &CancellationToken,
    breaker: &Arc<Breaker>,
) -> Result<Exit, lapin::Error> {
    let id = endpoint.id.as_str();
    if is_paused(shared, endpoint) {
        shared.metrics.paused.with_label_values(&[id]).set(1);
        tracing::warn!(endpoint = %id, "Endpoint is paused after a 410 Gone; change its config and reload to resume.");
        stop.cancelled().await;
        return Ok(Exit::Stopped);
    }
    if shared.holds.borrow().holds.contains(id) {
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
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let acks = Arc::new(AckTracker::default());
    let router = Router::new(
        publish.clone(),
        shared.topology.clone(),
        endpoint.id.clone(),
        acks.clone(),
    );
    let consume = conn.create_channel().await?;
    let prefetch = crate::delivery::limit::capped_prefetch(
        shared
            .prefetch
            .max(u16::try_from(endpoint.batch_size).unwrap_or(u16::MAX)),
        endpoint.rate_limit,
        endpoint.batch_size,
    );
    // Bounded prefetch: a slow endpoint holds at most this many messages.
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = shared.topology.endpoint_queue(id);

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
    // Settled deliveries are acked in ranges at least this often.
    let flusher_stop = CancellationToken::new();
    let flusher = {
        let (acks, stop) = (acks.clone(), flusher_stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::delivery::acks::FLUSH_EVERY);
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
        })
    };
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
                r = holds.wait_for(|h| h.holds.contains(&id)) => if r.is_ok() {
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
    };
    let batch_size = endpoint.batch_size as usize;
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
            match get_one(&consume, &queue, &consuming).await {
                Ok(Some(delivery)) => vec![delivery],
                Ok(None) => break,
                Err(e) => {
                    note_lost(&lost, &e);
                    break;
                }
            }
        } else {
            if consumer.is_none() {
                match start_consumer(&consume, &queue, &lost).await {
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
            hand_back(&router, &batch, suspend.is_cancelled() && !lost_publisher).await;
            break;
        };
        if probing {
            // The probe's outcome decides whether consuming starts.
            process(endpoint, shared, &router, batch, &stops).await;
            drop(permit);
            continue;
        }
        let (endpoint, shared, router, stops) = (
            endpoint.clone(),
            shared.clone(),
            router.clone(),
            stops.clone(),
        );
        tracker.spawn(async move {
            process(&endpoint, &shared, &router, batch, &stops).await;
            drop(permit);
        });
    }
    // Stop taking new messages, let in-flight requests finish (each bounded
    // by its timeout), then close: unacked prefetched messages are requeued.
    if let Some((mut deliveries, tag)) = consumer.take() {
        let _ = consume
            .basic_cancel(tag, BasicCancelOptions::default())
            .await;
        if suspend.is_cancelled() && router.is_open() {
            // What was prefetched goes back to the tail of the queue with
            // its attempt untouched (a requeue would count toward the
            // quorum queue's delivery limit).
            while let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_secs(2), deliveries.next()).await
            {
                acks.register(std::slice::from_ref(&delivery)).await;
                hand_back(&router, std::slice::from_ref(&delivery), true).await;
            }
        }
    }
    hold_watch.abort();
    tracker.close();
    tracker.wait().await;
    // Stop the flusher between flushes (never in the middle of one), then ack the rest.
    flusher_stop.cancel();
    let _ = flusher.await;
    if let Err(e) = acks.flush().await {
        tracing::warn!(endpoint = %id, error = %e, "Final acks failed; the broker redelivers those messages.");
    }
    let _ = consume.close(200, "stopping".into()).await;
    let _ = publish.close(200, "stopping".into()).await;
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

/// Records why the worker lost its channel (the cleanup after the loop runs as usual).
fn note_lost(lost: &std::sync::Mutex<Option<String>>, e: &lapin::Error) {
    *lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
}

async fn start_consumer(
    channel: &lapin::Channel,
    queue: &str,
    lost: &Arc<std::sync::Mutex<Option<String>>>,
) -> Result<(Deliveries, lapin::types::ShortString), lapin::Error> {
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
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

/// How long an event waits before going back to its queue when no
/// transform worker can be started.
const SANDBOX_RETRY: Duration = Duration::from_secs(2);

/// Returns deliveries untaken: to the tail of the queue (`park`, attempts
/// untouched) or by a requeue.
async fn hand_back(router: &Router, deliveries: &[Delivery], park: bool) {
    for d in deliveries {
        if park && router.park(d).await.is_ok() {
            continue;
        }
        router.requeue(d).await;
    }
}

fn is_paused(shared: &Shared, endpoint: &Endpoint) -> bool {
    shared
        .paused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&endpoint.id)
        .is_some_and(|url| *url == endpoint.url)
}

/// The tokens a batch task may cancel, and the breaker it reports to.
#[derive(Clone)]
struct Stops {
    /// Ends the consume loop.
    consuming: CancellationToken,
    /// Marks the endpoint paused (410).
    pause: CancellationToken,
    /// Marks the breaker open.
    suspend: CancellationToken,
    /// The endpoint's circuit breaker.
    breaker: Arc<Breaker>,
}

/// A delivery with its parsed envelope (and what the transform made of it).
struct Valid {
    delivery: Delivery,
    event: Event,
    attempt: u32,
    transformed: Option<Vec<u8>>,
}

/// Handles one batch end to end. Never fails: every delivery is acked,
/// republished-then-acked, or requeued.
async fn process(
    endpoint: &Endpoint,
    shared: &Shared,
    router: &Router,
    batch: Vec<Delivery>,
    stops: &Stops,
) {
    let id = endpoint.id.as_str();
    let mut valid = Vec::with_capacity(batch.len());
    for delivery in batch {
        let attempt = attempt_of(&delivery);
        let parsed = if delivery.data.len() > shared.max_message_bytes {
            Err(format!(
                "message of {} bytes is over amqp.max_message_bytes ({})",
                delivery.data.len(),
                shared.max_message_bytes
            ))
        } else {
            Event::from_slice(&delivery.data).map_err(|e| e.to_string())
        };
        let parsed = parsed.map_err(|e| (Reason::Malformed, e));
        let transformed = match (&parsed, &endpoint.transform) {
            (Ok(_), Some(transform)) => {
                match shared.sandbox.run(id, transform, &delivery.data).await {
                    Ok(Outcome::Send(body)) => Ok(Some(body)),
                    Ok(Outcome::Drop) => {
                        if router.ack(&delivery).await.is_ok() {
                            shared
                                .metrics
                                .deliveries
                                .with_label_values(&[id, "filtered"])
                                .inc();
                        }
                        continue;
                    }
                    Err(SandboxError::Unavailable(e)) => {
                        // Not the event's fault: it goes back to the tail of
                        // its queue, untouched, and waits for the sandbox.
                        let logged = shared
                            .channel_failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .hit();
                        if let Some(failures) = logged {
                            tracing::error!(endpoint = %id, error = %e, failures, "Transforms cannot run; events wait in their queues (logged with backoff).");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(SANDBOX_RETRY) => {}
                            () = stops.consuming.cancelled() => {}
                        }
                        hand_back(router, std::slice::from_ref(&delivery), true).await;
                        continue;
                    }
                    Err(e) => Err((Reason::TransformError, e.to_string())),
                }
            }
            _ => Ok(None),
        };
        match parsed.and_then(|event| transformed.map(|t| (event, t))) {
            Ok((event, transformed)) => valid.push(Valid {
                delivery,
                event,
                attempt,
                transformed,
            }),
            Err((reason, e)) => {
                let why = DeadLetter {
                    reason,
                    attempt,
                    last_status: None,
                    last_error: &e,
                };
                dead_letter(shared, router, id, &delivery, &why).await;
            }
        }
    }
    if valid.is_empty() {
        return;
    }
    if stops.pause.is_cancelled() {
        for v in &valid {
            router.requeue(&v.delivery).await;
        }
        return;
    }
    let now = time::OffsetDateTime::now_utc();
    let oldest = valid
        .iter()
        .map(|v| (now - v.event.timestamp).as_seconds_f64())
        .fold(0.0, f64::max);
    shared.metrics.head_age.with_label_values(&[id]).set(oldest);
    let parts: Vec<Part<'_>> = valid
        .iter()
        .map(|v| Part {
            id: &v.event.id,
            body: v.transformed.as_deref().unwrap_or(&v.delivery.data),
        })
        .collect();
    let attempt = valid.iter().map(|v| v.attempt).max().unwrap_or(1);
    let prepared = build(endpoint, &parts, attempt, time::OffsetDateTime::now_utc());
    shared
        .metrics
        .batch_size
        .with_label_values(&[id])
        .observe(valid.len() as f64);
    let gauge = shared.metrics.in_flight.with_label_values(&[id]);
    gauge.inc();
    let started = std::time::Instant::now();
    let response = shared.sender.send(endpoint, &prepared).await;
    gauge.dec();
    shared
        .metrics
        .request_duration
        .with_label_values(&[id])
        .observe(started.elapsed().as_secs_f64());
    let (class, last_status, last_error) = match &response {
        Response::Status { code, .. } => (status_class(*code), Some(*code), format!("HTTP {code}")),
        Response::Failed {
            error,
            timeout: true,
        } => ("timeout", None, error.clone()),
        Response::Failed { error, .. } => ("error", None, error.clone()),
        Response::Blocked { error } => ("blocked", None, error.clone()),
    };
    shared
        .metrics
        .attempts
        .with_label_values(&[id, class])
        .inc();
    let overrides = Overrides {
        add: &endpoint.retry_add,
        remove: &endpoint.retry_remove,
    };
    let verdict = classify(&response, shared.max_retry_after, &overrides);
    let change = match verdict {
        Verdict::Delivered => stops.breaker.success(),
        Verdict::Retry { .. } => stops.breaker.failure(tokio::time::Instant::now()),
        Verdict::DeadLetter(_) => None,
    };
    if let Some(state) = change {
        report_breaker(shared, endpoint, state, &stops.breaker);
        if matches!(state, BreakerState::Open { .. }) {
            stops.suspend.cancel();
            stops.consuming.cancel();
        }
    }
    if decide::pauses(&verdict) {
        shared
            .paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(endpoint.id.clone(), endpoint.url.clone());
        shared.metrics.paused.with_label_values(&[id]).set(1);
        tracing::error!(endpoint = %id, "Endpoint answered 410 Gone; pausing it. Its messages wait in its queue.");
        stops.pause.cancel();
        stops.consuming.cancel();
    }
    let now = time::OffsetDateTime::now_utc();
    let mut delivered = 0;
    for v in &valid {
        match decide::decide(&verdict, v.attempt, &endpoint.retry, endpoint.on_exhausted) {
            Action::Ack => {
                if router.ack(&v.delivery).await.is_ok() {
                    delivered += 1;
                    shared
                        .metrics
                        .deliveries
                        .with_label_values(&[id, "delivered"])
                        .inc();
                    let age = (now - v.event.timestamp).as_seconds_f64().max(0.0);
                    shared
                        .metrics
                        .end_to_end
                        .with_label_values(&[id])
                        .observe(age);
                }
            }
            Action::Drop => {
                if router.ack(&v.delivery).await.is_ok() {
                    shared
                        .metrics
                        .deliveries
                        .with_label_values(&[id, "dropped"])
                        .inc();
                    tracing::warn!(endpoint = %id, event = %v.event.id, attempt = v.attempt, error = %last_error, "Retries used up; dropped (on_exhausted = \"drop\").");
                }
            }
            Action::DeadLetter(reason) => {
                let why = DeadLetter {
                    reason,
                    attempt: v.attempt,
                    last_status,
                    last_error: &last_error,
                };
                dead_letter(shared, router, id, &v.delivery, &why).await;
            }
            Action::Retry {
                tier_ms,
                next_attempt,
            } => match router.retry(&v.delivery, tier_ms, next_attempt).await {
                Ok(()) => {
                    shared
                        .metrics
                        .retries
                        .with_label_values(&[id, &tier_ms.to_string()])
                        .inc();
                    shared
                        .metrics
                        .deliveries
                        .with_label_values(&[id, "retried"])
                        .inc();
                    tracing::warn!(endpoint = %id, event = %v.event.id, attempt = v.attempt, retry_in_ms = tier_ms, error = %last_error, "Delivery failed; retrying.");
                }
                Err(e) => {
                    tracing::error!(endpoint = %id, event = %v.event.id, error = %e, "Could not schedule the retry; the message returns to its queue.");
                    router.requeue(&v.delivery).await;
                }
            },
        }
    }
    if delivered > 0 {
        tracing::debug!(endpoint = %id, events = delivered, webhook_id = %prepared.webhook_id, "Delivered.");
    }
}

/// Logs a breaker change and exports it.
fn report_breaker(shared: &Shared, endpoint: &Endpoint, state: BreakerState, breaker: &Breaker) {
    let id = endpoint.id.as_str();
    shared
        .metrics
        .breaker_state
        .with_label_values(&[id])
        .set(state.gauge());
    match state {
        BreakerState::Open { until } => {
            let cooldown_ms = until
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64;
            tracing::error!(endpoint = %id, consecutive_failures = breaker.consecutive_failures(), cooldown_ms, "Circuit breaker opened: the endpoint is suspended; its messages wait in its queue.");
        }
        BreakerState::HalfOpen => {
            tracing::info!(endpoint = %id, "Circuit breaker half-open: probing with one delivery.");
        }
        BreakerState::Closed => {
            tracing::info!(endpoint = %id, "Circuit breaker closed: the probe succeeded; delivering again.");
        }
    }
}

/// Waits while an operator holds the endpoint (or until `stop`).
pub async fn wait_released(shared: &Shared, endpoint: &Endpoint, stop: &CancellationToken) {
    let id = endpoint.id.as_str();
    let mut holds = shared.holds.clone();
    if !holds.borrow_and_update().holds.contains(id) {
        return;
    }
    shared.metrics.paused.with_label_values(&[id]).set(1);
    tracing::warn!(endpoint = %id, "Endpoint paused by an operator; its messages wait in its queue until `hookpost-admin endpoints resume`.");
    tokio::select! {
        _ = holds.wait_for(|h| !h.holds.contains(id)) => {
            shared.metrics.paused.with_label_values(&[id]).set(0);
            tracing::info!(endpoint = %id, "Endpoint resumed by an operator.");
        }
        () = stop.cancelled() => {}
    }
}

/// Waits out an open breaker's cooldown (or `stop`), then makes it half-open.
pub async fn cool_down(
    shared: &Shared,
    endpoint: &Endpoint,
    breaker: &Breaker,
    stop: &CancellationToken,
) {
    if let BreakerState::Open { until } = breaker.state() {
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = stop.cancelled() => return,
        }
    }
    if let Some(state) = breaker.cooled_down(tokio::time::Instant::now()) {
        report_breaker(shared, endpoint, state, breaker);
    }
}

async fn dead_letter(
    shared: &Shared,
    router: &Router,
    id: &str,
    delivery: &Delivery,
    why: &DeadLetter<'_>,
) {
    match router.dead_letter(delivery, why).await {
        Ok(()) => {
            shared
                .metrics
                .dead_letters
                .with_label_values(&[id, why.reason.as_str()])
                .inc();
            shared
                .metrics
                .deliveries
                .with_label_values(&[id, "dead_lettered"])
                .inc();
            tracing::warn!(endpoint = %id, reason = why.reason.as_str(), attempt = why.attempt, error = %why.last_error, "Dead-lettered.");
        }
        Err(e) => {
            tracing::error!(endpoint = %id, error = %e, "Could not dead-letter; the message returns to its queue.");
            router.requeue(delivery).await;
        }
    }
}
