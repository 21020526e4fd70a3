//! From a stored endpoint back to settings and a runtime [`Endpoint`]:
//! secrets and header values opened, expired secrets left out.

use super::validate::parse_section;
use super::{FieldError, StoredEndpoint};
use crate::config::{Config, Endpoint};
use crate::secret::SecretsKey;
use serde_json::{Map, Value};

/// An endpoint's `[[endpoints]]` object with secrets opened, and each secret's expiry.
pub type Opened = (Map<String, Value>, Vec<Option<time::OffsetDateTime>>);

/// The `[[endpoints]]` object of a stored endpoint with its secrets and
/// header values opened; secrets past their `expires_at` (at `now`) left out.
///
/// # Errors
/// Sealed values this key cannot open.
pub fn opened_settings(
    stored: &StoredEndpoint,
    key: Option<&SecretsKey>,
    now: time::OffsetDateTime,
) -> Result<Opened, FieldError> {
    let open = |field: &str, sealed: &str| -> Result<String, FieldError> {
        key.ok_or_else(|| FieldError::new(field, "registry.secrets_key is not set"))?
            .open(&stored.id, sealed)
            .map_err(|e| FieldError::new(field, e))
    };
    let mut settings = stored.settings.clone();
    settings.insert("id".into(), Value::String(stored.id.clone()));
    // Environments' secrets and header values are sealed in place.
    if let Some(Value::Object(environments)) = settings.get_mut("environments") {
        for (name, env) in environments.iter_mut() {
            let Value::Object(env) = env else { continue };
            if let Some(Value::Array(secrets)) = env.get_mut("secrets") {
                for (i, s) in secrets.iter_mut().enumerate() {
                    if let Value::String(sealed) = s {
                        *sealed = open(&format!("environments.{name}.secrets[{i}]"), sealed)?;
                    }
                }
            }
            if let Some(Value::Object(headers)) = env.get_mut("headers") {
                for (header, value) in headers.iter_mut() {
                    if let Value::String(sealed) = value {
                        *sealed = open(&format!("environments.{name}.headers.{header}"), sealed)?;
                    }
                }
            }
        }
    }
    let mut headers = Map::new();
    for (name, sealed) in &stored.headers {
        headers.insert(
            name.clone(),
            Value::String(open(&format!("headers.{name}"), sealed)?),
        );
    }
    if !headers.is_empty() {
        settings.insert("headers".into(), Value::Object(headers));
    }
    let mut secrets = Vec::new();
    let mut expiry = Vec::new();
    for (i, secret) in stored.secrets.iter().enumerate() {
        let until = secret.expires_at.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        if until.is_some_and(|u| u <= now) {
            continue;
        }
        secrets.push(Value::String(open(
            &format!("secrets[{i}]"),
            &secret.sealed,
        )?));
        expiry.push(until);
    }
    if !secrets.is_empty() {
        settings.insert("secrets".into(), Value::Array(secrets));
    }
    Ok((settings, expiry))
}

/// The runtime endpoint of a stored one, with `config`'s defaults.
///
/// # Errors
/// A sealed value this key cannot open, or settings the config now refuses.
pub fn to_endpoint(
    stored: &StoredEndpoint,
    config: &Config,
    key: Option<&SecretsKey>,
    now: time::OffsetDateTime,
) -> Result<Endpoint, FieldError> {
    let (settings, expiry) = opened_settings(stored, key, now)?;
    let section = parse_section(&settings)?;
    let mut endpoint = config
        .check_endpoint(section)
        .map_err(|(field, message)| FieldError { field, message })?;
    endpoint.secret_expiry = expiry;
    Ok(endpoint)
}
