//! One endpoint's pipeline: consume its queue → batch → build and sign →
//! send → classify → ack, retry or dead-letter.

use crate::acks::AckTracker;
use crate::batch::next_batch;
use crate::classify::{Reason, Response, Verdict, classify};
use crate::request::{Part, build};
use crate::route::{DeadLetter, Router, attempt_of};
use crate::send::Sender;
use common::Event;
use common::config::Endpoint;
use common::metrics::{DispatcherMetrics, status_class};
use common::topology::Topology;
use futures_util::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
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
}

/// Why a worker stopped.
#[derive(Debug)]
pub enum Exit {
    /// `stop` fired; in-flight batches finished.
    Stopped,
    /// The channel or connection failed; the supervisor should rebuild.
    Lost(String),
}

/// Runs the pipeline for `endpoint` on `conn` until `stop` fires or the
/// channel fails. In-flight requests finish before it returns; deliveries not
/// yet acked go back to the queue when the channel closes.
pub async fn run(
    endpoint: Arc<Endpoint>,
    shared: Shared,
    conn: Arc<Connection>,
    stop: CancellationToken,
) -> Exit {
    match consume(&endpoint, &shared, &conn, &stop).await {
        Ok(exit) => exit,
        Err(e) => Exit::Lost(e.to_string()),
    }
}

async fn consume(
    endpoint: &Arc<Endpoint>,
    shared: &Shared,
    conn: &Connection,
    stop: &CancellationToken,
) -> Result<Exit, lapin::Error> {
    let id = endpoint.id.as_str();
    if is_paused(shared, endpoint) {
        shared.metrics.paused.with_label_values(&[id]).set(1);
        tracing::warn!(endpoint = %id, "Endpoint is paused after a 410 Gone; change its config and reload to resume.");
        stop.cancelled().await;
        return Ok(Exit::Stopped);
    }
    shared.metrics.paused.with_label_values(&[id]).set(0);
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
    let prefetch = shared
        .prefetch
        .max(u16::try_from(endpoint.batch_size).unwrap_or(u16::MAX));
    // Bounded prefetch: a slow endpoint holds at most this many messages.
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = shared.topology.endpoint_queue(id);
    let consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let tag = consumer.tag();
    shared.metrics.consuming.with_label_values(&[id]).set(1);
    tracing::info!(endpoint = %id, queue = %queue, prefetch, "Consuming.");

    // A consumer error (channel or connection lost) ends the stream.
    let lost: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let lost_in_stream = lost.clone();
    let mut deliveries = Box::pin(
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
    // `consuming` ends the loop (shutdown or pause); `pause` says it was a 410.
    let consuming = stop.child_token();
    let pause = CancellationToken::new();
    let in_flight = Arc::new(Semaphore::new(endpoint.max_in_flight as usize));
    let tracker = TaskTracker::new();
    // Settled deliveries are acked in ranges at least this often.
    let flusher_stop = CancellationToken::new();
    let flusher = {
        let (acks, stop) = (acks.clone(), flusher_stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::acks::FLUSH_EVERY);
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
    let batch_size = endpoint.batch_size as usize;
    let mut lost_publisher = false;
    loop {
        let Some(batch) = next_batch(
            &mut deliveries,
            batch_size,
            endpoint.batch_interval,
            &consuming,
        )
        .await
        else {
            break;
        };
        acks.register(&batch).await;
        let permit = if consuming.is_cancelled() || !router.is_open() {
            None
        } else {
            tokio::select! {
                p = in_flight.clone().acquire_owned() => p.ok(),
                () = consuming.cancelled() => None,
            }
        };
        let Some(permit) = permit else {
            // Shutting down, pausing, or the publish channel died: hand the
            // batch back untouched.
            lost_publisher = !router.is_open();
            for d in &batch {
                router.requeue(d).await;
            }
            break;
        };
        let (endpoint, shared, router, stops) = (
            endpoint.clone(),
            shared.clone(),
            router.clone(),
            Stops {
                consuming: consuming.clone(),
                pause: pause.clone(),
            },
        );
        tracker.spawn(async move {
            process(&endpoint, &shared, &router, batch, &stops).await;
            drop(permit);
        });
    }
    // Stop taking new messages, let in-flight requests finish (each bounded
    // by its timeout), then close: unacked prefetched messages are requeued.
    let _ = consume
        .basic_cancel(tag, BasicCancelOptions::default())
        .await;
    tracker.close();
    tracker.wait().await;
    // Stop the flusher between flushes (never in the middle of one), then ack the rest.
    flusher_stop.cancel();
    let _ = flusher.await;
    if let Err(e) = acks.flush().await {
        tracing::warn!(endpoint = %id, error = %e, "Final acks failed; the broker redelivers those messages.");
    }
    drop(deliveries);
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

fn is_paused(shared: &Shared, endpoint: &Endpoint) -> bool {
    shared
        .paused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&endpoint.id)
        .is_some_and(|url| *url == endpoint.url)
}

/// The tokens a batch task may cancel.
struct Stops {
    /// Ends the consume loop.
    consuming: CancellationToken,
    /// Marks the endpoint paused (410).
    pause: CancellationToken,
}

/// A delivery with its parsed envelope.
struct Valid {
    delivery: Delivery,
    event: Event,
    attempt: u32,
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
        match parsed {
            Ok(event) => valid.push(Valid {
                delivery,
                event,
                attempt,
            }),
            Err(e) => {
                let why = DeadLetter {
                    reason: Reason::Malformed,
                    attempt,
                    last_status: None,
                    last_error: &e.to_string(),
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
            body: &v.delivery.data,
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
    let verdict = classify(&response, shared.max_retry_after);
    match verdict {
        Verdict::Delivered => {
            let now = time::OffsetDateTime::now_utc();
            for v in &valid {
                if router.ack(&v.delivery).await.is_ok() {
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
            tracing::debug!(endpoint = %id, events = valid.len(), webhook_id = %prepared.webhook_id, "Delivered.");
        }
        Verdict::Retry { after } => {
            for v in &valid {
                if v.attempt > endpoint.retry.max_retries {
                    let why = DeadLetter {
                        reason: Reason::Exhausted,
                        attempt: v.attempt,
                        last_status,
                        last_error: &last_error,
                    };
                    dead_letter(shared, router, id, &v.delivery, &why).await;
                    continue;
                }
                let tier = endpoint.retry.tier_for(v.attempt, after);
                match router.retry(&v.delivery, tier, v.attempt + 1).await {
                    Ok(()) => {
                        shared
                            .metrics
                            .retries
                            .with_label_values(&[id, &tier.to_string()])
                            .inc();
                        shared
                            .metrics
                            .deliveries
                            .with_label_values(&[id, "retried"])
                            .inc();
                        tracing::warn!(endpoint = %id, event = %v.event.id, attempt = v.attempt, retry_in_ms = tier, error = %last_error, "Delivery failed; retrying.");
                    }
                    Err(e) => {
                        tracing::error!(endpoint = %id, event = %v.event.id, error = %e, "Could not schedule the retry; the message returns to its queue.");
                        router.requeue(&v.delivery).await;
                    }
                }
            }
        }
        Verdict::DeadLetter(reason) => {
            if reason == Reason::Gone {
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
            for v in &valid {
                let why = DeadLetter {
                    reason,
                    attempt: v.attempt,
                    last_status,
                    last_error: &last_error,
                };
                dead_letter(shared, router, id, &v.delivery, &why).await;
            }
        }
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
