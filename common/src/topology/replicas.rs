//! How many members the quorum queues of a topology get
//! (`amqp.quorum_replicas`, `x-quorum-initial-group-size`), and what an
//! existing installation's queues were created with.
//!
//! The broker refuses to declare an existing queue with another value of
//! the argument, or with it where the queue was created without it (406,
//! which closes the channel). Queue arguments cannot change, and the member
//! count only matters when a queue is created, so [`Replicas::settle`] finds
//! the value the installation's dead-letter queue was created with, and the
//! topology declares every queue with that value from then on.

use super::{Topology, TopologyError};
use lapin::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// `in_use` when the queues were created without the argument.
const WITHOUT: u8 = 0;

/// The largest member count tried when looking for an existing queue's.
const LARGEST_TRIED: u8 = 9;

/// Prefixes whose differing member count this process has logged.
static SAID: crate::names::Names = crate::names::Names::new();

/// The count each prefix's dead-letter queue last accepted in this process
/// (`None` inside: without the argument): tried first by the next
/// [`Replicas::settle`], so an installation whose queues differ from
/// `amqp.quorum_replicas` is not refused (406, a channel closed by the
/// broker) on every API write. Only a hint: the broker still decides.
static LAST_SETTLED: std::sync::Mutex<BTreeMap<String, Option<u8>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The member count asked for, and the one declarations use (shared by the
/// topology's clones).
#[derive(Debug, Clone)]
pub(super) struct Replicas {
    wanted: u8,
    in_use: Arc<AtomicU8>,
}

impl Replicas {
    pub(super) fn new(wanted: u8) -> Self {
        Self {
            wanted,
            in_use: Arc::new(AtomicU8::new(wanted)),
        }
    }

    /// The `x-quorum-initial-group-size` to declare quorum queues with
    /// (`None`: without it).
    pub(super) fn arg(&self) -> Option<u8> {
        match self.in_use.load(Ordering::Relaxed) {
            WITHOUT => None,
            n => Some(n),
        }
    }

    /// Takes the count this process last settled for `prefix` without
    /// asking the broker; whether there was one.
    pub(super) fn adopt_last(&self, prefix: &str) -> bool {
        let last = LAST_SETTLED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(prefix)
            .copied();
        match last {
            Some(count) => {
                self.in_use
                    .store(count.unwrap_or(WITHOUT), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Declares the dead-letter queue with the wanted member count, else
    /// with none, else with each count up to [`LARGEST_TRIED`], each on a
    /// channel of its own, and keeps the first the broker accepts. No
    /// message text is read: an accepted declaration is the proof.
    ///
    /// # Errors
    /// The broker's first refusal when it accepts none (another argument
    /// differs), or any other broker error.
    pub(super) async fn settle(
        &self,
        topology: &Topology,
        conn: &Connection,
    ) -> Result<(), TopologyError> {
        let queue = topology.dead();
        let mut refused = None;
        let last = LAST_SETTLED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topology.prefix())
            .copied();
        for candidate in ordered(last, self.wanted) {
            let ch =
                crate::amqp::open_channel(conn)
                    .await
                    .map_err(|source| TopologyError::Broker {
                        object: "a channel".into(),
                        source,
                    })?;
            let args = topology.queue_args_with(candidate);
            match topology.declare_queue(&ch, &queue, args).await {
                Ok(()) => {
                    let _ = ch.close(200, "declared".into()).await;
                    self.in_use
                        .store(candidate.unwrap_or(WITHOUT), Ordering::Relaxed);
                    LAST_SETTLED
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(topology.prefix().to_owned(), candidate);
                    if candidate != Some(self.wanted) {
                        self.say_once(topology.prefix(), candidate);
                    }
                    return Ok(());
                }
                Err(e @ TopologyError::Conflict { .. }) => {
                    refused.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(refused.unwrap_or_else(|| unreachable!("candidates are never empty")))
    }

    fn say_once(&self, prefix: &str, found: Option<u8>) {
        if !SAID.insert(prefix) {
            return;
        }
        let created = found.map_or_else(
            || "without a member count (before amqp.quorum_replicas existed)".to_owned(),
            |n| format!("with {n} members"),
        );
        // INFO: an upgrade or a changed setting, nothing is wrong.
        tracing::info!(
            prefix,
            quorum_replicas = self.wanted,
            "The quorum queues under this prefix were created {created}; hookpost declares them, and the queues it creates from now on, the same way (queue arguments cannot change). Change the members of existing queues with rabbitmq-queues grow and shrink."
        );
    }
}

/// The member counts tried, in order: the wanted one, none, the others.
fn candidates(wanted: u8) -> impl Iterator<Item = Option<u8>> {
    std::iter::once(Some(wanted))
        .chain(std::iter::once(None))
        .chain((1..=LARGEST_TRIED).filter(move |n| *n != wanted).map(Some))
}

/// [`candidates`], with the count accepted `last` time (if any) first.
fn ordered(last: Option<Option<u8>>, wanted: u8) -> impl Iterator<Item = Option<u8>> {
    last.into_iter()
        .chain(candidates(wanted).filter(move |c| Some(*c) != last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wanted_count_is_tried_first_then_none_then_each_other_once() {
        let tried: Vec<Option<u8>> = candidates(3).collect();
        assert_eq!(tried[..2], [Some(3), None]);
        assert_eq!(tried.len(), 1 + 1 + 8);
        let mut counts: Vec<u8> = tried.iter().flatten().copied().collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=9).collect::<Vec<_>>());
        assert_eq!(candidates(12).count(), 1 + 1 + 9);
    }

    #[test]
    fn the_count_accepted_last_time_is_tried_first_and_only_once() {
        let tried: Vec<Option<u8>> = ordered(Some(None), 3).collect();
        assert_eq!(tried[..2], [None, Some(3)]);
        assert_eq!(tried.len(), candidates(3).count());
        let tried: Vec<Option<u8>> = ordered(Some(Some(5)), 3).collect();
        assert_eq!(tried[..3], [Some(5), Some(3), None]);
        assert_eq!(tried.iter().filter(|c| **c == Some(5)).count(), 1);
        assert!(ordered(None, 3).eq(candidates(3)));
    }

    #[test]
    fn clones_share_what_was_settled() {
        let r = Replicas::new(3);
        let clone = r.clone();
        assert_eq!(clone.arg(), Some(3));
        r.in_use.store(WITHOUT, Ordering::Relaxed);
        assert_eq!(clone.arg(), None);
        r.in_use.store(2, Ordering::Relaxed);
        assert_eq!(clone.arg(), Some(2));
    }
}
