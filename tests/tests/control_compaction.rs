//! The control stream stays small to read: snapshots written into it, found
//! through `<prefix>.control-snapshot`, let a reader start from the current
//! endpoints and holds instead of the whole history; half-written snapshots
//! are ignored; changes written during a snapshot are kept; retention is
//! declared on new streams and a stream without it keeps working. Real
//! broker, records written with `control::append`/`append_all`.

use common::registry::StoredEndpoint;
use common::registry::control::{self, Command, Pointer, State};
use common::registry::snapshot;
use common::topology::Topology;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tests::Scope;

const READ: Duration = Duration::from_secs(60);

fn stored(id: &str, version: u64) -> StoredEndpoint {
    let mut settings = serde_json::Map::new();
    settings.insert("url".into(), format!("https://{id}.example.com/").into());
    settings.insert("events".into(), serde_json::json!(["#"]));
    StoredEndpoint {
        id: id.into(),
        version,
        name: None,
        description: None,
        metadata: serde_json::Map::new(),
        settings,
        headers: BTreeMap::new(),
        secrets: Vec::new(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: format!("v{version}"),
    }
}

fn put(id: &str, version: u64) -> Command {
    Command::Put {
        endpoint: stored(id, version),
    }
}

fn delete(id: &str) -> Command {
    Command::Delete {
        id: id.into(),
        at: control::now_rfc3339(),
    }
}

/// Versions by endpoint id and the holds.
fn summary(state: &State) -> (BTreeMap<String, u64>, BTreeSet<String>) {
    (
        state
            .endpoints
            .iter()
            .map(|(id, e)| (id.clone(), e.version))
            .collect(),
        state.holds.clone(),
    )
}

async fn connect() -> lapin::Connection {
    lapin::Connection::connect(&tests::amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_read_after_compaction_reads_the_snapshot_and_the_tail_not_the_history() {
    const ENDPOINTS: usize = 10_000;
    const CHANGES: usize = 100_000;
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = Topology::for_config(&config);
    let conns = [connect().await, connect().await];
    let ids: Vec<String> = (0..ENDPOINTS).map(|i| format!("e{i}")).collect();
    let puts: Vec<Command> = ids.iter().map(|id| put(id, 1)).collect();
    control::append_all(&conns[0], &topology, &puts)
        .await
        .expect("10,000 endpoints registered");
    // 100,000 changes: version bumps and pauses/resumes, each endpoint's in
    // order, written on two connections at once (even and odd endpoints).
    let mut versions = vec![1u64; ENDPOINTS];
    let mut held = vec![false; ENDPOINTS];
    let mut streams: [Vec<Command>; 2] = [Vec::new(), Vec::new()];
    for k in 0..CHANGES {
        let i = (k * 7919) % ENDPOINTS;
        let change = if k % 3 != 0 {
            versions[i] += 1;
            put(&ids[i], versions[i])
        } else {
            held[i] = !held[i];
            Command::hold(&ids[i], held[i])
        };
        streams[i % 2].push(change);
    }
    let writes = streams
        .iter()
        .zip(&conns)
        .map(|(commands, conn)| control::append_all(conn, &topology, commands));
    for written in futures_util::future::join_all(writes).await {
        written.expect("100,000 changes written");
    }
    let expected_versions: BTreeMap<String, u64> = ids.iter().cloned().zip(versions).collect();
    let expected_holds: BTreeSet<String> = ids
        .iter()
        .zip(&held)
        .filter(|(_, h)| **h)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!expected_holds.is_empty());

    // The first reader reads the whole history (the stream has no snapshot
    // yet) and, being past max(1000, 2 × entries) changes, writes one.
    let (state, first) = control::read_with_stats(&conns[1], &topology, READ)
        .await
        .expect("first read");
    assert!(
        first.records >= (ENDPOINTS + CHANGES) as u64,
        "read the history: {first:?}"
    );
    assert_eq!(
        summary(&state),
        (expected_versions.clone(), expected_holds.clone())
    );
    let written = first.wrote.clone().expect("a snapshot was due");

    // A fresh reader, on another connection, starts at that snapshot.
    let fresh = connect().await;
    let (state, stats) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("fresh read");
    assert_eq!(summary(&state), (expected_versions, expected_holds.clone()));
    assert_eq!(stats.snapshot.as_deref(), Some(written.as_str()));
    assert_eq!(stats.started_at, Some(first.marker + 1));
    let snapshot_records = ENDPOINTS.div_ceil(snapshot::PART_ITEMS)
        + expected_holds.len().div_ceil(snapshot::PART_ITEMS)
        + 2;
    assert!(
        stats.records <= (snapshot_records + 10) as u64,
        "read {} records; the snapshot has {snapshot_records}",
        stats.records
    );
    assert!(stats.wrote.is_none(), "nothing to compact yet");
    // Whole endpoints: everything a Put carried.
    assert_eq!(*state.endpoints["e42"], {
        let mut e = stored("e42", state.endpoints["e42"].version);
        e.updated_at = format!("v{}", e.version);
        e
    });
}

#[tokio::test]
async fn compaction_keeps_every_endpoint_pause_and_version_and_compare_and_set_still_holds() {
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = Topology::for_config(&config);
    let conn = &scope.connection;
    let history = vec![
        put("a", 1),
        put("a", 2),
        put("b", 1),
        put("c", 1),
        delete("c"),
        put("c", 1),
        put("c", 2),
        put("d", 1),
        delete("d"),
        Command::hold("a", true),
        Command::hold("c", true),
        Command::hold("c", false),
        Command::hold("file-only", true),
        put("b", 3), // made from a version that never won: ignored
    ];
    control::append_all(conn, &topology, &history)
        .await
        .expect("history");
    let (before, _) = control::read_with_stats(conn, &topology, READ)
        .await
        .expect("read");
    let (compacted, stats) = control::compact(conn, &topology, READ)
        .await
        .expect("compact");
    let id = stats.wrote.clone().expect("a snapshot");
    assert_eq!(*compacted, *before);
    let fresh = connect().await;
    let (after, stats) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("read after");
    assert_eq!(stats.snapshot.as_deref(), Some(id.as_str()));
    assert_eq!(*after, *before, "whole endpoints, versions and holds");
    assert_eq!(
        summary(&after),
        (
            BTreeMap::from([("a".into(), 2), ("b".into(), 1), ("c".into(), 2)]),
            BTreeSet::from(["a".into(), "file-only".into()]),
        )
    );
    // Compare-and-set across the snapshot: a Put applies only on top of the
    // version it was made from; a deleted endpoint is not resurrected.
    control::append_all(
        conn,
        &topology,
        &[
            put("a", 2),
            put("a", 3),
            put("b", 3),
            put("d", 2),
            put("d", 1),
        ],
    )
    .await
    .expect("changes");
    let (state, stats) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("read");
    assert_eq!(stats.snapshot.as_deref(), Some(id.as_str()));
    assert_eq!(
        summary(&state).0,
        BTreeMap::from([
            ("a".into(), 3),
            ("b".into(), 1),
            ("c".into(), 2),
            ("d".into(), 1)
        ])
    );
}

#[tokio::test]
async fn a_half_written_snapshot_is_ignored() {
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = Topology::for_config(&config);
    let conn = &scope.connection;
    control::append_all(
        conn,
        &topology,
        &[put("a", 1), put("b", 1), Command::hold("a", true)],
    )
    .await
    .expect("history");
    let (_, stats) = control::compact(conn, &topology, READ)
        .await
        .expect("compact");
    let good = stats.wrote.expect("a snapshot");
    control::append(conn, &topology, &put("a", 2))
        .await
        .expect("change");

    // A writer crashes half way: begin and a part, no end, no pointer.
    let (state, stats) = control::read_with_stats(conn, &topology, READ)
        .await
        .expect("read");
    let mut half = snapshot::records("crashed", stats.marker, "t", &state);
    half.pop();
    control::append_all(conn, &topology, &half)
        .await
        .expect("half a snapshot");
    control::append_all(conn, &topology, &[put("b", 2), Command::hold("b", true)])
        .await
        .expect("change");
    let fresh = connect().await;
    let (state, stats) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("read");
    assert_eq!(stats.snapshot.as_deref(), Some(good.as_str()));
    assert_eq!(
        summary(&state),
        (
            BTreeMap::from([("a".into(), 2), ("b".into(), 2)]),
            BTreeSet::from(["a".into(), "b".into()]),
        )
    );

    // Even a pointer at a half-written snapshot (which writers never
    // record) is survived: the reader finds no complete snapshot after it,
    // reads from the first record, and records a usable pointer.
    let (state, stats) = control::read_with_stats(conn, &topology, READ)
        .await
        .expect("read");
    let mut half = snapshot::records("bad", stats.marker, "t", &State::default());
    half.pop();
    control::append_all(conn, &topology, &half)
        .await
        .expect("half a snapshot");
    control::publish_pointer(
        conn,
        &topology,
        &Pointer {
            snapshot: Some("bad".into()),
            base: Some(stats.marker),
        },
    )
    .await
    .expect("pointer");
    control::append(conn, &topology, &delete("a"))
        .await
        .expect("change");
    let (after, fell_back) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("read");
    assert_eq!(fell_back.started_at, None, "from the first record");
    let mut expected = (*state).clone();
    expected.endpoints.remove("a");
    assert_eq!(*after, expected);
    let healed = fell_back.wrote.expect("a new snapshot recorded");
    let (again, stats) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("read");
    assert_eq!(stats.snapshot.as_deref(), Some(healed.as_str()));
    assert_eq!(*again, expected);
}

#[tokio::test]
async fn changes_written_while_a_snapshot_is_written_are_not_lost() {
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = Topology::for_config(&config);
    let conn = &scope.connection;
    let base: Vec<Command> = (0..250).map(|i| put(&format!("e{i}"), 1)).collect();
    control::append_all(conn, &topology, &base)
        .await
        .expect("history");

    // Step by step: the writer read up to its marker; others write between
    // its records (a new endpoint, an update, a delete, a pause).
    let (state, stats) = control::read_with_stats(conn, &topology, READ)
        .await
        .expect("read");
    let mut records = snapshot::records("slow", stats.marker, "t", &state);
    let end = records.pop().expect("end");
    let begin = records.remove(0);
    let (first_part, rest) = records.split_at(1);
    control::append(conn, &topology, &put("before-begin", 1))
        .await
        .expect("put");
    control::append(conn, &topology, &begin)
        .await
        .expect("begin");
    control::append(conn, &topology, &put("during", 1))
        .await
        .expect("put");
    control::append_all(conn, &topology, first_part)
        .await
        .expect("part");
    control::append_all(
        conn,
        &topology,
        &[put("e0", 2), delete("e1"), Command::hold("e2", true)],
    )
    .await
    .expect("changes");
    control::append_all(conn, &topology, rest)
        .await
        .expect("parts");
    control::append(conn, &topology, &end).await.expect("end");
    control::publish_pointer(
        conn,
        &topology,
        &Pointer {
            snapshot: Some("slow".into()),
            base: Some(stats.marker),
        },
    )
    .await
    .expect("pointer");
    control::append(conn, &topology, &put("after", 1))
        .await
        .expect("put");
    let fresh = connect().await;
    let (state, stats) = control::read_with_stats(&fresh, &topology, READ)
        .await
        .expect("read");
    assert_eq!(stats.snapshot.as_deref(), Some("slow"));
    for id in ["before-begin", "during", "after"] {
        assert_eq!(state.endpoints.get(id).map(|e| e.version), Some(1), "{id}");
    }
    assert_eq!(state.endpoints["e0"].version, 2);
    assert!(!state.endpoints.contains_key("e1"));
    assert_eq!(state.endpoints.len(), 250 - 1 + 3);
    assert!(state.holds.contains("e2"));

    // And for real: compactions racing with writers on other connections.
    let writer = connect().await;
    let topology2 = topology.clone();
    let writes = tokio::spawn(async move {
        for i in 0..200 {
            control::append(&writer, &topology2, &put(&format!("w{i}"), 1))
                .await
                .expect("put");
        }
    });
    let mut compactions = 0;
    while !writes.is_finished() || compactions == 0 {
        control::compact(&fresh, &topology, READ)
            .await
            .expect("compact");
        compactions += 1;
    }
    writes.await.expect("writer");
    let reader = connect().await;
    let (state, stats) = control::read_with_stats(&reader, &topology, READ)
        .await
        .expect("read");
    assert!(stats.snapshot.is_some());
    for i in 0..200 {
        assert!(state.endpoints.contains_key(&format!("w{i}")), "w{i} lost");
    }
    assert_eq!(state.endpoints.len(), 252 + 200);
}

#[tokio::test]
async fn a_new_stream_is_declared_with_retention_and_an_old_one_without_keeps_working() {
    let scope = Scope::new().await;
    let config = scope.config("[registry]\ncontrol_max_bytes = 16777216\n");
    let topology = Topology::for_config(&config);
    assert_eq!(topology.control_max_bytes(), 16 << 20);
    control::ensure(&scope.connection, &topology)
        .await
        .expect("created");
    // Declared with the retention arguments: the same declare is accepted,
    // another limit is refused.
    let ch = scope.connection.create_channel().await.expect("channel");
    control::declare(&ch, &topology)
        .await
        .expect("same arguments");
    let other = Topology::for_config(&scope.config(""));
    let refused = control::declare(&ch, &other).await;
    assert!(refused.is_err(), "declared with x-max-length-bytes");

    // A stream declared before retention existed (no arguments): every
    // reader and writer keeps working.
    let old = Scope::new().await;
    let old_config = old.config("");
    let old_topology = Topology::for_config(&old_config);
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("stream".into()),
    );
    old.channel
        .queue_declare(
            old_topology.control().as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("old-style stream");
    control::append_all(
        &old.connection,
        &old_topology,
        &[put("x", 1), Command::hold("x", true)],
    )
    .await
    .expect("append");
    let (state, stats) = control::read_with_stats(&old.connection, &old_topology, READ)
        .await
        .expect("read");
    assert_eq!(state.endpoints["x"].version, 1);
    assert!(state.holds.contains("x"));
    assert!(stats.wrote.is_some(), "no pointer yet: one is recorded");
    let (_, stats) = control::read_with_stats(&old.connection, &old_topology, READ)
        .await
        .expect("read");
    assert!(stats.snapshot.is_some());
}

#[tokio::test]
async fn a_reader_fails_loudly_when_retention_removed_state_no_snapshot_covers() {
    let scope = Scope::new().await;
    let config = scope.config("[registry]\ncontrol_max_bytes = 8388608\n");
    let topology = Topology::for_config(&config);
    // About 12 MiB of history and no reader (so no snapshot) in between:
    // retention removes the oldest segments, and with them the first Puts.
    let mut big = stored("big", 1);
    big.metadata
        .insert("padding".into(), "x".repeat(1024).into());
    let mut history = Vec::new();
    for v in 1..=12_000u64 {
        let mut e = big.clone();
        e.version = v;
        history.push(Command::Put { endpoint: e });
    }
    control::append_all(&scope.connection, &topology, &history)
        .await
        .expect("history");
    let err = control::read_with_stats(&scope.connection, &topology, READ)
        .await
        .expect_err("state was lost: the read must fail");
    assert!(
        format!("{err:#}").contains("retention"),
        "names the cause: {err:#}"
    );
}

/// Appends skip the passive declare once this process knows the stream.
/// A stream gone since (deleted, or another broker under the same prefix)
/// returns the record: a single record is then appended again after the
/// stream is made sure of, several fail (some may have landed), and the
/// next append makes sure of it again.
#[tokio::test]
async fn an_append_after_the_stream_went_away_makes_sure_of_it_again() {
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = Topology::for_config(&config);
    let conn = &scope.connection;
    control::append(conn, &topology, &put("a", 1))
        .await
        .expect("first append creates the stream");
    let delete_stream = || async {
        scope
            .channel
            .queue_delete(
                topology.control().as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .expect("stream deleted")
    };
    delete_stream().await;
    control::append(conn, &topology, &put("b", 1))
        .await
        .expect("a single record lands in a new stream");
    let (state, _) = control::read_with_stats(conn, &topology, READ)
        .await
        .expect("read");
    assert_eq!(
        summary(&state).0,
        BTreeMap::from([("b".to_owned(), 1)]),
        "the new stream holds the record appended after the delete"
    );

    delete_stream().await;
    let several = control::append_all(conn, &topology, &[put("c", 1), put("d", 1)]).await;
    let error = several.expect_err("several records to a gone stream fail");
    assert!(
        error.to_string().contains("returned"),
        "the broker returned them: {error}"
    );
    control::append_all(conn, &topology, &[put("c", 1), put("d", 1)])
        .await
        .expect("the next append makes sure of the stream");
    let (state, _) = control::read_with_stats(conn, &topology, READ)
        .await
        .expect("read");
    assert_eq!(
        summary(&state).0,
        BTreeMap::from([("c".to_owned(), 1), ("d".to_owned(), 1)])
    );
}
