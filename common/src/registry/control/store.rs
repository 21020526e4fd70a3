//! Where the control stream lives and how it is written: its declaration and
//! retention, appends with confirms, the snapshot pointer queue and the
//! writing of snapshots.

use super::*;

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
/// first, once the stream is larger than `max_bytes`), and the replicas
/// (`registry.control_replicas`) when `with_replicas`.
pub(super) fn stream_args(topology: &Topology, with_replicas: bool) -> FieldTable {
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
    if with_replicas {
        args.insert(
            "x-initial-cluster-size".into(),
            AMQPValue::LongLongInt(topology.control_replicas().into()),
        );
    }
    args
}

/// The segment size for a retention of `max_bytes`: a sixteenth, so that
/// removing a segment frees little at a time, and at most RabbitMQ's
/// default of 500 MB.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(256 << 10, 500_000_000)
}

/// Declares the control stream, with its retention and replicas. Prefer
/// [`ensure`]: a stream declared earlier without these arguments refuses
/// this declare (PRECONDITION_FAILED, which closes `ch`).
///
/// # Errors
/// The broker's refusal (streams need RabbitMQ 3.9 or later).
pub async fn declare(ch: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    declare_with(ch, topology, true).await
}

async fn declare_with(
    ch: &Channel,
    topology: &Topology,
    with_replicas: bool,
) -> Result<(), lapin::Error> {
    ch.queue_declare(
        topology.control().as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        stream_args(topology, with_replicas),
    )
    .await?;
    Ok(())
}

/// Declares the pointer queue: classic (a quorum queue counts each requeue
/// as a failed delivery and, with a delivery limit, would drop the
/// pointer), durable, the newest [`POINTER_COPIES`] messages kept.
pub(super) async fn declare_pointer_queue(
    ch: &Channel,
    topology: &Topology,
) -> Result<(), lapin::Error> {
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
static RETENTION_CHECKED: crate::names::Names = crate::names::Names::new();

/// Control streams this process found or created ([`ensure`]): appends to
/// them skip the passive declare (a channel and a round trip each; an API
/// write appends twice). An append the broker returns (no such queue any
/// more, or another broker under the same prefix) forgets the stream, and
/// a single record is appended again after [`ensure`].
static KNOWN: crate::names::Names = crate::names::Names::new();

/// A publish the broker returned: no queue took it.
#[derive(Debug, thiserror::Error)]
#[error("the broker returned it ({0})")]
pub(super) struct Returned(String);

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
    if crate::amqp::queue_exists(conn, &topology.control()).await? {
        check_retention(conn, topology).await;
        return Ok(());
    }
    let ch = crate::amqp::open_channel(conn).await?;
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
/// A stream created before `registry.control_replicas` existed has no
/// replica argument: the check is tried without it too.
pub(super) async fn check_retention(conn: &Connection, topology: &Topology) {
    let name = topology.control();
    if !RETENTION_CHECKED.insert(&name) {
        return;
    }
    let mut refused = false;
    for with_replicas in [true, false] {
        let Ok(ch) = crate::amqp::open_channel(conn).await else {
            return;
        };
        match declare_with(&ch, topology, with_replicas).await {
            Ok(()) => {
                let _ = ch.close(200, "checked".into()).await;
                return;
            }
            Err(e)
                if crate::amqp::reply_code(&e) == Some(crate::amqp::reply::PRECONDITION_FAILED) =>
            {
                refused = true;
            }
            Err(_) => return,
        }
    }
    if refused {
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
}

/// `name` as a regular expression matching itself.
pub(super) fn regex_escape(name: &str) -> String {
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
    let name = topology.control();
    let was_known = KNOWN.contains(&name);
    if !was_known {
        ensure(conn, topology).await?;
        KNOWN.insert(&name);
    }
    let mut published = publish_on_a_channel(conn, &name, commands).await;
    if let Err(e) = &published
        && e.is::<Returned>()
    {
        KNOWN.remove(&name);
        // Returned means not stored, so one record may be sent again; of
        // several, those before the returned one may have landed.
        if was_known && commands.len() == 1 {
            ensure(conn, topology).await?;
            KNOWN.insert(&name);
            published = publish_on_a_channel(conn, &name, commands).await;
        }
    }
    published.map_err(|e| anyhow::anyhow!("appending to the control stream: {e}"))
}

async fn publish_on_a_channel(
    conn: &Connection,
    stream: &str,
    commands: &[Command],
) -> anyhow::Result<()> {
    let ch = crate::amqp::open_channel(conn).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let published = publish_all(&ch, "", stream, commands).await;
    let _ = ch.close(200, "appended".into()).await;
    published
}

/// Publishes each of `items` as JSON, persistent and `mandatory`, with up
/// to 500 confirms outstanding; every one confirmed, or an error.
pub(super) async fn publish_all<T: Serialize>(
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
                    return Err(Returned(returned.reply_text.to_string()).into());
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
    let ch = crate::amqp::open_channel(conn).await?;
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
    let ch = crate::amqp::open_channel(conn).await?;
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
