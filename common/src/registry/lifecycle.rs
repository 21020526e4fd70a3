//! A registered endpoint's queues: declared when it is created or changed,
//! and its end: delete, with its queue drained to the dead-letter queue when
//! forced, and the queue counts that decide it.

use super::control::{self, Command};
use super::{OpError, Registry, StoredEndpoint};
use crate::contract;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use std::time::Duration;

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    /// The endpoint id.
    pub id: String,
    /// Messages that were still waiting and went to the dead-letter queue
    /// (reason `endpoint_deleted`); only with `force`.
    pub dead_lettered: u32,
    /// Whether the endpoint's queues (its own and its environments') were
    /// deleted: `false` when none existed or one could not be deleted.
    pub queue_deleted: bool,
}

/// How long a delete waits for dispatchers to stop consuming the queue.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

impl Registry<'_> {
    /// Declares the queues of `stored` (its own and its environments') and
    /// binds them with its patterns, so that events published once the
    /// write is answered wait in them, before any dispatcher applies the
    /// change. Bindings of patterns it no longer has are left to the
    /// dispatchers, which remove them. A failure is logged, not returned:
    /// the record landed, and every dispatcher declares the same when it
    /// applies it.
    pub(super) async fn declare_queues(&self, stored: &StoredEndpoint) {
        let mut declared = self.declare_on_a_channel(stored).await;
        if declared.is_err() {
            // The base topology this process declared may be gone since
            // (or this is another broker under the same prefix): all again.
            self.topology.forget_base();
            declared = self.declare_on_a_channel(stored).await;
        }
        if let Err(e) = declared {
            tracing::warn!(endpoint = %stored.id, error = %e, "Declaring the endpoint's queue failed; events published before a dispatcher applies the change may miss it.");
        }
    }

    /// The base topology (once per process) and `stored`'s queues and
    /// bindings, on a channel of their own.
    async fn declare_on_a_channel(&self, stored: &StoredEndpoint) -> anyhow::Result<()> {
        let ch = crate::amqp::open_channel(self.conn).await?;
        // Also settles the member count the installation's queues use.
        self.topology.declare_base_once(self.conn, &ch).await?;
        for (runtime_id, keys) in stored.runtime_bindings() {
            self.topology
                .declare_endpoint(&ch, &runtime_id, &keys)
                .await?;
        }
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    /// Removes a registered endpoint. Its queue, and each of its
    /// environments' queues `<id>~<env>`, is deleted once no dispatcher
    /// consumes it: when empty, or with `force` after moving what it holds to
    /// the dead-letter queue (reason `endpoint_deleted`). Without `force`, a
    /// queue that still holds messages refuses the delete and nothing changes.
    ///
    /// # Errors
    /// Not found, messages waiting (without `force`), or the broker failed.
    pub async fn delete(&self, id: &str, force: bool) -> Result<Deleted, OpError> {
        self.check_scope(id)?;
        if self.config.is_file_endpoint(id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {} and is read-only here",
                self.config.origin.display()
            )));
        }
        // Not registered (any more) but its queue is still there: an earlier
        // delete that timed out, an endpoint removed from the file, or an
        // environment removed from an endpoint (`<id>~<env>`). Finish the job
        // on the queue.
        let stored = match self.get(id).await {
            Ok(stored) => Some(stored),
            // A tenant never finishes a queue it cannot see.
            Err(OpError::NotFound(_)) if self.tenant.is_none() => None,
            Err(e) => return Err(e),
        };
        // Every queue it runs on: its own, then one per environment.
        let runtime = stored.as_ref().map_or_else(
            || vec![(id.to_owned(), Vec::new())],
            |s| s.runtime_bindings(),
        );
        let mut waiting = 0u64;
        let mut existing = 0;
        for (runtime_id, _) in &runtime {
            let queue = self.topology.endpoint_queue(runtime_id);
            if let Some((messages, _)) = self.queue_counts(&queue).await? {
                existing += 1;
                if messages > 0 && !force {
                    return Err(OpError::Conflict(format!(
                        "the endpoint's queue {queue} holds {messages} messages; let them deliver, or delete with force (they go to the dead-letter queue)"
                    )));
                }
                waiting += u64::from(messages);
            }
        }
        if stored.is_none() && existing == 0 {
            return Err(OpError::NotFound(id.to_owned()));
        }
        tracing::debug!(endpoint = %id, waiting, "Deleting an endpoint.");
        if stored.is_some() {
            self.append(&Command::Delete {
                id: id.to_owned(),
                at: control::now_rfc3339(),
            })
            .await?;
        }
        // Dispatchers stop consuming within moments; unacknowledged
        // messages return to the queues when they do.
        let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
        let mut present = Vec::new();
        for (runtime_id, keys) in runtime {
            let queue = self.topology.endpoint_queue(&runtime_id);
            loop {
                match self.queue_counts(&queue).await? {
                    None => break,
                    Some((_, 0)) => {
                        present.push((runtime_id, keys, queue));
                        break;
                    }
                    Some(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(OpError::Broker(anyhow::anyhow!(
                            "the endpoint was removed from the registry but its queue {queue} still has consumers after {RELEASE_TIMEOUT:?}; run the delete again"
                        )));
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        // Detach each (keys unbound, waiting retries routed to the
        // dead-letter queue), then empty it: anything that arrived since the
        // check above is dead-lettered too, never dropped.
        let mut dead_lettered = 0;
        let mut queue_deleted = !present.is_empty();
        let ch = crate::amqp::open_channel(self.conn).await?;
        for (runtime_id, keys, queue) in present {
            self.topology
                .retire_endpoint(&ch, &runtime_id, &keys)
                .await?;
            dead_lettered += self.dead_letter_all(&runtime_id, &queue).await?;
            if let Err(e) = self.topology.delete_endpoint_queue(&ch, &runtime_id).await {
                queue_deleted = false;
                tracing::warn!(endpoint = %runtime_id, error = %e, "Deleting the endpoint's queue failed; it is detached and can be deleted by hand.");
            }
        }
        let _ = ch.close(200, "deleted".into()).await;
        Ok(Deleted {
            id: id.to_owned(),
            dead_lettered,
            queue_deleted,
        })
    }

    /// `(ready messages, consumers)` of `queue`; `None` if it does not exist.
    ///
    /// # Errors
    /// Any broker error other than the queue's absence (404).
    pub async fn queue_counts(&self, queue: &str) -> Result<Option<(u32, u32)>, lapin::Error> {
        crate::amqp::queue_counts(self.conn, queue).await
    }

    /// Moves every message of `queue` to the dead-letter queue, each acked
    /// only after the broker confirmed its copy.
    async fn dead_letter_all(&self, id: &str, queue: &str) -> Result<u32, OpError> {
        let ch = crate::amqp::open_channel(self.conn).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut moved = 0;
        while let Some(msg) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let headers = msg
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            // The same headers as every other dead letter.
            let mut letter = contract::DeadLetter::new(
                id,
                contract::Reason::EndpointDeleted,
                contract::attempt(&headers).unwrap_or(1),
            );
            "the endpoint was deleted with force".clone_into(&mut letter.last_error);
            letter.event_type = msg
                .delivery
                .properties
                .kind()
                .as_ref()
                .map(ToString::to_string);
            let headers = letter.write(headers);
            let properties = crate::amqp::republished_properties(&msg.delivery.properties, headers);
            crate::amqp::publish_confirmed(&ch, &self.topology.dead(), id, &msg.delivery.data, properties)
                .await
                .map_err(|e| {
                    OpError::Broker(anyhow::anyhow!(
                        "the dead-letter queue refused a message ({e}); {moved} moved, the rest stay in {queue}"
                    ))
                })?;
            msg.delivery.ack(BasicAckOptions::default()).await?;
            moved += 1;
        }
        let _ = ch.close(200, "moved".into()).await;
        Ok(moved)
    }
}
