//! One attempt at a batch, end to end: parse each delivery, run the
//! endpoint's transform, build and sign the request, send it, classify the
//! result, decide what happens to each event and settle it (ack, retry or
//! dead-letter). [`crate::delivery::worker`] calls `process` for every
//! batch it takes from the queue.

use crate::delivery::availability::report_breaker;
use crate::delivery::breaker::State as BreakerState;
use crate::delivery::classify::{Overrides, Reason, Response, Verdict, classify};
use crate::delivery::decide::{self, Action};
use crate::delivery::failures::FailureLines;
use crate::delivery::log::{Record, Try};
use crate::delivery::request::{Part, build};
use crate::delivery::route::{DeadLetter, Router, attempt_of};
use crate::delivery::transform::SandboxError;
use crate::delivery::worker::{Shared, Stops, hand_back};
use common::Event;
use common::config::Endpoint;
use common::history::Outcome as Logged;
use common::metrics::status_class;
use common::operational::{self, Notice};
use common::transform::Outcome;
use lapin::message::Delivery;
use std::time::Duration;

/// How long an event waits before going back to its queue when no
/// transform worker can be started.
const SANDBOX_RETRY: Duration = Duration::from_secs(2);

/// A delivery with its parsed envelope (and what the transform made of it).
struct Valid {
    delivery: Delivery,
    event: Event,
    attempt: u32,
    transformed: Option<Vec<u8>>,
}

/// Handles one batch end to end. Never fails: every delivery is acked,
/// republished-then-acked, or requeued.
pub(super) async fn process(
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
            // The payload is checked, not kept: the body goes out as published.
            Event::head_from_slice(&delivery.data).map_err(|e| e.to_string())
        };
        let parsed = parsed
            .map_err(|e| (Reason::Malformed, e))
            .and_then(|event| in_scope(endpoint, event));
        let transformed = match (&parsed, &endpoint.transform) {
            (Ok(_), Some(transform)) => {
                match shared.sandbox.run(id, transform, &delivery.data).await {
                    Ok(Outcome::Send(body)) => Ok(Some(body)),
                    Ok(Outcome::Drop) => {
                        Record::of(endpoint, parsed.as_ref().ok(), &delivery, attempt).log(
                            shared,
                            &Try::none(shared, None),
                            Logged::Filtered,
                        );
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
                        if let Some(failures) = shared.failure_due() {
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
                Record::of(endpoint, None, &delivery, attempt).log(
                    shared,
                    &Try::none(shared, Some(&e)),
                    Logged::DeadLettered,
                );
                let why = DeadLetter {
                    reason,
                    attempt,
                    last_status: None,
                    last_error: &e,
                    scope: scope_of(endpoint, None),
                };
                dead_letter(
                    shared,
                    &stops.lines,
                    router,
                    endpoint,
                    None,
                    &delivery,
                    &why,
                )
                .await;
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
        .with_label_values(&[endpoint.histogram_label()])
        .observe(valid.len() as f64);
    let gauge = shared.metrics.in_flight.with_label_values(&[id]);
    gauge.inc();
    let (started, started_at) = (std::time::Instant::now(), time::OffsetDateTime::now_utc());
    let http = shared.http.current();
    let (response, body) = http.sender.send(endpoint, &prepared).await;
    let took = started.elapsed();
    gauge.dec();
    shared
        .metrics
        .request_duration
        .with_label_values(&[endpoint.histogram_label()])
        .observe(took.as_secs_f64());
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
    let verdict = classify(&response, http.max_retry_after, &overrides);
    // A failure to deliver hookpost's own events never produces another.
    let tells = !valid
        .iter()
        .all(|v| operational::is_operational(&v.event.event_type));
    let notice = |kind, reason: &str, last_status| {
        if tells {
            shared.notices.emit(&Notice {
                kind,
                endpoint: id,
                tenant: endpoint.tenant.as_deref(),
                reason,
                event_id: None,
                last_status,
            });
        }
    };
    let was_closed = matches!(stops.breaker.state(), BreakerState::Closed);
    let change = match verdict {
        Verdict::Delivered => stops.breaker.success(),
        Verdict::Retry { .. } => stops.breaker.failure(tokio::time::Instant::now()),
        Verdict::DeadLetter(_) => None,
    };
    if let Some(state) = change {
        report_breaker(shared, endpoint, state, &stops.breaker);
        match state {
            // Once per outage: not again for each failed probe.
            BreakerState::Open { .. } if was_closed => {
                notice(operational::CIRCUIT_OPENED, &last_error, last_status);
            }
            BreakerState::Closed => {
                notice(operational::CIRCUIT_CLOSED, "probe_succeeded", last_status)
            }
            _ => {}
        }
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
        notice(operational::ENDPOINT_PAUSED, "gone", last_status);
        stops.pause.cancel();
        stops.consuming.cancel();
    }
    let now = time::OffsetDateTime::now_utc();
    let mut delivered = 0;
    let failed = (!matches!(verdict, Verdict::Delivered)).then_some(last_error.as_str());
    let logged = Try::new(shared, started_at, took, last_status, failed, &body);
    for v in &valid {
        let action = decide::decide(&verdict, v.attempt, &endpoint.retry, endpoint.on_exhausted);
        let outcome = match action {
            Action::Ack => Logged::Delivered,
            Action::Drop => Logged::Dropped,
            Action::DeadLetter(_) => Logged::DeadLettered,
            Action::Retry { .. } => Logged::Retry,
        };
        Record::of(endpoint, Some(&v.event), &v.delivery, v.attempt).log(shared, &logged, outcome);
        match action {
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
                        .with_label_values(&[endpoint.histogram_label()])
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
                    if let Some(dropped) = stops.lines.dropped() {
                        tracing::warn!(endpoint = %id, event = %v.event.id, attempt = v.attempt, error = %last_error, dropped, "Retries used up; dropped (on_exhausted = \"drop\", logged with backoff).");
                    } else {
                        // Every dropped id stays findable (the attempt log
                        // has it too, when on).
                        tracing::debug!(endpoint = %id, event = %v.event.id, attempt = v.attempt, error = %last_error, "Retries used up; dropped.");
                    }
                }
            }
            Action::DeadLetter(reason) => {
                let why = DeadLetter {
                    reason,
                    attempt: v.attempt,
                    last_status,
                    last_error: &last_error,
                    scope: scope_of(endpoint, Some(&v.event)),
                };
                dead_letter(
                    shared,
                    &stops.lines,
                    router,
                    endpoint,
                    Some(&v.event),
                    &v.delivery,
                    &why,
                )
                .await;
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
                    if let Some(failures) = stops.lines.retrying() {
                        tracing::warn!(endpoint = %id, event = %v.event.id, attempt = v.attempt, retry_in_ms = tier_ms, error = %last_error, failures, "Delivery failed; retrying (logged with backoff).");
                    } else {
                        tracing::debug!(endpoint = %id, event = %v.event.id, attempt = v.attempt, retry_in_ms = tier_ms, error = %last_error, "Delivery failed; retrying.");
                    }
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

/// The event, if the endpoint may receive it: the bindings route only the
/// endpoint's tenant and environment to its queue, but an AMQP client can
/// publish a routing key that disagrees with the envelope it sends.
fn in_scope(endpoint: &Endpoint, event: Event) -> Result<Event, (Reason, String)> {
    let ours = (endpoint.tenant.as_deref(), endpoint.environment.as_deref());
    let theirs = (event.tenant.as_deref(), event.environment.as_deref());
    if common::routing::accepts(ours, theirs) {
        return Ok(event);
    }
    let show = |s: Option<&str>| s.map_or_else(|| "none".to_owned(), |s| format!("{s:?}"));
    Err((
        Reason::Misrouted,
        format!(
            "event of tenant {} and environment {} on an endpoint of tenant {} and environment {}: its routing key disagrees with its envelope",
            show(theirs.0),
            show(theirs.1),
            ours.0
                .map_or_else(|| "any".to_owned(), |t| format!("{t:?}")),
            show(ours.1),
        ),
    ))
}

/// The tenant and environment a dead letter records: the endpoint's, else
/// the event's (a global endpoint's dead letters still say whose they were).
fn scope_of<'a>(
    endpoint: &'a Endpoint,
    event: Option<&'a Event>,
) -> (Option<&'a str>, Option<&'a str>) {
    (
        endpoint
            .tenant
            .as_deref()
            .or_else(|| event.and_then(|e| e.tenant.as_deref())),
        endpoint
            .environment
            .as_deref()
            .or_else(|| event.and_then(|e| e.environment.as_deref())),
    )
}

async fn dead_letter(
    shared: &Shared,
    lines: &FailureLines,
    router: &Router,
    endpoint: &Endpoint,
    event: Option<&Event>,
    delivery: &Delivery,
    why: &DeadLetter<'_>,
) {
    let id = endpoint.id.as_str();
    match router.dead_letter(delivery, why).await {
        Ok(()) => {
            // Not for hookpost's own events: a failure to deliver one never
            // produces another.
            if event.is_none_or(|e| !operational::is_operational(&e.event_type)) {
                let message_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string);
                shared.notices.emit(&Notice {
                    kind: operational::DEAD_LETTERED,
                    endpoint: id,
                    tenant: endpoint.tenant.as_deref(),
                    reason: why.reason.as_str(),
                    event_id: event.map(|e| e.id.as_str()).or(message_id.as_deref()),
                    last_status: why.last_status,
                });
            }
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
            if let Some(dead_lettered) = lines.dead_lettered() {
                tracing::warn!(endpoint = %id, reason = why.reason.as_str(), attempt = why.attempt, error = %why.last_error, dead_lettered, "Dead-lettered (logged with backoff).");
            } else {
                tracing::debug!(endpoint = %id, reason = why.reason.as_str(), attempt = why.attempt, error = %why.last_error, "Dead-lettered.");
            }
        }
        Err(e) => {
            tracing::error!(endpoint = %id, error = %e, "Could not dead-letter; the message returns to its queue.");
            router.requeue(delivery).await;
        }
    }
}
