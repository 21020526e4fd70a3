//! RabbitMQ names and declarations (README, "How it fits together"; ARCHITECTURE.md).
//!
//! Every declaration is idempotent: declaring twice with the same settings is
//! a no-op, so every process declares what it uses at start. Declaring an
//! existing queue with *different* arguments (say, `queue_type` changed) is
//! refused by the broker; [`TopologyError::Conflict`] says which queue.

mod declare;
mod replicas;

use crate::config::{AmqpConfig, QueueType};
use replicas::Replicas;

/// A declaration the broker refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopologyError {
    /// The object exists with other arguments (PRECONDITION_FAILED).
    #[error(
        "{object} already exists with different settings (was `queue_type` or a limit changed?); delete it or keep the old settings: {source}"
    )]
    Conflict {
        /// Exchange or queue name.
        object: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
    },
    /// Any other broker error (connection lost, access refused, ...).
    #[error("declaring {object}: {source}")]
    Broker {
        /// Exchange or queue name.
        object: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
    },
}

impl TopologyError {
    fn from_lapin(object: &str, source: lapin::Error) -> Self {
        if crate::amqp::reply_code(&source) == Some(crate::amqp::reply::PRECONDITION_FAILED) {
            Self::Conflict {
                object: object.to_owned(),
                source,
            }
        } else {
            Self::Broker {
                object: object.to_owned(),
                source,
            }
        }
    }
}

/// Names and declaration of hookpost's exchanges and queues under one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
    unrouted_max_length: u32,
    delivery_limit: u32,
    control_max_bytes: u64,
    control_replicas: u8,
    replicas: Replicas,
}

impl Topology {
    /// The topology the `[amqp]` section describes.
    pub fn new(amqp: &AmqpConfig) -> Self {
        Self {
            prefix: amqp.prefix.clone(),
            queue_type: amqp.queue_type,
            unrouted_max_length: amqp.unrouted_max_length,
            delivery_limit: amqp.delivery_limit,
            control_max_bytes: crate::config::raw::DEFAULT_CONTROL_MAX_BYTES,
            control_replicas: crate::config::raw::DEFAULT_REPLICAS,
            replicas: Replicas::new(amqp.quorum_replicas),
        }
    }

    /// The topology of `config`: its `[amqp]` section, and the control
    /// stream's retention (`registry.control_max_bytes`).
    pub fn for_config(config: &crate::Config) -> Self {
        Self {
            control_max_bytes: config.registry.control_max_bytes,
            control_replicas: config.registry.control_replicas,
            ..Self::new(&config.amqp)
        }
    }

    /// The control stream's retention in bytes.
    pub fn control_max_bytes(&self) -> u64 {
        self.control_max_bytes
    }

    /// The control stream's `x-initial-cluster-size`.
    pub fn control_replicas(&self) -> u8 {
        self.control_replicas
    }

    /// The attempt log stream (`log.*`).
    pub fn log(&self) -> String {
        format!("{}.log", self.prefix)
    }

    /// The event archive: a stream with a copy of every event published
    /// through hookpost (`[archive]`).
    pub fn archive(&self) -> String {
        format!("{}.archive", self.prefix)
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange producers publish to (routing key = event type).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Topic exchange of events with a tenant or an environment (routing key
    /// `t=<tenant>.e=<environment>.<type>`, [`crate::routing`]).
    pub fn scoped_exchange(&self) -> String {
        format!("{}.events.scoped", self.prefix)
    }

    /// Alternate exchange of the scoped exchange, and its queue: scoped
    /// events no endpoint subscribed to (a tenant that registered nothing for
    /// that type). Bounded, oldest dropped first: with many tenants this is
    /// normal traffic, not a fault that should refuse publishes.
    pub fn unrouted_scoped(&self) -> String {
        format!("{}.unrouted.scoped", self.prefix)
    }

    /// The exchange a binding key is for ([`crate::routing::Exchange::of_key`]).
    pub fn exchange_of_key(&self, key: &str) -> String {
        match crate::routing::Exchange::of_key(key) {
            crate::routing::Exchange::Events => self.events_exchange(),
            crate::routing::Exchange::Scoped => self.scoped_exchange(),
        }
    }

    /// Fanout exchange and queue (same name) holding events nobody subscribes to.
    pub fn unrouted(&self) -> String {
        format!("{}.unrouted", self.prefix)
    }

    /// Direct exchange for retries and replays (routing key = endpoint id).
    pub fn endpoints_exchange(&self) -> String {
        format!("{}.endpoints", self.prefix)
    }

    /// One endpoint's queue.
    pub fn endpoint_queue(&self, endpoint_id: &str) -> String {
        format!("{}.ep.{endpoint_id}", self.prefix)
    }

    /// Every queue of an installation with what it holds, in the order an
    /// operator reads them: unrouted, dead letters, the endpoints of
    /// `config` (its file), then `registered` (runtime ids, environments
    /// included), then the wait tiers. `hookpost-admin topology status` and
    /// the console's topology page list these.
    pub fn queues(
        &self,
        config: &crate::config::Config,
        registered: impl IntoIterator<Item = String>,
    ) -> Vec<(String, &'static str)> {
        let mut rows = vec![
            (self.unrouted(), "unrouted"),
            (self.unrouted_scoped(), "unrouted (tenants, environments)"),
            (self.dead(), "dead letters"),
        ];
        for ep in &config.endpoints {
            rows.push((self.endpoint_queue(&ep.id), "endpoint (hookpost.toml)"));
        }
        for id in registered {
            rows.push((self.endpoint_queue(&id), "endpoint (registered)"));
        }
        for tier in config.wait_tiers() {
            rows.push((self.wait_queue(tier), "wait tier"));
        }
        rows
    }

    /// Fanout exchange in front of one wait tier.
    pub fn retry_exchange(&self, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}", self.prefix)
    }

    /// The wait queue of one tier.
    pub fn wait_queue(&self, delay_ms: u64) -> String {
        format!("{}.wait.{delay_ms}", self.prefix)
    }

    /// Fanout exchange and queue (same name) of parked deliveries.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The control stream: operator pauses and resumes and the endpoint
    /// registry, read by every dispatcher (`registry::control`).
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Queue holding the pointer to the control stream's latest snapshot
    /// (`registry::control`).
    pub fn control_snapshot(&self) -> String {
        format!("{}.control-snapshot", self.prefix)
    }

    /// Queue holding one message: the event patterns each endpoint queue was
    /// last bound with, so a dispatcher started on a new config can remove
    /// bindings the old config made (AMQP cannot list bindings).
    pub fn bindings_state(&self) -> String {
        format!("{}.state.bindings", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design_table() {
        let t = Topology::new(&crate::Config::defaults().amqp);
        assert_eq!(t.events_exchange(), "hookpost.events");
        assert_eq!(t.unrouted(), "hookpost.unrouted");
        assert_eq!(t.scoped_exchange(), "hookpost.events.scoped");
        assert_eq!(t.unrouted_scoped(), "hookpost.unrouted.scoped");
        assert_eq!(t.exchange_of_key("t=a.e=.x"), "hookpost.events.scoped");
        assert_eq!(t.exchange_of_key("order.*"), "hookpost.events");
        assert_eq!(t.endpoints_exchange(), "hookpost.endpoints");
        assert_eq!(t.endpoint_queue("crm"), "hookpost.ep.crm");
        assert_eq!(t.retry_exchange(1000), "hookpost.retry.1000");
        assert_eq!(t.wait_queue(1000), "hookpost.wait.1000");
        assert_eq!(t.dead(), "hookpost.dead");
    }
}
