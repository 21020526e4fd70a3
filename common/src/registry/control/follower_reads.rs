//! Reads of the registry answered by a live follower instead of a replay
//! of the control stream (the management API's writes).

use super::{Command, Holds, append};
use crate::topology::Topology;
use lapin::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Reads of the registry answered by a live follower ([`super::keep_following`]):
/// the reader appends a marker and the follower, once it has applied every
/// record before that marker, answers with its state. The same state a
/// fresh [`super::read`] gives, for one append instead of a replay of the snapshot
/// and the changes after it (what made each management API write cost in
/// proportion to the registry). Cheap to clone; the follower and its
/// readers share one.
#[derive(Debug, Clone, Default)]
pub struct FollowerReads {
    waiting: Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Holds>>>>,
}

impl FollowerReads {
    /// The state as of now (every record confirmed before this call
    /// applied), from the follower; `None` when it did not answer within
    /// `timeout` (not following, or still catching up): then read the
    /// stream instead.
    pub async fn read(
        &self,
        conn: &Connection,
        topology: &Topology,
        timeout: Duration,
    ) -> Option<Holds> {
        let token = format!("read-{}", uuid::Uuid::new_v4());
        let (tx, rx) = oneshot::channel();
        self.lock().insert(token.clone(), tx);
        let marker = Command::Marker {
            token: token.clone(),
        };
        let answered = match append(conn, topology, &marker).await {
            Ok(()) => tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        if answered.is_none() {
            self.lock().remove(&token);
        }
        answered
    }

    /// Whether a reader waits for the marker `token`.
    pub(super) fn awaits(&self, token: &str) -> bool {
        self.lock().contains_key(token)
    }

    /// Answers the reader of `token`, if it still waits.
    pub(super) fn answer(&self, token: &str, state: &Holds) {
        if let Some(tx) = self.lock().remove(token) {
            let _ = tx.send(state.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Holds>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
