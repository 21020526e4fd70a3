//! The attempt log's front: workers hand each attempt's record to
//! [`AttemptLog::record`], which never waits; the [`outbox`] writer
//! appends it to `<prefix>.log` (declaring the stream when it is gone).
//! Lost records are counted in `hookpost_log_records_total{result="lost"}`.
//! `Record` is what `attempt.rs` knows of an attempt, made into one.

use crate::delivery::outbox::{self, Outgoing, Purpose};
use crate::delivery::worker::Shared;
use common::Event;
use common::amqp::AmqpClient;
use common::config::Endpoint;
use common::config::LogConfig;
use common::history::Attempt;
use common::history::{self, Outcome as Logged};
use common::topology::Topology;
use lapin::message::Delivery;
use prometheus::IntCounterVec;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where workers hand their attempts (cheap to clone).
#[derive(Debug, Clone)]
pub struct AttemptLog {
    tx: Option<mpsc::Sender<Outgoing>>,
    queue: String,
    records: IntCounterVec,
    keep_body: usize,
}

impl AttemptLog {
    /// A log that records nothing (`log.enabled = false`).
    pub fn disabled(records: IntCounterVec) -> Self {
        Self {
            tx: None,
            queue: String::new(),
            records,
            keep_body: 0,
        }
    }

    /// Starts the writer on `client`'s connection; it ends when `stop`
    /// fires, after writing what is buffered.
    pub fn start(
        client: AmqpClient,
        topology: Topology,
        config: LogConfig,
        records: IntCounterVec,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let keep_body = config.response_body_bytes;
        let queue = topology.log();
        let purpose = Purpose::Log(config);
        let (tx, task) = outbox::start(client, topology, purpose, records.clone(), stop);
        (
            Self {
                tx: Some(tx),
                queue,
                records,
                keep_body,
            },
            task,
        )
    }

    /// Whether records are written.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Bytes of each response body a record keeps (0 when disabled).
    pub fn keep_body(&self) -> usize {
        self.keep_body
    }

    /// Hands `attempt` to the writer; never waits. A full buffer loses it.
    pub fn record(&self, attempt: Attempt) {
        let Some(tx) = &self.tx else { return };
        let Ok(body) = serde_json::to_vec(&attempt) else {
            self.records.with_label_values(&["lost"]).inc();
            return;
        };
        let out = Outgoing {
            exchange: String::new(),
            key: self.queue.clone(),
            body,
            message_id: None,
        };
        if tx.try_send(out).is_err() {
            self.records.with_label_values(&["lost"]).inc();
        }
    }
}

/// Who an attempt log record is about.
pub(super) struct Record<'a> {
    endpoint: &'a Endpoint,
    event: Option<&'a Event>,
    delivery: &'a Delivery,
    attempt: u32,
}

impl<'a> Record<'a> {
    pub(super) fn of(
        endpoint: &'a Endpoint,
        event: Option<&'a Event>,
        delivery: &'a Delivery,
        attempt: u32,
    ) -> Self {
        Self {
            endpoint,
            event,
            delivery,
            attempt,
        }
    }

    /// Hands the record to the attempt log (never waits).
    pub(super) fn log(&self, shared: &Shared, attempt: &Try, outcome: Logged) {
        if !shared.log.is_enabled() {
            return;
        }
        let event_id = self.event.map_or_else(
            || {
                self.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            },
            |e| e.id.clone(),
        );
        shared.log.record(history::Attempt {
            event_id,
            event_type: self.event.map(|e| e.event_type.clone()).unwrap_or_default(),
            tenant: self.event.and_then(|e| e.tenant.clone()),
            environment: self.event.and_then(|e| e.environment.clone()),
            endpoint: self.endpoint.id.clone(),
            attempt: self.attempt,
            started_at: attempt.started_at.clone(),
            duration_ms: attempt.duration_ms,
            outcome,
            status: attempt.status,
            error: attempt.error.clone(),
            response: attempt.response.clone(),
        });
    }
}

/// What the records of one attempt share, prepared once for its whole batch
/// (and not at all when the attempt log is off).
#[derive(Debug, Default)]
pub(super) struct Try {
    started_at: String,
    duration_ms: u64,
    status: Option<u16>,
    error: Option<String>,
    response: Option<String>,
}

impl Try {
    /// An attempt that started at `started_at` and took `took`.
    pub(super) fn new(
        shared: &Shared,
        started_at: time::OffsetDateTime,
        took: Duration,
        status: Option<u16>,
        error: Option<&str>,
        body: &[u8],
    ) -> Self {
        if !shared.log.is_enabled() {
            return Self::default();
        }
        Self {
            started_at: started_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            status,
            error: error.map(str::to_owned),
            response: history::snippet(body, shared.log.keep_body()),
        }
    }

    /// An event settled without a request (filtered or refused), now.
    pub(super) fn none(shared: &Shared, error: Option<&str>) -> Self {
        Self::new(
            shared,
            time::OffsetDateTime::now_utc(),
            Duration::ZERO,
            None,
            error,
            &[],
        )
    }
}
