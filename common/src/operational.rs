//! hookpost's operational events: events of its own, published to the
//! scoped events exchange so that any endpoint can subscribe to them
//! (`hookpost.#`), with the endpoint's tenant as the event's tenant.
//!
//! | type | when | `reason` |
//! |---|---|---|
//! | `hookpost.endpoint.paused` | the endpoint answered 410 Gone, or an operator paused it | `gone`, `operator` |
//! | `hookpost.endpoint.resumed` | an operator resumed it | `operator` |
//! | `hookpost.endpoint.circuit_opened` | its circuit breaker opened | the last error |
//! | `hookpost.endpoint.circuit_closed` | a probe succeeded: delivering again | `probe_succeeded` |
//! | `hookpost.delivery.dead_lettered` | an event of it was dead-lettered | the dead-letter reason |
//!
//! Data: `{"endpoint", "reason", "event_id", "last_status"}` (the last two
//! `null` when they do not apply). A failure to deliver an operational
//! event never produces another: dead-lettering one, or a breaker tripped
//! by one, publishes nothing.

use crate::Event;
use serde_json::json;

/// An endpoint was paused (410 Gone, or an operator).
pub const ENDPOINT_PAUSED: &str = "hookpost.endpoint.paused";
/// An operator resumed an endpoint.
pub const ENDPOINT_RESUMED: &str = "hookpost.endpoint.resumed";
/// An endpoint's circuit breaker opened.
pub const CIRCUIT_OPENED: &str = "hookpost.endpoint.circuit_opened";
/// An endpoint's circuit breaker closed again.
pub const CIRCUIT_CLOSED: &str = "hookpost.endpoint.circuit_closed";
/// An event was dead-lettered.
pub const DEAD_LETTERED: &str = "hookpost.delivery.dead_lettered";

/// Whether events of `event_type` are hookpost's own.
pub fn is_operational(event_type: &str) -> bool {
    event_type.starts_with("hookpost.")
}

/// What happened, to which endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Notice<'a> {
    /// One of this module's types.
    pub kind: &'static str,
    /// The endpoint id (`<id>~<env>` for an environment's variant).
    pub endpoint: &'a str,
    /// The endpoint's tenant: the event's tenant.
    pub tenant: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// The event concerned, if one is.
    pub event_id: Option<&'a str>,
    /// The endpoint's last HTTP status, if it answered.
    pub last_status: Option<u16>,
}

impl Notice<'_> {
    /// The event and its routing key on the scoped exchange
    /// (`hookpost.t=<tenant>.e=.<type>`, [`crate::routing::operational_key`]:
    /// only endpoints with a pattern starting `hookpost.` are bound for it,
    /// a global one for every tenant's, a tenant's for its own).
    ///
    /// # Errors
    /// A tenant that is not a valid scope.
    pub fn event(&self) -> Result<(Event, String), crate::envelope::EnvelopeError> {
        let event = Event::new(
            self.kind,
            json!({
                "endpoint": self.endpoint,
                "reason": self.reason,
                "event_id": self.event_id,
                "last_status": self.last_status,
            }),
        )?
        .with_scope(self.tenant, None)?;
        Ok((
            event,
            crate::routing::operational_key(self.tenant, self.kind),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_events_routed_by_the_endpoints_tenant() {
        let n = Notice {
            kind: DEAD_LETTERED,
            endpoint: "shop~live",
            tenant: Some("acme"),
            reason: "exhausted",
            event_id: Some("evt_1"),
            last_status: Some(503),
        };
        let (event, key) = n.event().expect("event");
        assert_eq!(key, "hookpost.t=acme.e=.hookpost.delivery.dead_lettered");
        assert_eq!(event.tenant.as_deref(), Some("acme"));
        assert_eq!(event.data["last_status"], 503);
        assert_eq!(event.data["endpoint"], "shop~live");
        let global = Notice { tenant: None, ..n };
        let global_key = global.event().expect("event").1;
        assert_eq!(global_key, "hookpost.t=.e=.hookpost.delivery.dead_lettered");
        // The broker's matching against each endpoint's binding keys: a
        // global `hookpost.#` subscriber takes both, a tenant's only its
        // own, a catch-all `#` (global or tenant) neither.
        let bound = |tenant: Option<&str>, pattern: &str, key: &str| {
            crate::routing::binding_keys(tenant, None, &[pattern.to_owned()])
                .iter()
                .filter(|b| crate::routing::Exchange::of_key(b) == crate::routing::Exchange::Scoped)
                .any(|b| crate::routing::topic_matches(b, key))
        };
        for (tenant, pattern, key, matches) in [
            (None, "hookpost.#", &global_key, true),
            (None, "hookpost.#", &key, true),
            (Some("acme"), "hookpost.#", &key, true),
            (Some("acme"), "hookpost.delivery.*", &key, true),
            (Some("acme"), "hookpost.#", &global_key, false),
            (Some("globex"), "hookpost.#", &key, false),
            (None, "#", &key, false),
            (None, "#", &global_key, false),
            (Some("acme"), "#", &key, false),
            (None, "*.delivery.dead_lettered", &key, false),
        ] {
            assert_eq!(
                bound(tenant, pattern, key),
                matches,
                "{tenant:?} {pattern} {key}"
            );
        }
        assert!(is_operational(CIRCUIT_OPENED));
        assert!(!is_operational("order.created"));
    }
}
