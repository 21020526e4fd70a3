//! The one reader of the control stream: attach after the latest snapshot,
//! append a marker, replay up to it, then follow; write a snapshot when due.

use super::*;

/// How a reader runs.
#[derive(Debug, Default)]
pub(super) struct Options {
    /// Write a snapshot once caught up, due or not.
    pub(super) force_snapshot: bool,
    /// Where to leave what the read did.
    pub(super) stats: Option<Arc<std::sync::Mutex<ReadStats>>>,
    /// Readers waiting for this follower to pass their markers.
    pub(super) reads: Option<FollowerReads>,
}

/// How a reader's pass ended.
pub(super) enum Pass {
    /// `stop` fired.
    Stopped,
    /// The state could not be had from where it started: why.
    NoState(String),
}

pub(super) async fn follow_with(
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
pub(super) fn offset_of(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    u64::try_from(crate::contract::int(headers, "x-stream-offset")?).ok()
}

/// One reader from `start`: attach, append a marker, read to it, follow.
pub(super) async fn pass(
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
    let ch = crate::amqp::open_channel(conn).await?;
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
    // Readers' markers read before this reader caught up: answered then.
    let mut early: Vec<String> = Vec::new();
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
        if let (Command::Marker { token: theirs }, Some(reads)) = (&command, &options.reads)
            && !mine
            && reads.awaits(theirs)
        {
            if caught_up {
                // Markers change nothing: the state sent last is the state
                // as of this record.
                reads.answer(theirs, &holds_tx.borrow());
            } else {
                early.push(theirs.clone());
            }
        }
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
            let state = Arc::new(state);
            holds_tx.send_replace(state.clone());
            if let Some(reads) = &options.reads {
                for theirs in early.drain(..) {
                    reads.answer(&theirs, &state);
                }
            }
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
pub(super) fn describe(command: &Command) -> String {
    match command {
        Command::Pause { endpoint, .. } => format!("endpoint {endpoint} paused by an operator"),
        Command::Resume { endpoint, .. } => format!("endpoint {endpoint} resumed by an operator"),
        Command::Marker { .. } => "marker".to_owned(),
        Command::Put { endpoint } => format!(
            "endpoint {} registered (version {})",
            endpoint.id, endpoint.version
        ),
        Command::Delete { id, .. } => format!("endpoint {id} removed from the registry"),
        Command::TokenMint { tenant, id, .. } => format!("token {id} minted for tenant {tenant}"),
        Command::TokenRevoke { tenant, id } => format!("token {id} of tenant {tenant} revoked"),
        Command::SnapshotBegin { id, base, .. } => format!("snapshot {id} as of {base}"),
        Command::SnapshotPart { id, seq, .. } => format!("snapshot {id} part {seq}"),
        Command::SnapshotEnd { id, parts } => format!("snapshot {id} end ({parts} parts)"),
    }
}
