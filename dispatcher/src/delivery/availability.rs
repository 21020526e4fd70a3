//! An endpoint's availability: whether its worker may consume now. Three
//! things take an endpoint out of delivery, each with its gauge and its log
//! line: a 410 Gone (paused until its URL changes), an operator's hold
//! (`hookpost-admin endpoints pause`), and its circuit breaker.

use crate::delivery::breaker::{Breaker, State as BreakerState};
use crate::delivery::worker::Shared;
use common::config::Endpoint;
use tokio_util::sync::CancellationToken;

/// Whether the endpoint is paused after a 410 (until its URL changes).
pub(super) fn is_paused(shared: &Shared, endpoint: &Endpoint) -> bool {
    shared
        .paused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&endpoint.id)
        .is_some_and(|url| *url == endpoint.url)
}

/// Logs a breaker change and exports it.
pub(super) fn report_breaker(
    shared: &Shared,
    endpoint: &Endpoint,
    state: BreakerState,
    breaker: &Breaker,
) {
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

/// Whether an operator holds the endpoint `id`: itself, or for a variant
/// (`<id>~<env>`) the endpoint it belongs to.
pub fn held(state: &common::registry::control::State, id: &str) -> bool {
    state.holds.contains(id) || state.holds.contains(common::config::base_id(id))
}

/// Waits while an operator holds the endpoint (or until `stop`).
pub async fn wait_released(shared: &Shared, endpoint: &Endpoint, stop: &CancellationToken) {
    let id = endpoint.id.as_str();
    let mut holds = shared.holds.clone();
    if !held(&holds.borrow_and_update(), id) {
        return;
    }
    shared.metrics.paused.with_label_values(&[id]).set(1);
    tracing::warn!(endpoint = %id, "Endpoint paused by an operator; its messages wait in its queue until `hookpost-admin endpoints resume`.");
    tokio::select! {
        _ = holds.wait_for(|h| !held(h, id)) => {
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
