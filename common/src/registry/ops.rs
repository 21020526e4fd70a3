//! Registry operations shared by the management API and `hookpost-admin`:
//! create, update, fetch, list and rotate-secret, each reading the control
//! stream up to now (through the live follower when there is one:
//! [`control::FollowerReads`]) and appending (with a publisher confirm)
//! what changes.
//! Dispatchers follow the stream and apply changes within moments. Deletes
//! are in [`super::lifecycle`].

use super::control::{self, Command};
use super::patch::{keep_environment_values, keep_shown_url, merge_patch};
use super::{FieldError, OpError, StoredEndpoint};
use crate::Config;
use crate::topology::Topology;
use lapin::Connection;
use serde_json::{Map, Value};
use std::time::Duration;

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

/// The registry, through one broker connection.
#[derive(Debug)]
pub struct Registry<'a> {
    pub(super) conn: &'a Connection,
    pub(super) config: &'a Config,
    pub(super) topology: Topology,
    /// Set for a tenant token's requests: only this tenant's registered
    /// endpoints exist; every other one answers [`OpError::NotFound`].
    pub(super) tenant: Option<String>,
    /// A live follower that answers reads (the management API's), else
    /// each read replays the stream.
    reads: Option<control::FollowerReads>,
}

/// How long a read of the control stream may take.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a read waits for the live follower before it replays the
/// stream itself (the follower answers within milliseconds once caught up).
const FOLLOWER_TIMEOUT: Duration = Duration::from_secs(3);

impl<'a> Registry<'a> {
    /// The registry of `config`'s broker prefix, on `conn`.
    pub fn new(conn: &'a Connection, config: &'a Config) -> Self {
        Self {
            conn,
            config,
            topology: Topology::for_config(config),
            tenant: None,
            reads: None,
        }
    }

    /// The same registry, its reads answered by the live follower of
    /// `reads` (falling back to a replay when it does not answer in time).
    #[must_use]
    pub fn with_follower(mut self, reads: control::FollowerReads) -> Self {
        self.reads = Some(reads);
        self
    }

    /// The same registry as seen by a tenant token of `tenant`: endpoints
    /// of other tenants, global ones and the config file's do not exist
    /// (404); a create without `tenant` gets this one; a body naming another
    /// tenant is refused ([`OpError::Forbidden`]) and changes nothing.
    #[must_use]
    pub fn scoped(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// For a scoped registry: `NotFound` for a config-file endpoint (before
    /// any other check could tell it exists).
    pub(super) fn check_scope(&self, id: &str) -> Result<(), OpError> {
        if self.tenant.is_some() && self.config.is_file_endpoint(id) {
            return Err(OpError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// For a scoped registry: the body's `tenant` set to the scope's when
    /// absent, refused when another.
    fn scope_body(&self, body: &mut Map<String, Value>) -> Result<(), OpError> {
        let Some(tenant) = &self.tenant else {
            return Ok(());
        };
        match body.get("tenant") {
            None | Some(Value::Null) => {
                body.insert("tenant".into(), Value::String(tenant.clone()));
                Ok(())
            }
            Some(Value::String(t)) if t == tenant => Ok(()),
            Some(_) => Err(OpError::Forbidden(
                "a tenant token acts for its own tenant only; tenant must be left out or be the token's".into(),
            )),
        }
    }

    /// The stream's state now: registered endpoints and operator holds.
    ///
    /// # Errors
    /// The broker failed.
    pub async fn state(&self) -> Result<control::Holds, OpError> {
        // Shared, not copied: at thousands of endpoints a copy of the state
        // cost more than the rest of a write.
        if let Some(reads) = &self.reads
            && let Some(state) = reads
                .read(self.conn, &self.topology, FOLLOWER_TIMEOUT)
                .await
        {
            return Ok(state);
        }
        let mut attempt = 0;
        loop {
            match control::read(self.conn, &self.topology, READ_TIMEOUT).await {
                Ok(state) => return Ok(state),
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
        self.check_scope(id)?;
        self.state()
            .await?
            .endpoints
            .get(id)
            .filter(|e| self.tenant.is_none() || e.tenant() == self.tenant.as_deref())
            .map(|e| (**e).clone())
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
        self.scope_body(&mut input)?;
        let id = input
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| FieldError {
                field: "id".into(),
                message: "is required (a string of [a-z0-9_-])".into(),
            })?
            .to_owned();
        // Ids are one namespace: a tenant learns that an id is taken, never
        // by what (nor where the config file is).
        let taken = || OpError::Conflict(format!("endpoint id {id:?} is taken; pick another"));
        if self.config.is_file_endpoint(&id) {
            if self.tenant.is_some() {
                return Err(taken());
            }
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {} and is read-only here",
                self.config.origin.display()
            )));
        }
        let state = self.state().await?;
        if self.tenant.is_some() && state.endpoints.contains_key(&id) {
            return Err(taken());
        }
        if state.endpoints.contains_key(&id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} exists; update it instead"
            )));
        }
        if let Some(tenant) = input.get("tenant").and_then(Value::as_str) {
            let max = self.config.api.max_endpoints_per_tenant;
            let held = state
                .endpoints
                .values()
                .filter(|e| e.tenant() == Some(tenant))
                .count();
            if held >= max {
                return Err(OpError::Conflict(format!(
                    "the tenant has {held} endpoints, the most it may have (api.max_endpoints_per_tenant = {max})"
                )));
            }
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
                let secret = super::new_secret(&probe)?;
                input.insert(
                    "secrets".into(),
                    Value::Array(vec![Value::String(secret.clone())]),
                );
                Some(secret)
            }
            _ => None,
        };
        let stored = super::register(
            input,
            self.config,
            self.config.registry.secrets_key.as_ref(),
            None,
        )?;
        // An id used before: stop sending its retries to the dead-letter queue.
        let ch = crate::amqp::open_channel(self.conn).await?;
        for (runtime_id, _) in stored.runtime_bindings() {
            let _ = self.topology.revive_endpoint(&ch, &runtime_id).await;
        }
        let _ = ch.close(200, "revived".into()).await;
        self.put(&stored).await?;
        self.declare_queues(&stored).await;
        Ok((stored, generated))
    }

    /// Replaces or patches a registered endpoint.
    ///
    /// # Errors
    /// Not found, a bad field, a changed id, or the broker failed.
    pub async fn update(
        &self,
        id: &str,
        mut body: Map<String, Value>,
        mode: Mode,
    ) -> Result<StoredEndpoint, OpError> {
        self.check_scope(id)?;
        self.scope_body(&mut body)?;
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
            super::opened_settings(&current, key, time::OffsetDateTime::UNIX_EPOCH).map_err(
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
        keep_environment_values(&mut next, &settings, mode);
        keep_shown_url(&mut next, &settings);
        // A tenant is who the endpoint belongs to (and what its queues are
        // bound by): set once, at creation, never changed, added or removed.
        if next.get("tenant").and_then(Value::as_str) != current.tenant() {
            return Err(OpError::Invalid(FieldError {
                field: "tenant".into(),
                message: "cannot change; create a new endpoint instead".into(),
            }));
        }
        next.insert("id".into(), Value::String(id.to_owned()));
        let mut stored = super::register(next, self.config, key, Some(&current))?;
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
        // An environment added (perhaps again, after its queue was deleted):
        // stop sending its retries to the dead-letter queue, as a create does.
        let before: Vec<String> = current
            .runtime_bindings()
            .into_iter()
            .map(|(runtime_id, _)| runtime_id)
            .collect();
        let added: Vec<String> = stored
            .runtime_bindings()
            .into_iter()
            .map(|(runtime_id, _)| runtime_id)
            .filter(|r| !before.contains(r))
            .collect();
        if !added.is_empty() {
            let ch = crate::amqp::open_channel(self.conn).await?;
            for runtime_id in &added {
                let _ = self.topology.revive_endpoint(&ch, runtime_id).await;
            }
            let _ = ch.close(200, "revived".into()).await;
        }
        self.put(&stored).await?;
        self.declare_queues(&stored).await;
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
        self.check_scope(id)?;
        if self.config.is_file_endpoint(id) {
            return Err(OpError::Conflict(format!(
                "endpoint {id:?} is defined in {}: rotate its secrets there",
                self.config.origin.display()
            )));
        }
        let current = self.get(id).await?;
        let secret = super::new_secret(&current)?;
        let next = super::rotate(&current, key, &secret, self.config.registry.secret_overlap)?;
        self.put(&next).await?;
        Ok((next, secret))
    }

    /// Appends a new version and checks it won: the stream applies a change
    /// only on top of the version it was made from. A change another writer
    /// made on top of this one, before this check read the stream, does not
    /// make it a conflict.
    async fn put(&self, stored: &StoredEndpoint) -> Result<(), OpError> {
        self.append(&Command::Put {
            endpoint: stored.clone(),
        })
        .await?;
        let state = self.state().await?;
        if !state.landed(stored) {
            return Err(OpError::Conflict(format!(
                "endpoint {:?} was changed by someone else at the same time; fetch it and try again",
                stored.id
            )));
        }
        Ok(())
    }

    pub(super) async fn append(&self, command: &Command) -> Result<(), OpError> {
        control::append(self.conn, &self.topology, command)
            .await
            .map_err(OpError::Broker)
    }
}

/// `tenant` as the API takes it: `[a-z0-9_-]{1,64}`.
///
/// # Errors
/// [`OpError::Invalid`] naming `tenant` (never echoing a long value).
pub fn check_tenant(tenant: &str) -> Result<(), OpError> {
    if crate::routing::is_valid_scope(tenant) {
        Ok(())
    } else {
        Err(OpError::Invalid(FieldError {
            field: "tenant".into(),
            message: "must be 1 to 64 characters of [a-z0-9_-]".into(),
        }))
    }
}

fn open(key: Option<&super::SecretsKey>, id: &str, sealed: &str) -> Option<String> {
    key.and_then(|k| k.open(id, sealed).ok())
}
