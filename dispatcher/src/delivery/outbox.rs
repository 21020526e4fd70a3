//! One writer task for what the dispatcher publishes beside deliveries (the
//! attempt log's records, hookpost's operational events): callers hand
//! messages to a bounded buffer and never wait; the task publishes them in
//! batches on a confirm channel of its own. A full buffer, a refusal or an
//! unreachable broker loses messages (counted `lost`, a warning logged with
//! backoff); deliveries never wait for them.

use common::amqp::AmqpClient;
use common::config::LogConfig;
use common::history;
use common::logging::Throttle;
use common::topology::Topology;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use prometheus::IntCounterVec;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Messages waiting to be written; beyond it they are lost.
const BUFFER: usize = 16_384;

/// Messages written with one round of confirms.
const BATCH: usize = 512;

/// Longest the writer waits for a connection or a batch's confirms before
/// it counts the batch lost.
const BROKER_WAIT: Duration = Duration::from_secs(5);

/// The most bodies, and bytes, packed into one message.
const PACK_RECORDS: usize = 512;
const PACK_BYTES: usize = 256 << 10;

/// Consecutive messages to the same place joined into one, bodies
/// separated by a newline; each with the number of bodies it holds.
fn pack(batch: Vec<Outgoing>) -> Vec<(Outgoing, usize)> {
    let mut out: Vec<(Outgoing, usize)> = Vec::new();
    for o in batch {
        if let Some((last, count)) = out.last_mut()
            && last.exchange == o.exchange
            && last.key == o.key
            && *count < PACK_RECORDS
            && last.body.len() + 1 + o.body.len() <= PACK_BYTES
        {
            last.body.push(b'\n');
            last.body.extend_from_slice(&o.body);
            *count += 1;
            continue;
        }
        out.push((
            Outgoing {
                message_id: None,
                ..o
            },
            1,
        ));
    }
    out
}

/// How long a packing writer waits for a batch to fill after its first
/// message: at 1,000 attempts/s a log message then holds about 500
/// records, and a query moves few messages (BENCHMARKS.md, `log-read`);
/// a live tail (`log --follow`) shows attempts at most this late.
const LINGER: Duration = Duration::from_millis(500);

/// How often a lingering batch takes the records that arrived: one wake-up
/// per tick, not one per attempt.
const TICK: Duration = Duration::from_millis(10);

/// How long a stopping dispatcher keeps writing what is buffered.
const FLUSH: Duration = Duration::from_secs(3);

/// A message for the writer: where it goes and what it is.
#[derive(Debug)]
pub struct Outgoing {
    /// The exchange (`""`: the default exchange, to the queue `key`).
    pub exchange: String,
    /// The routing key.
    pub key: String,
    /// The body (JSON).
    pub body: Vec<u8>,
    /// The message id, if it has one.
    pub message_id: Option<String>,
}

/// What a writer is for.
#[derive(Debug, Clone)]
pub enum Purpose {
    /// The attempt log: it makes sure of its stream (with these settings)
    /// when it opens its channel, and packs records to the same place into
    /// one compressed message, a record per line (one stream message per
    /// record would double the broker's work at one request per event).
    Log(LogConfig),
    /// Operational events: one message each, to their exchange.
    Events,
}

impl Purpose {
    /// Its name in warnings.
    fn name(&self) -> &'static str {
        match self {
            Self::Log(_) => "the attempt log",
            Self::Events => "operational events",
        }
    }

    /// Whether messages to the same place go together as one.
    fn packs(&self) -> bool {
        matches!(self, Self::Log(_))
    }
}

/// Starts a writer of `Outgoing` messages on `client`'s connection; it
/// ends when `stop` fires, after writing what is buffered (at most
/// `FLUSH`). `records` counts `written` and `lost`.
pub fn start(
    client: AmqpClient,
    topology: Topology,
    purpose: Purpose,
    records: IntCounterVec,
    stop: CancellationToken,
) -> (mpsc::Sender<Outgoing>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(BUFFER);
    let writer = Writer {
        client,
        topology,
        purpose,
        records,
        channel: None,
        failures: Throttle::for_failures(),
    };
    (tx, tokio::spawn(writer.run(rx, stop)))
}

struct Writer {
    client: AmqpClient,
    topology: Topology,
    purpose: Purpose,
    records: IntCounterVec,
    channel: Option<Channel>,
    failures: Throttle,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                r = rx.recv() => r,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            let mut batch = Self::fill(first, &mut rx);
            if self.purpose.packs() {
                Self::linger(&mut batch, &mut rx, &stop).await;
            }
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

    /// Adds to `batch` what arrives within [`LINGER`], up to [`BATCH`],
    /// taking arrivals every [`TICK`] rather than waking for each record.
    async fn linger(
        batch: &mut Vec<Outgoing>,
        rx: &mut mpsc::Receiver<Outgoing>,
        stop: &CancellationToken,
    ) {
        let until = tokio::time::Instant::now() + LINGER;
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            let now = tokio::time::Instant::now();
            if batch.len() >= BATCH || now >= until {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until.min(now + TICK)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn fill(first: Outgoing, rx: &mut mpsc::Receiver<Outgoing>) -> Vec<Outgoing> {
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
    /// is counted lost. With a packing `purpose`, consecutive messages to the
    /// same place go as one message, their bodies one per line.
    async fn write(&mut self, batch: Vec<Outgoing>) {
        let n = batch.len();
        let ch = match self.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                self.lost(n, &e);
                return;
            }
        };
        let stamp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let packed = if self.purpose.packs() {
            pack(batch)
        } else {
            batch.into_iter().map(|o| (o, 1)).collect()
        };
        let mut confirms = Vec::with_capacity(packed.len());
        let mut sent = 0;
        for (out, count) in &packed {
            let content_type = if self.purpose.packs() {
                "application/x-ndjson"
            } else {
                "application/json"
            };
            let mut properties = BasicProperties::default()
                .with_content_type(content_type.into())
                .with_delivery_mode(2)
                .with_timestamp(stamp);
            // Packed records compress about 5 to 1: a query then moves a
            // fifth of the bytes through the broker (BENCHMARKS.md, log-read).
            let compressed = self
                .purpose
                .packs()
                .then(|| common::history::compress(&out.body));
            if compressed.is_some() {
                properties = properties.with_content_encoding(common::history::LZ4.into());
            }
            if let Some(id) = &out.message_id {
                properties = properties.with_message_id(id.as_str().into());
            }
            let published = ch
                .basic_publish(
                    out.exchange.as_str().into(),
                    out.key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    compressed.as_deref().unwrap_or(&out.body),
                    properties,
                )
                .await;
            match published {
                Ok(confirm) => {
                    confirms.push((confirm, *count));
                    sent += count;
                }
                Err(e) => {
                    self.channel = None;
                    self.settle(&ch, confirms).await;
                    self.lost(n - sent, &e.to_string());
                    return;
                }
            }
        }
        self.settle(&ch, confirms).await;
    }

    /// Waits for the confirms of one batch, [`BROKER_WAIT`] for all of
    /// them and no longer than `ch` lives (lapin can leave a confirm
    /// pending for good once its connection failed; see
    /// [`common::amqp::while_alive`]): an ack without a return is written;
    /// anything else (a return: the stream is gone; a nack; no answer in
    /// time) is lost.
    async fn settle(&mut self, ch: &Channel, confirms: Vec<(lapin::PublisherConfirm, usize)>) {
        let (mut written, mut lost, mut why) = (0usize, 0usize, None);
        let mut deadline = tokio::time::Instant::now() + BROKER_WAIT;
        for (confirm, count) in confirms {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = common::amqp::while_alive(|| ch.status().connected(), left, confirm).await;
            if answer.is_none() {
                // Given up: of the rest, only confirms already in are taken.
                deadline = tokio::time::Instant::now();
            }
            match answer.ok_or(()) {
                Ok(Ok(lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested)) => {
                    written += count;
                }
                Ok(Ok(lapin::Confirmation::Ack(Some(_)))) => {
                    lost += count;
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
                    lost += count;
                    why.get_or_insert_with(|| "the broker refused them (nack)".to_owned());
                }
                Ok(Err(e)) => {
                    lost += count;
                    self.channel = None;
                    why.get_or_insert_with(|| e.to_string());
                }
                Err(_) => {
                    lost += count;
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
            if let Purpose::Log(log) = &self.purpose {
                history::ensure(&conn, &self.topology, log)
                    .await
                    .map_err(|e| format!("declaring {}: {e}", self.topology.log()))?;
            }
            let ch = common::amqp::open_channel(&conn)
                .await
                .map_err(|e| e.to_string())?;
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
            tracing::warn!(records = n, failures = times, error = %why, "Writing {} failed; deliveries go on, these records are lost (logged with backoff).", self.purpose.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(key: &str, body: &str) -> Outgoing {
        Outgoing {
            exchange: String::new(),
            key: key.into(),
            body: body.as_bytes().to_vec(),
            message_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_packing_writer_waits_for_its_batch_to_fill_within_the_linger() {
        let (tx, mut rx) = mpsc::channel(BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(async move {
            for (at_ms, body) in [(100, "b"), (300, "c"), (600, "d")] {
                tokio::time::sleep(Duration::from_millis(at_ms)).await;
                let _ = tx.send(out("log", body)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let mut batch = vec![out("log", "a")];
        Writer::linger(&mut batch, &mut rx, &stop).await;
        let bodies: Vec<&[u8]> = batch.iter().map(|o| o.body.as_slice()).collect();
        // b at 100 ms, c at 400 ms: in; d at 1,000 ms: after the linger.
        assert_eq!(bodies, [&b"a"[..], b"b", b"c"]);
        assert_eq!(started.elapsed(), LINGER);
        // A full batch goes at once.
        let (tx, mut rx) = mpsc::channel(BUFFER);
        for _ in 1..BATCH {
            tx.send(out("log", "x")).await.expect("send");
        }
        let mut batch = vec![out("log", "x")];
        let started = tokio::time::Instant::now();
        Writer::linger(&mut batch, &mut rx, &stop).await;
        assert_eq!((batch.len(), started.elapsed()), (BATCH, Duration::ZERO));
    }

    #[test]
    fn packing_joins_bodies_to_one_place_by_lines_within_the_bounds() {
        let packed = pack(vec![
            out("log", "a"),
            out("log", "b"),
            out("other", "c"),
            out("log", "d"),
        ]);
        let shown: Vec<(String, String, usize)> = packed
            .iter()
            .map(|(o, n)| {
                (
                    o.key.clone(),
                    String::from_utf8_lossy(&o.body).into_owned(),
                    *n,
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("log".into(), "a\nb".into(), 2),
                ("other".into(), "c".into(), 1),
                ("log".into(), "d".into(), 1)
            ]
        );
        let many = pack((0..PACK_RECORDS + 1).map(|_| out("log", "x")).collect());
        assert_eq!(
            many.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![PACK_RECORDS, 1]
        );
        let big = "y".repeat(PACK_BYTES / 2);
        let sized = pack(vec![out("log", &big), out("log", &big), out("log", "z")]);
        assert_eq!(
            sized.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
