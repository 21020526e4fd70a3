//! The control stream `<prefix>.control`: an append-only RabbitMQ stream of
//! operator pauses and resumes (`hookpost-admin endpoints pause|resume ID`)
//! and of the endpoint registry's changes (the management API). Every
//! dispatcher replays it from its start and then follows it, so holds and
//! registered endpoints survive restarts of everything and reach every
//! running dispatcher within moments. RabbitMQ is the only store.
//!
//! To know when it has read everything written before it started, a reader
//! first appends a `marker` with a fresh token and reads until it meets it.

use super::StoredEndpoint;
use crate::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
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
    }
}

pub use crate::contract::now_rfc3339;

/// Declares the control stream.
///
/// # Errors
/// The broker's refusal (streams need RabbitMQ 3.9 or later).
pub async fn declare(ch: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    ch.queue_declare(
        topology.control().as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    Ok(())
}

/// Makes sure the control stream exists: a passive declare first, so only
/// the very first writer creates it. (RabbitMQ 3.10 answers two creations of
/// the same stream at the same moment with a connection-level
/// INTERNAL_ERROR; the loser's connection closes and its owner reconnects.)
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
            return Ok(());
        }
        Err(e) if crate::amqp::reply_code(&e) == Some(crate::amqp::reply::NOT_FOUND) => {}
        Err(e) => return Err(e),
    }
    // The failed passive declare closed that channel.
    let ch = conn.create_channel().await?;
    declare(&ch, topology).await?;
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
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
    ensure(conn, topology).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = serde_json::to_vec(command)?;
    let published = crate::amqp::publish_confirmed(
        &ch,
        "",
        &topology.control(),
        &body,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into()),
    )
    .await;
    let _ = ch.close(200, "appended".into()).await;
    published.map_err(|e| anyhow::anyhow!("appending to the control stream: {e}"))
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
    let (tx, mut rx) = watch::channel(Holds::default());
    let stop = CancellationToken::new();
    let follow = follow(conn, topology, tx, stop.clone());
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
    Ok(holds)
}

/// Follows the control stream until `stop`, starting over (replaying from
/// the start) one second after a reader fails or ends: the one follower loop
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

/// Replays the control stream, sends the holds once caught up (then on each
/// change), and follows it until `stop` fires or the channel fails.
///
/// # Errors
/// A broker error.
pub async fn follow(
    conn: &Connection,
    topology: &Topology,
    holds_tx: watch::Sender<Holds>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let token = uuid::Uuid::new_v4().to_string();
    append(
        conn,
        topology,
        &Command::Marker {
            token: token.clone(),
        },
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(200, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from("first")),
    );
    let mut consumer = ch
        .basic_consume(
            topology.control().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let mut holds = State::default();
    let mut caught_up = false;
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            () = stop.cancelled() => break,
        };
        let Some(delivery) = delivery else {
            anyhow::bail!("the control stream consumer was cancelled");
        };
        let delivery = delivery?;
        match serde_json::from_slice::<Command>(&delivery.data) {
            Ok(Command::Marker { token: t }) if t == token => {
                caught_up = true;
                holds_tx.send_replace(Arc::new(holds.clone()));
            }
            Ok(command) => {
                if apply(&mut holds, &command) && caught_up {
                    tracing::info!(change = %describe(&command), "Control stream changed.");
                    holds_tx.send_replace(Arc::new(holds.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Skipping an unreadable record of the control stream.");
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = ch.close(200, "stopping".into()).await;
    Ok(())
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
