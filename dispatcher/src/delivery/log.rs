//! The attempt log's writer. Workers hand each attempt's record to
//! [`AttemptLog::record`], which never waits: records go through a bounded
//! buffer to one task that appends them to `<prefix>.log` in batches, on a
//! confirm channel of its own. A full buffer, a refused record or an
//! unreachable stream loses records (counted in
//! `hookpost_log_records_total{result="lost"}`, a warning logged with
//! backoff); deliveries never wait for the log.

use common::amqp::AmqpClient;
use common::config::LogConfig;
use common::history::{self, Attempt};
use common::logging::Throttle;
use common::topology::Topology;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use prometheus::IntCounterVec;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Records waiting to be written; beyond it they are lost.
const BUFFER: usize = 16_384;

/// Records written with one round of confirms.
const BATCH: usize = 512;

/// Longest the writer waits for a connection or a batch's confirms before
/// it counts the batch lost.
const BROKER_WAIT: Duration = Duration::from_secs(5);

/// How long a stopping dispatcher keeps writing what is buffered.
const FLUSH: Duration = Duration::from_secs(3);

/// Where workers hand their attempts (cheap to clone).
#[derive(Debug, Clone)]
pub struct AttemptLog {
    tx: Option<mpsc::Sender<Attempt>>,
    records: IntCounterVec,
    keep_body: usize,
}

impl AttemptLog {
    /// A log that records nothing (`log.enabled = false`).
    pub fn disabled(records: IntCounterVec) -> Self {
        Self {
            tx: None,
            records,
            keep_body: 0,
        }
    }

    /// Starts the writer on `client`'s connection; it ends when `stop`
    /// fires, after writing what is buffered (at most [`FLUSH`]).
    pub fn start(
        client: AmqpClient,
        topology: Topology,
        config: LogConfig,
        records: IntCounterVec,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let keep_body = config.response_body_bytes;
        let writer = Writer {
            client,
            topology,
            config,
            records: records.clone(),
            channel: None,
            failures: Throttle::new(Duration::from_secs(10), Duration::from_secs(300)),
        };
        let task = tokio::spawn(writer.run(rx, stop));
        (
            Self {
                tx: Some(tx),
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
        if let Some(tx) = &self.tx
            && tx.try_send(attempt).is_err()
        {
            self.records.with_label_values(&["lost"]).inc();
        }
    }
}

struct Writer {
    client: AmqpClient,
    topology: Topology,
    config: LogConfig,
    records: IntCounterVec,
    channel: Option<Channel>,
    failures: Throttle,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Attempt>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            let batch = Self::fill(first, &mut rx);
            self.write(batch).await;
        }
        // Stopping: what is buffered, within FLUSH.
        let until = tokio::time::Instant::now() + FLUSH;
        while let Ok(first) = rx.try_recv() {
            let batch = Self::fill(first, &mut rx);
            let n = batch.len();
            if tokio::time::timeout_at(until, self.write(batch))
                .await
                .is_err()
            {
                self.lost(
                    n + rx.len(),
                    "the dispatcher stopped before they were written",
                );
                break;
            }
        }
        if let Some(ch) = self.channel.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ch.close(200, "stopping".into()))
                .await;
        }
    }

    fn fill(first: Attempt, rx: &mut mpsc::Receiver<Attempt>) -> Vec<Attempt> {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        batch
    }

    /// Appends `batch` and waits for its confirms; what is not confirmed
    /// is counted lost.
    async fn write(&mut self, batch: Vec<Attempt>) {
        let n = batch.len();
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                self.lost(n, &e);
                return;
            }
        };
        let queue = self.topology.log();
        let stamp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let mut confirms = Vec::with_capacity(n);
        for attempt in &batch {
            let Ok(body) = serde_json::to_vec(attempt) else {
                confirms.push(None);
                continue;
            };
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_timestamp(stamp);
            let published = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await;
            match published {
                Ok(confirm) => confirms.push(Some(confirm)),
                Err(e) => {
                    self.channel = None;
                    let unsent = n - confirms.len();
                    self.settle(confirms).await;
                    self.lost(unsent, &e.to_string());
                    return;
                }
            }
        }
        self.settle(confirms).await;
    }

    /// Waits for each confirm: an ack without a return is written;
    /// anything else (a return: the stream is gone; a nack; no answer
    /// within [`BROKER_WAIT`]) is lost.
    async fn settle(&mut self, confirms: Vec<Option<lapin::PublisherConfirm>>) {
        let (mut written, mut lost, mut why) = (0usize, 0usize, None);
        for confirm in confirms {
            let Some(confirm) = confirm else {
                lost += 1;
                continue;
            };
            match tokio::time::timeout(BROKER_WAIT, confirm).await {
                Ok(Ok(lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested)) => {
                    written += 1;
                }
                Ok(Ok(lapin::Confirmation::Ack(Some(_)))) => {
                    lost += 1;
                    // The stream is gone: the next batch opens a channel
                    // again, which declares it again.
                    self.channel = None;
                    why.get_or_insert_with(|| {
                        format!(
                            "the stream {} does not exist (returned)",
                            self.topology.log()
                        )
                    });
                }
                Ok(Ok(lapin::Confirmation::Nack(_))) => {
                    lost += 1;
                    why.get_or_insert_with(|| "the broker refused them (nack)".to_owned());
                }
                Ok(Err(e)) => {
                    lost += 1;
                    self.channel = None;
                    why.get_or_insert_with(|| e.to_string());
                }
                Err(_) => {
                    lost += 1;
                    self.channel = None;
                    why.get_or_insert_with(|| "no confirm from the broker".to_owned());
                }
            }
        }
        self.records
            .with_label_values(&["written"])
            .inc_by(written as u64);
        if lost > 0 {
            self.lost(lost, why.as_deref().unwrap_or("unknown"));
        }
    }

    /// The writer's confirm channel, opened (and the stream made sure of)
    /// when there is none.
    async fn channel(&mut self) -> Result<Channel, String> {
        if let Some(ch) = &self.channel
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let never = CancellationToken::new();
        let deadline = tokio::time::Instant::now() + BROKER_WAIT;
        let opened = tokio::time::timeout_at(deadline, async {
            let conn = self
                .client
                .connection(Some(deadline), &never)
                .await
                .map_err(|e| e.to_string())?;
            history::ensure(&conn, &self.topology, &self.config)
                .await
                .map_err(|e| format!("declaring {}: {e}", self.topology.log()))?;
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ch)
        })
        .await
        .map_err(|_| "the broker did not answer".to_owned())??;
        self.channel = Some(opened.clone());
        Ok(opened)
    }

    fn lost(&mut self, n: usize, why: &str) {
        self.records.with_label_values(&["lost"]).inc_by(n as u64);
        if let Some(times) = self.failures.hit() {
            tracing::warn!(records = n, failures = times, error = %why, "Writing the attempt log failed; deliveries go on, these records are lost (logged with backoff).");
        }
    }
}
