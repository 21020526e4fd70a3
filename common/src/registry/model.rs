//! What the registry stores: an endpoint record with sealed secrets and
//! header values, and the errors its operations answer with.

use crate::secret::RandomError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An endpoint as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEndpoint {
    /// The endpoint id.
    pub id: String,
    /// Increases by one on every change.
    pub version: u64,
    /// A display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Every other `[[endpoints]]` key (not `id`, `secrets` or `headers`).
    pub settings: Map<String, Value>,
    /// Extra headers; values sealed.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Signing secrets, sealed, newest first.
    #[serde(default)]
    pub secrets: Vec<StoredSecret>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl StoredEndpoint {
    /// A minimal record for unit tests: no settings, `updated_at = "v{version}"`.
    #[cfg(test)]
    pub(crate) fn sample(id: &str, version: u64) -> Self {
        Self {
            id: id.into(),
            version,
            name: None,
            description: None,
            metadata: serde_json::Map::new(),
            settings: serde_json::Map::new(),
            headers: std::collections::BTreeMap::new(),
            secrets: Vec::new(),
            created_at: String::new(),
            updated_at: format!("v{version}"),
        }
    }

    /// Its event patterns, as stored.
    pub fn events(&self) -> Vec<String> {
        self.settings
            .get("events")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Its tenant, as stored.
    pub fn tenant(&self) -> Option<&str> {
        self.settings.get("tenant").and_then(Value::as_str)
    }

    /// The names of its environments, as stored.
    pub fn environment_names(&self) -> Vec<String> {
        self.settings
            .get("environments")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Each queue it runs on, by runtime id (its own, then `<id>~<env>` for
    /// each environment), with the keys that queue is bound with: what a
    /// dispatcher that cannot load it keeps bound, and what a delete detaches.
    pub fn runtime_bindings(&self) -> Vec<(String, Vec<String>)> {
        let events = self.events();
        let tenant = self.tenant();
        std::iter::once((
            self.id.clone(),
            crate::routing::binding_keys(tenant, None, &events),
        ))
        .chain(self.environment_names().into_iter().map(|env| {
            (
                format!("{}{}{env}", self.id, crate::config::VARIANT_SEPARATOR),
                crate::routing::binding_keys(tenant, Some(&env), &events),
            )
        }))
        .collect()
    }

    /// Its URL, as stored.
    pub fn url(&self) -> &str {
        self.settings
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// One sealed secret and when it stops signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// `v1:` + base64(nonce ‖ ciphertext).
    pub sealed: String,
    /// After this time (RFC 3339) the secret no longer signs (rotation overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Why an endpoint could not be registered or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, like `events[1]` or `retry_on_status.add`.
    pub field: String,
    /// What is wrong (never a secret's value).
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// No registered endpoint has this id.
    #[error("no registered endpoint {0:?}")]
    NotFound(String),
    /// A tenant token asked to act for another tenant.
    #[error("{0}")]
    Forbidden(String),
    /// No live tenant token has this id (for this tenant).
    #[error("no live token {0:?} for this tenant")]
    UnknownToken(String),
    /// The id is taken, or the endpoint is the config file's (read-only).
    #[error("{0}")]
    Conflict(String),
    /// A field is invalid.
    #[error("{0}")]
    Invalid(FieldError),
    /// The broker failed or is unreachable.
    #[error("broker: {0:#}")]
    Broker(anyhow::Error),
    /// Stored data this process cannot use (secrets sealed with another key).
    #[error("{0}")]
    Internal(String),
}

impl From<RandomError> for OpError {
    fn from(e: RandomError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<FieldError> for OpError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(e)
    }
}

/// The fields of the API's endpoint object that are not `[[endpoints]]` keys.
pub const EXTRA_FIELDS: [&str; 3] = ["name", "description", "metadata"];

/// Read-only fields the API shows but does not take.
pub const OUTPUT_FIELDS: [&str; 5] = ["version", "created_at", "updated_at", "source", "paused"];
