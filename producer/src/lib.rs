//! Publish events into hookpost.
//!
//! Three ways in, all with the same guarantee (an event is reported published
//! only after the broker confirmed it to disk):
//! - [`Publisher`], for Rust services;
//! - the `hookpost-producer publish` command;
//! - the HTTP ingest, `hookpost-producer serve` ([`ingest`]).
//!
//! # Layout
//! - [`publisher`]: the [`Publisher`] every way in goes through;
//! - [`ingest`]: `POST /v1/events`;
//! - [`api`]: the endpoint management API, `/v1/endpoints`;
//! - `console`: the web console, `/console`, on the API's listener;
//! - `http`: what the ingest and the API share (bearer token, JSON errors,
//!   reading a body with a cap);
//! - [`serve()`]: `hookpost-producer serve` on listeners the caller bound.
//!
//! ```no_run
//! use common::{Config, Event};
//! use producer::Publisher;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("hookpost.toml".as_ref())?;
//! let publisher = Publisher::connect(&config).await?;
//! let event = Event::new("order.created", serde_json::json!({ "order_id": 42 }))?;
//! publisher.publish(&event).await?; // returns once the broker confirmed it
//! println!("published {}", event.id);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod api;
mod console;
pub mod count;
mod http;
pub mod ingest;
pub mod publisher;
mod serve;

pub use publisher::{PublishError, Publisher};
pub use serve::{Listeners, serve};
