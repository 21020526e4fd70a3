//! The control stream `<prefix>.control`: an append-only RabbitMQ stream of
//! operator pauses and resumes (`hookpost-admin endpoints pause|resume ID`),
//! of the endpoint registry's changes (the management API) and of tenant
//! tokens minted and revoked (their hashes only, [`super::tokens`]). Every
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

mod follower_reads;
mod reader;
mod store;

pub use follower_reads::FollowerReads;
use reader::*;
pub use store::*;

use super::StoredEndpoint;
use super::snapshot::{self, Outcome, Replay, Start};
use super::tokens::{self, StoredToken};
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
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The endpoints an operator holds.
    pub holds: BTreeSet<String>,
    /// The registered endpoints, by id.
    pub endpoints: BTreeMap<String, Arc<StoredEndpoint>>,
    /// The live tenant tokens (hashes only), by token id.
    pub tokens: BTreeMap<String, StoredToken>,
    /// The last [`RECENT`] versions applied to each endpoint (version and a
    /// digest of the record), so a writer whose change was followed at once
    /// by another one made on top of it can tell that its change landed.
    /// Not part of snapshots; not compared.
    recent: BTreeMap<String, std::collections::VecDeque<(u64, u64)>>,
}

/// Versions per endpoint kept in [`State`]'s recent history.
const RECENT: usize = 8;

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.holds == other.holds
            && self.endpoints == other.endpoints
            && self.tokens == other.tokens
    }
}

impl State {
    /// The runtime ids (each endpoint's own, then `<id>~<env>` for each of
    /// its environments) of the registered endpoints that `config`'s file
    /// does not hold: the queues the registry adds.
    pub fn runtime_ids(&self, config: &crate::config::Config) -> Vec<String> {
        self.endpoints
            .values()
            .filter(|e| !config.is_file_endpoint(&e.id))
            .flat_map(|e| e.runtime_bindings().into_iter().map(|(id, _)| id))
            .collect()
    }

    /// Whether `stored` was applied: it is the endpoint's current version,
    /// or one of its recent versions with the same content. `false` when
    /// another writer's record won that version, or (rarely) when the state
    /// came from a snapshot written after a later version.
    pub fn landed(&self, stored: &StoredEndpoint) -> bool {
        match self.endpoints.get(&stored.id) {
            Some(current) if current.version == stored.version => **current == *stored,
            Some(current) if current.version > stored.version => {
                let digest = digest(stored);
                self.recent
                    .get(&stored.id)
                    .is_some_and(|r| r.contains(&(stored.version, digest)))
            }
            _ => false,
        }
    }

    fn remember(&mut self, stored: &StoredEndpoint) {
        let recent = self.recent.entry(stored.id.clone()).or_default();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back((stored.version, digest(stored)));
    }
}

/// A digest of a stored endpoint, for [`State::landed`] (compared only
/// within one process).
fn digest(stored: &StoredEndpoint) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(stored)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
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
    /// versions and sealed secrets), holds and live tenant tokens (hashes).
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
        /// Live tenant tokens.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tokens: Vec<StoredToken>,
    },
    /// A tenant token was minted (only its hash is recorded). Ignored when
    /// the id is live already or the tenant holds
    /// [`tokens::MAX_PER_TENANT`] live tokens: its writer sees that it did
    /// not land.
    TokenMint {
        /// The tenant it acts for.
        tenant: String,
        /// The token's id.
        id: String,
        /// Lowercase hex SHA-256 of the whole token.
        hash: String,
        /// When (RFC 3339).
        created_at: String,
    },
    /// A tenant token was revoked.
    TokenRevoke {
        /// The tenant it acted for (a revoke naming another tenant changes nothing).
        tenant: String,
        /// The token's id.
        id: String,
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

    /// The `token_mint` record of `token`.
    pub fn mint(token: &StoredToken) -> Self {
        Self::TokenMint {
            tenant: token.tenant.clone(),
            id: token.id.clone(),
            hash: token.hash.clone(),
            created_at: token.created_at.clone(),
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
            let current = state.endpoints.get(&endpoint.id);
            let expected = current.map_or(1, |c| c.version + 1);
            if endpoint.version != expected {
                return false;
            }
            // A tenant never changes: a change written from a read of
            // another tenant's endpoint of the same id (deleted and created
            // again by someone else meanwhile) is ignored, like a lost race.
            if current.is_some_and(|c| c.tenant() != endpoint.tenant()) {
                return false;
            }
            state.remember(endpoint);
            state
                .endpoints
                .insert(endpoint.id.clone(), Arc::new(endpoint.clone()));
            true
        }
        Command::Delete { id, .. } => {
            state.recent.remove(id);
            state.endpoints.remove(id).is_some()
        }
        Command::TokenMint {
            tenant,
            id,
            hash,
            created_at,
        } => {
            if state.tokens.contains_key(id)
                || tokens::of_tenant(state, tenant).len() >= tokens::MAX_PER_TENANT
            {
                return false;
            }
            state.tokens.insert(
                id.clone(),
                StoredToken {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    hash: hash.clone(),
                    created_at: created_at.clone(),
                },
            );
            true
        }
        Command::TokenRevoke { tenant, id } => {
            if state.tokens.get(id).is_some_and(|t| &t.tenant == tenant) {
                state.tokens.remove(id);
                true
            } else {
                false
            }
        }
        // A snapshot is read by `snapshot::Replay`, never applied on top of
        // a state (its old versions and holds would undo later changes).
        Command::SnapshotBegin { .. }
        | Command::SnapshotPart { .. }
        | Command::SnapshotEnd { .. } => false,
    }
}

pub use crate::contract::now_rfc3339;
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
        reads: None,
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
/// reader that ended, before the pause. With `reads`, it answers those
/// readers' markers. Failures are logged with backoff (a broker away fails each).
pub async fn keep_following<C, F>(
    mut connect: C,
    topology: &Topology,
    holds_tx: watch::Sender<Holds>,
    stop: CancellationToken,
    reads: Option<FollowerReads>,
    mut after_each: impl FnMut(),
) where
    C: FnMut() -> F,
    F: Future<Output = Option<Arc<Connection>>>,
{
    let options = Options {
        reads,
        ..Options::default()
    };
    let mut failures = crate::logging::Throttle::for_failures();
    while let Some(conn) = connect().await {
        let result = follow_with(&conn, topology, holds_tx.clone(), stop.clone(), &options).await;
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = &result
            && let Some(failures) = failures.hit()
        {
            tracing::warn!(error = %e, failures, "Following the control stream failed; starting over (logged with backoff; `failures` counts the failures since the last line).");
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
        StoredEndpoint::sample(id, version)
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
        // Created again by tenant b: a late update read from a's endpoint of
        // the same id and version cannot take it over.
        let mut of_b = stored("t", 1);
        of_b.settings.insert("tenant".into(), "b".into());
        assert!(apply(&mut state, &put(of_b)));
        let mut late_a = stored("t", 2);
        late_a.settings.insert("tenant".into(), "a".into());
        assert!(!apply(&mut state, &put(late_a)), "the tenant never changes");
        assert_eq!(state.endpoints["t"].tenant(), Some("b"));
    }

    #[test]
    fn a_writer_can_tell_its_change_landed_when_another_followed_it() {
        let mut state = State::default();
        let put = |e| Command::Put { endpoint: e };
        let (mine, mut rival) = (stored("a", 2), stored("a", 2));
        rival.updated_at = "rival".into();
        assert!(apply(&mut state, &put(stored("a", 1))));
        assert!(apply(&mut state, &put(mine.clone())));
        assert!(
            !apply(&mut state, &put(rival.clone())),
            "made from v1: loses"
        );
        assert!(state.landed(&mine));
        assert!(!state.landed(&rival));
        // Another writer read `mine` and changed it again.
        assert!(apply(&mut state, &put(stored("a", 3))));
        assert!(state.landed(&mine), "followed, still landed");
        assert!(!state.landed(&rival), "never applied");
        assert!(!state.landed(&stored("a", 4)), "not written");
        // Only the last few versions are remembered.
        for v in 4..=20 {
            assert!(apply(&mut state, &put(stored("a", v))));
        }
        assert!(!state.landed(&mine), "too old to tell: a conflict");
        assert!(apply(
            &mut state,
            &Command::Delete {
                id: "a".into(),
                at: String::new()
            }
        ));
        assert!(!state.landed(&stored("a", 20)), "deleted");
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
