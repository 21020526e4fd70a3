//! The attempt log's front: workers hand each attempt's record to
//! [`AttemptLog::record`], which never waits; the [`outbox`] writer
//! appends it to `<prefix>.log` (declaring the stream when it is gone).
//! Lost records are counted in `hookpost_log_records_total{result="lost"}`.

use crate::delivery::outbox::{self, Outgoing, Purpose};
use common::amqp::AmqpClient;
use common::config::LogConfig;
use common::history::Attempt;
use common::topology::Topology;
use prometheus::IntCounterVec;
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
        let purpose = Purpose {
            name: "the attempt log",
            stream: Some(config),
            pack: true,
        };
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
