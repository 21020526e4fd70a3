//! The control stream `<prefix>.control`: an append-only RabbitMQ stream of
//! operator pauses and resumes (`hookpost-admin endpoints pause|resume ID`)
//! and of the endpoint registry's changes (the management API). Every
//! dispatcher reads it and then follows it, so holds and registered
//! endpoints survive restarts of everything and reach every running
//! dispatcher within moments. RabbitMQ is the only store.
//!
//! To know when it has read everything written before it started, a reader
//! attaches, then appends a `marker` with a fresh token and reads until it
//! meets it.
//!
//! Readers do not start at the stream's first record: they start after the
//! latest snapshot ([`super::snapshot`]), found through the pointer queue
//! `<prefix>.control-snapshot`, so a start reads in proportion to the
//! current endpoints and holds, not the history. A reader that has read more
//! than `max(1000, 2 × entries)` changes since its snapshot writes a new one.
//! Retention (`registry.control_max_bytes`) bounds the stream's size.

use super::StoredEndpoint;
use super::snapshot::{self, Outcome, Replay, Start};
use crate::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the control stream says, as of the last record read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The endpoints an operator holds.
    pub holds: BTreeSet<String>,
    /// The registered endpoints, by id.
    pub endpoints: BTreeMap<String, StoredEndpoint>,
}

/// A shared snapshot of the state.
pub type Holds = Arc<State>;

/// One record of the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Stop delivering to `endpoint` until resumed.
    Pause {
        /// The endpoint id.
        endpoint: String,
        /// When (RFC 3339).
        at: String,
    },
    /// Deliver to `endpoint` again.
    Resume {
        /// The endpoint id.
        endpoint: String,
        /// When (RFC 3339).
        at: String,
    },
    /// A reader's "caught up" marker; changes nothing.
    Marker {
        /// The reader's token.
        token: String,
    },
    /// Registers or replaces an endpoint.
    Put {
        /// The whole endpoint (secrets sealed).
        endpoint: StoredEndpoint,
    },
    /// Removes a registered endpoint.
    Delete {
        /// The endpoint id.
        id: String,
        /// When (RFC 3339).
        at: String,
    },
    /// A snapshot of the state as of offset `base` starts; its parts and
    /// end follow (other records may come in between). Changes nothing.
    SnapshotBegin {
        /// The snapshot's id (fresh per snapshot).
        id: String,
        /// The stream offset the snapshot's state is as of.
        base: u64,
        /// When (RFC 3339).
        at: String,
    },
    /// Part `seq` (from 0) of snapshot `id`: endpoints (whole, with their
    /// versions and sealed secrets) and holds.
    SnapshotPart {
        /// The snapshot's id.
        id: String,
        /// The part's number, from 0, consecutive.
        seq: u32,
        /// Registered endpoints.
        #[serde(default)]
        endpoints: Vec<StoredEndpoint>,
        /// Held endpoint ids.
        #[serde(default)]
        holds: Vec<String>,
    },
    /// Snapshot `id` is complete with `parts` parts. A snapshot without its
    /// end is never used.
    SnapshotEnd {
        /// The snapshot's id.
        id: String,
        /// How many parts it has.
        parts: u32,
    },
}

impl Command {
    /// A pause or resume of `endpoint`, now.
    pub fn hold(endpoint: &str, paused: bool) -> Self {
        let at = now_rfc3339();
        let endpoint = endpoint.to_owned();
        if paused {
            Self::Pause { endpoint, at }
        } else {
            Self::Resume { endpoint, at }
        }
    }
}

/// Applies one record to `state`; returns whether it changed it.
pub fn apply(state: &mut State, command: &Command) -> bool {
    match command {
        Command::Pause { endpoint, .. } => state.holds.insert(endpoint.clone()),
        Command::Resume { endpoint, .. } => state.holds.remove(endpoint),
        Command::Marker { .. } => false,
        Command::Put { endpoint } => {
            // Compare-and-set on `version`: a change made from an older
            // version (a concurrent writer lost the race, or the endpoint
            // was deleted meanwhile) is ignored; its writer sees that and
            // reports a conflict.
            let expected = state
                .endpoints
                .get(&endpoint.id)
                .map_or(1, |c| c.version + 1);
            if endpoint.version != expected {
                return false;
            }
            state
                .endpoints
                .insert(endpoint.id.clone(), endpoint.clone());
            true
        }
        Command::Delete { id, .. } => state.endpoints.remove(id).is_some(),
        // A snapshot is read by `snapshot::Replay`, never applied on top of
        // a state (its old versions and holds would undo later changes).
        Command::SnapshotBegin { .. }
        | Command::SnapshotPart { .. }
        | Command::SnapshotEnd { .. } => false,
    }
}

pub use crate::contract::now_rfc3339;

/// Copies of the snapshot pointer kept in `<prefix>.control-snapshot`: a
/// reader takes one and puts it back (`basic.get`, then a reject with
/// requeue); several copies let that many readers look at the same moment.
pub const POINTER_COPIES: u32 = 8;

/// Where readers start: the message of `<prefix>.control-snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The snapshot's id; `None`: no snapshot yet, read from the first record.
    pub snapshot: Option<String>,
    /// The offset the snapshot's state is as of: readers start at `base + 1`.
    pub base: Option<u64>,
}

/// What one read of the control stream did, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Records received, of every kind, up to and including the marker.
    pub records: u64,
    /// The offset the read started at (`None`: the first record).
    pub started_at: Option<u64>,
    /// The snapshot the state was loaded from, if any.
    pub snapshot: Option<String>,
    /// The reader's marker's offset: the state is as of it.
    pub marker: u64,
    /// The snapshot this read wrote, if it wrote one.
    pub wrote: Option<String>,
}

/// Stream arguments: retention by size (whole segments are removed, oldest
/// first, once the stream is larger than `max_bytes`).
fn stream_args(topology: &Topology) -> FieldTable {
    let max_bytes = topology.control_max_bytes();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(segment_bytes(max_bytes)).unwrap_or(i64::MAX)),
    );
    args
}

/// The segment size for a retention of `max_bytes`: a sixteenth, so that
/// removing a segment frees little at a time, and at most RabbitMQ's
/// default of 500 MB.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(256 << 10, 500_000_000)
}

/// Declares the control stream, with its retention. Prefer [`ensure`]: a
/// stream declared earlier without these arguments refuses this declare
/// (PRECONDITION_FAILED, which closes `ch`).
///
/// # Errors
/// The broker's refusal (streams need RabbitMQ 3.9 or later).
pub async fn declare(ch: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    ch.queue_declare(
        topology.control().as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        stream_args(topology),
    )
    .await?;
    Ok(())
}

/// Declares the pointer queue: classic (a quorum queue counts each requeue
/// as a failed delivery and, with a delivery limit, would drop the
/// pointer), durable, the newest [`POINTER_COPIES`] messages kept.
async fn declare_pointer_queue(ch: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(POINTER_COPIES.into()),
    );
    ch.queue_declare(
        topology.control_snapshot().as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    Ok(())
}

/// Streams whose retention this process checked (its log says once per
/// stream that an older stream lacks it).
static RETENTION_CHECKED: std::sync::Mutex<BTreeSet<String>> =
    std::sync::Mutex::new(BTreeSet::new());

/// Makes sure the control stream exists: a passive declare first, so only
/// the very first writer creates it. (RabbitMQ 3.10 answers two creations of
/// the same stream at the same moment with a connection-level
/// INTERNAL_ERROR; the loser's connection closes and its owner reconnects.)
/// The creator also records the "no snapshot yet" pointer. Once per process,
/// an existing stream is checked for the retention arguments: one declared
/// before they existed keeps working, and a warning says how to bound it.
///
/// # Errors
/// The broker's refusal.
pub async fn ensure(conn: &Connection, topology: &Topology) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    let found = ch
        .queue_declare(
            topology.control().as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match found {
        Ok(_) => {
            let _ = ch.close(200, "exists".into()).await;
            check_retention(conn, topology).await;
            return Ok(());
        }
        Err(e) if crate::amqp::reply_code(&e) == Some(crate::amqp::reply::NOT_FOUND) => {}
        Err(e) => return Err(e),
    }
    // The failed passive declare closed that channel.
    let ch = conn.create_channel().await?;
    declare(&ch, topology).await?;
    let _ = ch.close(200, "declared".into()).await;
    let origin = Pointer {
        snapshot: None,
        base: None,
    };
    if let Err(e) = publish_pointer(conn, topology, &origin).await {
        tracing::warn!(error = %e, "Recording the control stream's first snapshot pointer failed; readers read from its first record until a snapshot is written.");
    }
    Ok(())
}

/// Declares the stream once more with its retention arguments: the broker
/// refuses (406) if it was declared with others, or none (before hookpost
/// set them). Says so once (INFO); the stream keeps working either way.
async fn check_retention(conn: &Connection, topology: &Topology) {
    let name = topology.control();
    {
        let mut checked = RETENTION_CHECKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !checked.insert(name.clone()) {
            return;
        }
    }
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    match declare(&ch, topology).await {
        Ok(()) => {
            let _ = ch.close(200, "checked".into()).await;
        }
        Err(e) if crate::amqp::reply_code(&e) == Some(crate::amqp::reply::PRECONDITION_FAILED) => {
            let max_bytes = topology.control_max_bytes();
            // INFO: a policy may already bound it, and AMQP cannot see that.
            tracing::info!(
                stream = %name,
                max_bytes,
                "The control stream was declared without hookpost's retention (or with another registry.control_max_bytes); queue arguments cannot change, so unless a policy bounds it, apply one: rabbitmqctl set_policy {}-control '^{}$' '{{\"max-length-bytes\":{},\"stream-max-segment-size-bytes\":{}}}' --apply-to queues",
                topology.prefix(),
                regex_escape(&name),
                max_bytes,
                segment_bytes(max_bytes),
            );
        }
        Err(_) => {}
    }
}

/// `name` as a regular expression matching itself.
fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Appends `command` to the control stream and waits for the broker's confirm.
///
/// # Errors
/// A broker error or a refusal.
pub async fn append(
    conn: &Connection,
    topology: &Topology,
    command: &Command,
) -> anyhow::Result<()> {
    append_all(conn, topology, std::slice::from_ref(command)).await
}

/// Appends `commands`, in order, on one channel with many publishes in
/// flight, and waits for every confirm.
///
/// # Errors
/// A broker error or a refusal (records before the refused one may have landed).
pub async fn append_all(
    conn: &Connection,
    topology: &Topology,
    commands: &[Command],
) -> anyhow::Result<()> {
    ensure(conn, topology).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let published = publish_all(&ch, "", &topology.control(), commands).await;
    let _ = ch.close(200, "appended".into()).await;
    published.map_err(|e| anyhow::anyhow!("appending to the control stream: {e}"))
}

/// Publishes each of `items` as JSON, persistent and `mandatory`, with up
/// to 500 confirms outstanding; every one confirmed, or an error.
async fn publish_all<T: Serialize>(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    items: &[T],
) -> anyhow::Result<()> {
    for window in items.chunks(500) {
        let mut confirms = Vec::with_capacity(window.len());
        for item in window {
            let body = serde_json::to_vec(item)?;
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?;
            confirms.push(confirm);
        }
        let answers = tokio::time::timeout(
            Duration::from_secs(30),
            futures_util::future::join_all(confirms),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no confirm from the broker within 30 s"))?;
        for answer in answers {
            match answer? {
                lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => {}
                lapin::Confirmation::Ack(Some(returned)) => {
                    anyhow::bail!("the broker returned it ({})", returned.reply_text)
                }
                lapin::Confirmation::Nack(_) => anyhow::bail!("the broker refused it (nack)"),
            }
        }
    }
    Ok(())
}

/// Records `pointer` ([`POINTER_COPIES`] times) as where readers start.
///
/// # Errors
/// A broker error or a refusal.
pub async fn publish_pointer(
    conn: &Connection,
    topology: &Topology,
    pointer: &Pointer,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    let result = async {
        declare_pointer_queue(&ch, topology).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let copies = vec![pointer; POINTER_COPIES as usize];
        publish_all(&ch, "", &topology.control_snapshot(), &copies).await
    }
    .await;
    let _ = ch.close(200, "pointed".into()).await;
    result.map_err(|e| anyhow::anyhow!("recording the control stream's snapshot pointer: {e}"))
}

/// The latest snapshot pointer, looked at and put back; `None` when there
/// is none (or every copy is being looked at by other readers right now).
///
/// # Errors
/// A broker error.
pub async fn read_pointer(
    conn: &Connection,
    topology: &Topology,
) -> anyhow::Result<Option<Pointer>> {
    let ch = conn.create_channel().await?;
    let result = async {
        declare_pointer_queue(&ch, topology).await?;
        for wait_ms in [0, 5, 20] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            let got = ch
                .basic_get(
                    topology.control_snapshot().as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?;
            if let Some(msg) = got {
                let pointer = serde_json::from_slice::<Pointer>(&msg.delivery.data).ok();
                // Put back for the next reader.
                msg.delivery
                    .reject(BasicRejectOptions { requeue: true })
                    .await?;
                return Ok::<_, anyhow::Error>(pointer);
            }
        }
        Ok(None)
    }
    .await;
    let _ = ch.close(200, "looked".into()).await;
    result
}

/// Writes a snapshot of `state` as of offset `base` and, once every record
/// of it is confirmed, points readers at it. Returns the snapshot's id.
///
/// # Errors
/// A broker error; a snapshot without its pointer is harmless.
pub async fn write_snapshot(
    conn: &Connection,
    topology: &Topology,
    state: &State,
    base: u64,
) -> anyhow::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let records = snapshot::records(&id, base, &now_rfc3339(), state);
    append_all(conn, topology, &records).await?;
    publish_pointer(
        conn,
        topology,
        &Pointer {
            snapshot: Some(id.clone()),
            base: Some(base),
        },
    )
    .await?;
    tracing::info!(snapshot = %id, base, endpoints = state.endpoints.len(), holds = state.holds.len(), "Wrote a snapshot of the control stream.");
    Ok(id)
}

/// Reads the control stream up to now and returns the holds.
///
/// # Errors
/// A broker error, or nothing read within `timeout`.
pub async fn read(
    conn: &Connection,
    topology: &Topology,
    timeout: Duration,
) -> anyhow::Result<Holds> {
    read_with_stats(conn, topology, timeout)
        .await
        .map(|(holds, _)| holds)
}

/// [`read`], with what it read.
///
/// # Errors
/// A broker error, or nothing read within `timeout`.
pub async fn read_with_stats(
    conn: &Connection,
    topology: &Topology,
    timeout: Duration,
) -> anyhow::Result<(Holds, ReadStats)> {
    read_once(conn, topology, timeout, false).await
}

/// Reads the control stream up to now and writes a snapshot of it whatever
/// the count of changes: what `hookpost-admin` and the tests use to compact
/// at once.
///
/// # Errors
/// A broker error, or nothing read within `timeout`.
pub async fn compact(
    conn: &Connection,
    topology: &Topology,
    timeout: Duration,
) -> anyhow::Result<(Holds, ReadStats)> {
    read_once(conn, topology, timeout, true).await
}

async fn read_once(
    conn: &Connection,
    topology: &Topology,
    timeout: Duration,
    force_snapshot: bool,
) -> anyhow::Result<(Holds, ReadStats)> {
    let (tx, mut rx) = watch::channel(Holds::default());
    let stop = CancellationToken::new();
    let stats = Arc::new(std::sync::Mutex::new(ReadStats::default()));
    let options = Options {
        force_snapshot,
        stats: Some(stats.clone()),
    };
    let follow = follow_with(conn, topology, tx, stop.clone(), &options);
    tokio::pin!(follow);
    let mut ended = false;
    let caught_up = tokio::time::timeout(timeout, async {
        tokio::select! {
            r = &mut follow => {
                ended = true;
                r.and(Err(anyhow::anyhow!("the control stream ended")))
            }
            r = rx.changed() => r.map_err(anyhow::Error::from),
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out reading the control stream"));
    if !ended {
        // Let the reader close its channel.
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut follow).await;
    }
    caught_up??;
    let holds = rx.borrow().clone();
    let stats = stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok((holds, stats))
}

/// Follows the control stream until `stop`, starting over (from the latest
/// snapshot) one second after a reader fails or ends: the one follower loop
/// of the dispatcher's supervisor and the management API. `connect` gives
/// the connection to read on (`None`: give up); `after_each` runs after each
/// reader that ended, before the pause.
pub async fn keep_following<C, F>(
    mut connect: C,
    topology: &Topology,
    holds_tx: watch::Sender<Holds>,
    stop: CancellationToken,
    mut after_each: impl FnMut(),
) where
    C: FnMut() -> F,
    F: Future<Output = Option<Arc<Connection>>>,
{
    loop {
        let Some(conn) = connect().await else {
            return;
        };
        let result = follow(&conn, topology, holds_tx.clone(), stop.clone()).await;
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, "Following the control stream failed; starting over.");
        }
        after_each();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Reads the control stream from its latest snapshot, sends the holds once
/// caught up (then on each change), and follows it until `stop` fires or
/// the channel fails; writes a snapshot when one is due.
///
/// # Errors
/// A broker error, or a stream whose retention removed records that no
/// snapshot covers.
pub async fn follow(
    conn: &Connection,
    topology: &Topology,
    holds_tx: watch::Sender<Holds>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    follow_with(conn, topology, holds_tx, stop, &Options::default()).await
}

/// How a reader runs.
#[derive(Debug, Default)]
struct Options {
    /// Write a snapshot once caught up, due or not.
    force_snapshot: bool,
    /// Where to leave what the read did.
    stats: Option<Arc<std::sync::Mutex<ReadStats>>>,
}

/// How a reader's pass ended.
enum Pass {
    /// `stop` fired.
    Stopped,
    /// The state could not be had from where it started: why.
    NoState(String),
}

async fn follow_with(
    conn: &Connection,
    topology: &Topology,
    holds_tx: watch::Sender<Holds>,
    stop: CancellationToken,
    options: &Options,
) -> anyhow::Result<()> {
    ensure(conn, topology).await?;
    let pointer = match read_pointer(conn, topology).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "Reading the control stream's snapshot pointer failed; reading from its first record.");
            None
        }
    };
    // No usable pointer (a stream from before snapshots, its pointer queue
    // deleted, or a pointer that led nowhere): write one once caught up.
    let mut missing = pointer.is_none();
    let mut start = match pointer {
        Some(Pointer {
            base: Some(base), ..
        }) => Start::After(base),
        _ => Start::First,
    };
    loop {
        match pass(conn, topology, &holds_tx, &stop, options, start, missing).await? {
            Pass::Stopped => return Ok(()),
            Pass::NoState(why) if start != Start::First => {
                tracing::warn!(reason = %why, "The control stream's snapshot pointer is unusable; reading from its first record.");
                start = Start::First;
                missing = true;
            }
            Pass::NoState(why) => anyhow::bail!(
                "the control stream cannot be read: {why}; its retention removed records no complete snapshot covers (registry.control_max_bytes too small for the registry?): state was lost"
            ),
        }
    }
}

/// The offset of a stream delivery.
fn offset_of(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    u64::try_from(crate::contract::int(headers, "x-stream-offset")?).ok()
}

/// One reader from `start`: attach, append a marker, read to it, follow.
async fn pass(
    conn: &Connection,
    topology: &Topology,
    holds_tx: &watch::Sender<Holds>,
    stop: &CancellationToken,
    options: &Options,
    start: Start,
    pointer_missing: bool,
) -> anyhow::Result<Pass> {
    let token = uuid::Uuid::new_v4();
    // Each reader its own stretch of the snapshot threshold.
    let jitter = f64::from(token.as_bytes()[0]) / 512.0;
    let token = token.to_string();
    let ch = conn.create_channel().await?;
    ch.basic_qos(500, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    let offset = match start {
        Start::First => AMQPValue::LongString(LongString::from("first")),
        Start::After(base) => {
            AMQPValue::LongLongInt(i64::try_from(base.saturating_add(1)).unwrap_or(i64::MAX))
        }
    };
    args.insert("x-stream-offset".into(), offset);
    let mut consumer = ch
        .basic_consume(
            topology.control().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    // Attached first, so the marker is read even when the start is past the
    // stream's end (a stream deleted and declared again).
    append(
        conn,
        topology,
        &Command::Marker {
            token: token.clone(),
        },
    )
    .await?;
    let mut replay = Replay::new(start);
    let mut caught_up = false;
    let mut unacked = 0u32;
    let ended = loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => break Pass::Stopped,
        };
        let Some(delivery) = delivery else {
            anyhow::bail!("the control stream consumer was cancelled");
        };
        let delivery = delivery?;
        // Acked in ranges: a stream consumer's acks only return credit.
        unacked += 1;
        if unacked >= 100 {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
            unacked = 0;
        }
        let Some(offset) = offset_of(&delivery.properties) else {
            tracing::warn!("Skipping a control stream record without an offset.");
            continue;
        };
        let command = match serde_json::from_slice::<Command>(&delivery.data) {
            Ok(c) => c,
            Err(e) => {
                replay.records += 1;
                tracing::warn!(error = %e, offset, "Skipping an unreadable record of the control stream.");
                continue;
            }
        };
        let mine = matches!(&command, Command::Marker { token: t } if *t == token);
        let described = caught_up.then(|| describe(&command));
        let outcome = replay.push(offset, command);
        if mine {
            let Some(state) = replay.state().cloned() else {
                let why = match replay.gap() {
                    Some((wanted, first)) => {
                        format!("offset {wanted} was wanted, {first} is the first one left")
                    }
                    None => format!("no complete snapshot after {start:?}"),
                };
                break Pass::NoState(why);
            };
            if let Some((wanted, first)) = replay.gap() {
                tracing::warn!(wanted, first, snapshot = ?replay.loaded, "Retention removed control stream records after the snapshot pointer; a newer complete snapshot covered them.");
            }
            caught_up = true;
            let mut wrote = None;
            if options.force_snapshot
                || pointer_missing
                || snapshot::due(replay.changes, &state, jitter)
            {
                match write_snapshot(conn, topology, &state, offset).await {
                    Ok(id) => {
                        replay.changes = 0;
                        wrote = Some(id);
                    }
                    Err(e) if options.force_snapshot => return Err(e),
                    Err(e) => {
                        replay.changes = 0;
                        tracing::warn!(error = %e, "Writing a snapshot of the control stream failed; the next reader tries again.");
                    }
                }
            }
            if let Some(stats) = &options.stats {
                *stats
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = ReadStats {
                    records: replay.records,
                    started_at: match start {
                        Start::First => None,
                        Start::After(base) => Some(base + 1),
                    },
                    snapshot: replay.loaded.clone(),
                    marker: offset,
                    wrote,
                };
            }
            holds_tx.send_replace(Arc::new(state));
            continue;
        }
        if !caught_up {
            continue;
        }
        if outcome == Outcome::Applied(true) {
            if let Some(change) = described {
                tracing::info!(change = %change, "Control stream changed.");
            }
            if let Some(state) = replay.state() {
                holds_tx.send_replace(Arc::new(state.clone()));
            }
        }
        if let Some(state) = replay
            .state()
            .filter(|s| snapshot::due(replay.changes, s, jitter))
            .cloned()
        {
            replay.changes = 0;
            if let Err(e) = write_snapshot(conn, topology, &state, offset).await {
                tracing::warn!(error = %e, "Writing a snapshot of the control stream failed; trying again later.");
            }
        }
    };
    let _ = ch.close(200, "stopping".into()).await;
    Ok(ended)
}

/// A log line for a record (never its secrets).
fn describe(command: &Command) -> String {
    match command {
        Command::Pause { endpoint, .. } => format!("endpoint {endpoint} paused by an operator"),
        Command::Resume { endpoint, .. } => format!("endpoint {endpoint} resumed by an operator"),
        Command::Marker { .. } => "marker".to_owned(),
        Command::Put { endpoint } => format!(
            "endpoint {} registered (version {})",
            endpoint.id, endpoint.version
        ),
        Command::Delete { id, .. } => format!("endpoint {id} removed from the registry"),
        Command::SnapshotBegin { id, base, .. } => format!("snapshot {id} as of {base}"),
        Command::SnapshotPart { id, seq, .. } => format!("snapshot {id} part {seq}"),
        Command::SnapshotEnd { id, parts } => format!("snapshot {id} end ({parts} parts)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_replay_in_order() {
        let mut state = State::default();
        assert!(apply(&mut state, &Command::hold("a", true)));
        assert!(!apply(&mut state, &Command::hold("a", true)), "idempotent");
        assert!(apply(&mut state, &Command::hold("b", true)));
        assert!(apply(&mut state, &Command::hold("a", false)));
        assert!(!apply(&mut state, &Command::Marker { token: "t".into() }));
        assert_eq!(state.holds.into_iter().collect::<Vec<_>>(), ["b"]);
    }

    fn stored(id: &str, version: u64) -> StoredEndpoint {
        StoredEndpoint {
            id: id.into(),
            version,
            name: None,
            description: None,
            metadata: serde_json::Map::new(),
            settings: serde_json::Map::new(),
            headers: BTreeMap::new(),
            secrets: Vec::new(),
            created_at: String::new(),
            updated_at: format!("v{version}"),
        }
    }

    #[test]
    fn puts_apply_only_on_top_of_the_version_they_read() {
        let mut state = State::default();
        let put = |e| Command::Put { endpoint: e };
        assert!(!apply(&mut state, &put(stored("a", 2))), "no version 1 yet");
        assert!(apply(&mut state, &put(stored("a", 1))));
        assert!(
            !apply(&mut state, &put(stored("a", 1))),
            "a second create loses"
        );
        assert!(apply(&mut state, &put(stored("a", 2))));
        let mut rival = stored("a", 2);
        rival.updated_at = "rival".into();
        assert!(
            !apply(&mut state, &put(rival)),
            "a concurrent update from v1 loses"
        );
        assert_eq!(state.endpoints["a"].updated_at, "v2");
        assert!(apply(
            &mut state,
            &Command::Delete {
                id: "a".into(),
                at: String::new()
            }
        ));
        assert!(
            !apply(&mut state, &put(stored("a", 3))),
            "no resurrection by a late update"
        );
        assert!(apply(&mut state, &put(stored("a", 1))), "created again");
    }

    #[test]
    fn records_are_tagged_json() {
        let text = serde_json::to_string(&Command::Pause {
            endpoint: "crm".into(),
            at: "2026-11-29T00:00:00Z".into(),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"op":"pause","endpoint":"crm","at":"2026-11-29T00:00:00Z"}"#
        );
    }
}
