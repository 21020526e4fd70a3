//! Delivery: one endpoint's pipeline, one stage per file, listed here in the
//! order an event goes through them (ARCHITECTURE.md, "The life of one
//! event"). [`worker`] composes them.

pub mod worker;

// What an attempt at one batch does, stage by stage.
pub mod attempt;

// Whether the endpoint may be consumed (410 pause, hold, breaker).
pub mod availability;

// Consume: channels shared by the workers, acknowledgements in ranges (or
// one by one on a shared channel).
pub mod acks;
pub mod channels;

// Gather a batch.
pub mod batch;

// Run the endpoint's transform, sandboxed (the sandbox is `common::sandbox`).
pub use common::sandbox as transform;

// Pace: the endpoint's rate limit.
pub mod limit;

// Build and sign the request.
pub mod request;

// Send it, to permitted addresses only.
pub mod connect;
pub mod guard;
pub mod http_client;
pub mod send;

// Classify the result, count it in the circuit breaker.
pub mod breaker;
pub mod classify;

// Decide what happens to each event.
pub mod decide;

// Settle: ack, retry through a wait tier, or dead-letter.
pub mod route;

// Record the attempt in the attempt log (never waited for), through the
// writer of what is published beside deliveries.
pub mod log;
pub mod outbox;

// Tell whoever subscribes (`hookpost.#`) what happened to an endpoint.
pub mod notices;

// Log a failing endpoint's per-event lines with backoff.
pub mod failures;
