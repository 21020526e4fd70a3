//! From an API object to a stored endpoint: the `[[endpoints]]` rules of the
//! config, the registry's own fields, and sealing.

use super::{FieldError, OUTPUT_FIELDS, OpError, StoredEndpoint, StoredSecret};
use crate::config::Config;
use crate::config::raw::EndpointSection;
use crate::secret::{RandomError, SecretsKey};
use serde_json::{Map, Value};

/// Checks an endpoint object as the API receives it (the `[[endpoints]]` keys
/// plus `name`, `description`, `metadata`) against `config`'s rules and
/// defaults, and seals it. `previous` is the registered version it replaces.
///
/// # Errors
/// [`OpError::Invalid`] naming the first bad field, or [`OpError::Internal`]
/// when the OS random source fails.
pub fn register(
    input: Map<String, Value>,
    config: &Config,
    key: Option<&SecretsKey>,
    previous: Option<&StoredEndpoint>,
) -> Result<StoredEndpoint, OpError> {
    let mut settings = input;
    for field in OUTPUT_FIELDS {
        settings.remove(field);
    }
    let name = take_text(&mut settings, "name", 200)?;
    let description = take_text(&mut settings, "description", 2000)?;
    let metadata = match settings.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            if serde_json::to_vec(&m).map_or(0, |v| v.len()) > 16 * 1024 {
                return Err(FieldError::new("metadata", "is over 16 KiB").into());
            }
            m
        }
        Some(_) => return Err(FieldError::new("metadata", "must be a JSON object").into()),
    };
    let section = parse_section(&settings)?;
    let endpoint = config
        .check_endpoint(section.clone())
        .map_err(|(field, message)| FieldError { field, message })?;
    let id = endpoint.id.clone();
    if config.endpoint(&id).is_some() {
        return Err(FieldError::new(
            "id",
            format!(
                "{id:?} is defined in {} (read-only)",
                config.origin.display()
            ),
        )
        .into());
    }
    let needs_key = !section.secrets.is_empty()
        || !section.headers.is_empty()
        || section
            .environments
            .values()
            .any(|e| !e.secrets.is_empty() || !e.headers.is_empty());
    let key = match (key, needs_key) {
        (Some(key), _) => Some(key),
        (None, true) => {
            return Err(FieldError::new(
                "secrets",
                "registry.secrets_key is not set: secrets and headers cannot be stored",
            )
            .into());
        }
        (None, false) => None,
    };
    let seal = |plain: &str| match key {
        Some(k) => k.seal(&id, plain),
        None => Ok(String::new()),
    };
    let headers = section
        .headers
        .iter()
        .map(|(name, value)| Ok((name.clone(), seal(value)?)))
        .collect::<Result<_, RandomError>>()?;
    let secrets = section
        .secrets
        .iter()
        .map(|s| {
            Ok(StoredSecret {
                sealed: seal(s)?,
                expires_at: None,
            })
        })
        .collect::<Result<_, RandomError>>()?;
    seal_environments(&mut settings, &seal)?;
    settings.remove("id");
    settings.remove("secrets");
    settings.remove("headers");
    let now = crate::contract::now_rfc3339();
    Ok(StoredEndpoint {
        id,
        version: previous.map_or(1, |p| p.version + 1),
        name,
        description,
        metadata,
        settings,
        headers,
        secrets,
        created_at: previous.map_or_else(|| now.clone(), |p| p.created_at.clone()),
        updated_at: now,
    })
}

/// Seals each environment's `secrets` and header values in place (in
/// `settings.environments`, already checked): the stored record keeps their
/// shape, never their values. An environment without secrets stays unsigned
/// (none is generated for it).
fn seal_environments(
    settings: &mut Map<String, Value>,
    seal: &dyn Fn(&str) -> Result<String, RandomError>,
) -> Result<(), RandomError> {
    let Some(Value::Object(environments)) = settings.get_mut("environments") else {
        return Ok(());
    };
    for env in environments.values_mut() {
        let Value::Object(env) = env else { continue };
        if let Some(Value::Array(secrets)) = env.get_mut("secrets") {
            for s in secrets.iter_mut() {
                if let Value::String(plain) = s {
                    *plain = seal(plain)?;
                }
            }
        }
        if let Some(Value::Object(headers)) = env.get_mut("headers") {
            for value in headers.values_mut() {
                if let Value::String(plain) = value {
                    *plain = seal(plain)?;
                }
            }
        }
    }
    Ok(())
}

fn take_text(
    map: &mut Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, FieldError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s)),
        Some(Value::String(_)) => Err(FieldError::new(field, format!("is over {max} characters"))),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

pub(super) fn parse_section(settings: &Map<String, Value>) -> Result<EndpointSection, FieldError> {
    let value = Value::Object(settings.clone());
    serde_path_to_error::deserialize::<_, EndpointSection>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names unknown and missing fields in the message itself.
        let field = if path == "." {
            inner
                .split('`')
                .nth(1)
                .map_or_else(|| "body".to_owned(), str::to_owned)
        } else {
            path
        };
        FieldError::new(&field, inner)
    })
}
