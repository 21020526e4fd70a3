//! Registry operations shared by the management API and `hookpost-admin`:
//! create, update, fetch, list, delete and rotate-secret, each reading the
//! control stream up to now and appending (with a publisher confirm) what
//! changes. Dispatchers follow the stream and apply changes within moments.

use crate::Config;
use crate::contract;
use crate::control::{self, Command, State};
use crate::registry::{self, FieldError, StoredEndpoint};
use crate::topology::Topology;
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Map, Value};
use std::time::Duration;

pub use crate::registry::OpError;

impl From<lapin::Error> for OpError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e.into())
    }
}

/// How an update treats the fields it is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `PUT`: the body is the whole endpoint (secrets and header values kept when left out).
    Replace,
    /// `PATCH`: a JSON merge patch (RFC 7396) on the endpoint.
    Merge,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    /// The endpoint id.
    pub id: String,
    /// Messages that were still waiting and went to the dead-letter queue
    /// (reason `endpoint_deleted`); only with `force`.
    pub dead_lettered: u32,
    /// Whether the endpoint's queue was deleted.
    pub queue_deleted: bool,
}

/// The registry, through one broker connection.
#[derive(Debug)]
pub struct Registry<'a> {
    conn: &'a Connection,
    config: &'a Config,
    topology: Topology,
}

/// How long a read of the control stream may take.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a delete waits for dispatchers to stop consuming the queue.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

impl<'a> Registry<'a> {
    /// The registry of `config`'s broker prefix, on `conn`.
    pub fn new(conn: &'a Connection, config: &'a Config) -> Self {
        Self {
            conn,
            config,
            topology: Topology::new(&config.amqp),
        }
    }

    /// The stream's state now: registered endpoints and operator holds.
    ///
    /// # Errors
    /// The broker failed.
    pub async fn state(&self) -> Result<State, OpError> {
        let mut attempt = 0;
        loop {
            match control::read(self.conn, &self.topology, READ_TIMEOUT).await {
                Ok(state) => return Ok((*state).clone()),
                Err(e) if attempt < 2 && self.conn.status().connected() => {
                    attempt += 1;
                    tracing::warn!(error = %e, "Reading the control stream failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(OpError::Broker(e)),
            }
        }
    }

    /// One registered endpoint.
    ///
    /// # Errors
    /// [`OpError::NotFound`], or the broker failed.
    pub async fn get(&self, id: &str) -> Result<StoredEndpoint, OpError> {
        self.state()
            .await?
            .endpoints
            .remove(id)
            .ok_or_else(|| OpError::NotFound(id.to_owned()))
    }

    /// Registers a new endpoint. Without `secrets`, one is generated; it is
    /// returned (once) as the second value.
    ///
    /// # Errors
    /// A bad field, an id in use, or the broker failed.
    pub async fn create(
        &self,
        mut input: Map<String, Value>,
    ) -> Result<(StoredEndpoint, Option<String>), OpError> {
        let id = input
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError {
                field: "id".into(),
                message: "is required (a string of [a-z0-9_-])".into(),
            })?
            .to_owned();
        if self.config.is_file_endpoint(&id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {} and is read-only here",
                self.config.origin.display()
            )));
        }
        let state = self.state().await?;
        if state.endpoints.contains_key(&id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} exists; update it instead"
            )));
        }
        let generated = match input.get("secrets") {
            None | Some(Value::Null) if self.config.registry.secrets_key.is_some() => {
                let probe = StoredEndpoint {
                    id: id.clone(),
                    version: 0,
                    name: None,
                    description: None,
                    metadata: Map::new(),
                    settings: input.clone(),
                    headers: Default::default(),
                    secrets: Vec::new(),
                    created_at: String::new(),
                    updated_at: String::new(),
                };
                let secret = registry::new_secret(&probe)?;
                input.insert(
                    "secrets".into(),
                    Value::Array(vec![Value::String(secret.clone())]),
                );
                Some(secret)
            }
            _ => None,
        };
        let stored = registry::register(
            input,
            self.config,
            self.config.registry.secrets_key.as_ref(),
            None,
        )?;
        // An id used before: stop sending its retries to the dead-letter queue.
        let ch = self.conn.create_channel().await?;
        let _ = self.topology.revive_endpoint(&ch, &id).await;
        let _ = ch.close(200, "revived".into()).await;
        self.put(&stored).await?;
        Ok((stored, generated))
    }

    /// Replaces or patches a registered endpoint.
    ///
    /// # Errors
    /// Not found, a bad field, a changed id, or the broker failed.
    pub async fn update(
        &self,
        id: &str,
        body: Map<String, Value>,
        mode: Mode,
    ) -> Result<StoredEndpoint, OpError> {
        if self.config.is_file_endpoint(id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {} and is read-only here",
                self.config.origin.display()
            )));
        }
        let current = self.get(id).await?;
        if let Some(other) = body.get("id").and_then(Value::as_str)
            && other != id
        {
            return Err(OpError::Invalid(FieldError {
                field: "id".into(),
                message: "cannot change; create a new endpoint instead".into(),
            }));
        }
        let key = self.config.registry.secrets_key.as_ref();
        let (mut settings, _) =
            registry::opened_settings(&current, key, time::OffsetDateTime::UNIX_EPOCH).map_err(
                |e| OpError::Internal(format!("the stored endpoint cannot be opened: {e}")),
            )?;
        if let Some(name) = &current.name {
            settings.insert("name".into(), Value::String(name.clone()));
        }
        if let Some(d) = &current.description {
            settings.insert("description".into(), Value::String(d.clone()));
        }
        settings.insert("metadata".into(), Value::Object(current.metadata.clone()));
        let mut next = match mode {
            Mode::Merge => {
                let mut merged = Value::Object(settings.clone());
                merge_patch(&mut merged, &Value::Object(body));
                match merged {
                    Value::Object(m) => m,
                    _ => Map::new(),
                }
            }
            Mode::Replace => {
                let mut next = body;
                // The API never shows secrets or header values: a PUT that
                // leaves them out (or sends "***") keeps them.
                if !next.contains_key("secrets")
                    && let Some(s) = settings.get("secrets")
                {
                    next.insert("secrets".into(), s.clone());
                }
                next
            }
        };
        // Header values are shown as "***": sending that back (or, with
        // PUT, leaving headers out) keeps the stored value.
        match (next.get_mut("headers"), settings.get("headers")) {
            (Some(Value::Object(new)), Some(Value::Object(old))) => {
                for (name, value) in new.iter_mut() {
                    if value.as_str() == Some("***")
                        && let Some(v) = old.get(name)
                    {
                        *value = v.clone();
                    }
                }
            }
            (None, Some(old)) if mode == Mode::Replace => {
                next.insert("headers".into(), old.clone());
            }
            _ => {}
        }
        next.insert("id".into(), Value::String(id.to_owned()));
        let mut stored = registry::register(next, self.config, key, Some(&current))?;
        // Secrets kept as they were keep their rotation expiries.
        if stored.secrets.len() == current.secrets.len() {
            let same = stored
                .secrets
                .iter()
                .zip(&current.secrets)
                .all(|(a, b)| open(key, id, &a.sealed) == open(key, id, &b.sealed));
            if same {
                stored.secrets = current.secrets.clone();
            }
        }
        self.put(&stored).await?;
        Ok(stored)
    }

    /// Generates a new secret; the previous ones keep signing for
    /// `registry.secret_overlap_ms`. Returns the endpoint and the new secret.
    ///
    /// # Errors
    /// Not found, no `registry.secrets_key`, or the broker failed.
    pub async fn rotate_secret(&self, id: &str) -> Result<(StoredEndpoint, String), OpError> {
        let key = self.config.registry.secrets_key.as_ref().ok_or_else(|| {
            OpError::Invalid(FieldError {
                field: "secrets".into(),
                message: "registry.secrets_key is not set: secrets cannot be stored".into(),
            })
        })?;
        if self.config.is_file_endpoint(id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {}: rotate its secrets there",
                self.config.origin.display()
            )));
        }
        let current = self.get(id).await?;
        let secret = registry::new_secret(&current)?;
        let next = registry::rotate(&current, key, &secret, self.config.registry.secret_overlap)?;
        self.put(&next).await?;
        Ok((next, secret))
    }

    /// Removes a registered endpoint. Its queue is deleted once no dispatcher
    /// consumes it: when empty, or with `force` after moving what it holds to
    /// the dead-letter queue (reason `endpoint_deleted`). Without `force`, a
    /// queue that still holds messages refuses the delete and nothing changes.
    ///
    /// # Errors
    /// Not found, messages waiting (without `force`), or the broker failed.
    pub async fn delete(&self, id: &str, force: bool) -> Result<Deleted, OpError> {
        if self.config.is_file_endpoint(id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {} and is read-only here",
                self.config.origin.display()
            )));
        }
        let queue = self.topology.endpoint_queue(id);
        let counts = self.queue_counts(&queue).await?;
        // Not registered (any more) but its queue is still there: an earlier
        // delete that timed out, or an endpoint removed from the file. Finish
        // the job on the queue.
        let stored = match self.get(id).await {
            Ok(stored) => Some(stored),
            Err(OpError::NotFound(_)) if counts.is_some() => None,
            Err(e) => return Err(e),
        };
        let waiting = counts.map_or(0, |(m, _)| m);
        if waiting > 0 && !force {
            return Err(OpError::Conflict(format!(
                "the endpoint's queue {queue} holds {waiting} messages; let them deliver, or delete with force (they go to the dead-letter queue)"
            )));
        }
        if stored.is_some() {
            self.append(&Command::Delete {
                id: id.to_owned(),
                at: control::now_rfc3339(),
            })
            .await?;
        }
        // Dispatchers stop consuming within moments; unacknowledged
        // messages return to the queue when they do.
        let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
        loop {
            match self.queue_counts(&queue).await? {
                None => {
                    return Ok(Deleted {
                        id: id.to_owned(),
                        dead_lettered: 0,
                        queue_deleted: false,
                    });
                }
                Some((_, 0)) => break,
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(OpError::Broker(anyhow::anyhow!(
                        "the endpoint was removed from the registry but its queue {queue} still has consumers after {RELEASE_TIMEOUT:?}; run the delete again"
                    )));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        // Detach it (patterns unbound, waiting retries routed to the
        // dead-letter queue), then empty it: anything that arrived since the
        // check above is dead-lettered too, never dropped.
        let patterns = stored
            .as_ref()
            .map(StoredEndpoint::events)
            .unwrap_or_default();
        let ch = self.conn.create_channel().await?;
        self.topology.retire_endpoint(&ch, id, &patterns).await?;
        let dead_lettered = self.dead_letter_all(id, &queue).await?;
        let deleted = self.topology.delete_endpoint_queue(&ch, id).await;
        let _ = ch.close(200, "deleted".into()).await;
        if let Err(e) = &deleted {
            tracing::warn!(endpoint = %id, error = %e, "Deleting the endpoint's queue failed; it is detached and can be deleted by hand.");
        }
        Ok(Deleted {
            id: id.to_owned(),
            dead_lettered,
            queue_deleted: deleted.is_ok(),
        })
    }

    /// Appends a new version and checks it won: the stream applies a change
    /// only on top of the version it was made from.
    async fn put(&self, stored: &StoredEndpoint) -> Result<(), OpError> {
        self.append(&Command::Put {
            endpoint: stored.clone(),
        })
        .await?;
        let state = self.state().await?;
        if state.endpoints.get(&stored.id) != Some(stored) {
            return Err(OpError::Conflict(format!(
                "endpoint {:?} was changed by someone else at the same time; fetch it and try again",
                stored.id
            )));
        }
        Ok(())
    }

    async fn append(&self, command: &Command) -> Result<(), OpError> {
        control::append(self.conn, &self.topology, command)
            .await
            .map_err(OpError::Broker)
    }

    /// `(ready messages, consumers)` of `queue`; `None` if it does not exist.
    ///
    /// # Errors
    /// Any broker error other than the queue's absence (404).
    pub async fn queue_counts(&self, queue: &str) -> Result<Option<(u32, u32)>, lapin::Error> {
        // Its own channel: a passive declare of a missing queue closes it.
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match q {
            Ok(q) => {
                let _ = ch.close(200, "checked".into()).await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            Err(e) if crate::amqp::reply_code(&e) == Some(crate::amqp::reply::NOT_FOUND) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every message of `queue` to the dead-letter queue, each acked
    /// only after the broker confirmed its copy.
    async fn dead_letter_all(&self, id: &str, queue: &str) -> Result<u32, OpError> {
        let ch = self.conn.create_channel().await?;
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

fn open(key: Option<&registry::SecretsKey>, id: &str, sealed: &str) -> Option<String> {
    key.and_then(|k| k.open(id, sealed).ok())
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(
            &mut doc,
            &serde_json::json!({"a": null, "b": {"c": 5}, "e": [2, 3], "f": "x"}),
        );
        assert_eq!(
            doc,
            serde_json::json!({"b": {"c": 5, "d": 3}, "e": [2, 3], "f": "x"})
        );
    }
}
