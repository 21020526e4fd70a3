//! Pieces every hookpost binary shares: the event envelope, configuration,
//! RabbitMQ topology, Standard Webhooks signing, the supervised AMQP
//! connection and the metrics/health server. See ARCHITECTURE.md for the contracts
//! these modules implement.
#![forbid(unsafe_code)]

pub mod addresses;
pub mod amqp;
pub mod archive;
pub mod cli;
pub mod config;
pub mod contract;
pub mod dlq;
pub mod envelope;
pub mod history;
mod idle;
mod json;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod operational;
pub mod registry;
pub mod retry;
pub mod routing;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod signing;
pub mod topology;
pub mod transform;

pub use config::Config;
pub use envelope::{Event, EventDraft};
