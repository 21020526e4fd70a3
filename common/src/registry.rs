//! The endpoint registry: endpoints created at runtime (management API,
//! `hookpost-admin endpoints create`), stored as records of the control stream
//! ([`crate::control`]). Secrets and header values are sealed with
//! ChaCha20-Poly1305 under a key from the environment (`[registry]
//! secrets_key`); the stream never holds them in clear.

use crate::config::raw::EndpointSection;
use crate::config::{Config, Endpoint};
pub use crate::secret::SecretsKey;
use crate::secret::{RandomError, random_bytes};
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
    fn new(field: &str, message: impl Into<String>) -> Self {
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
    let needs_key = !section.secrets.is_empty() || !section.headers.is_empty();
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

fn parse_section(settings: &Map<String, Value>) -> Result<EndpointSection, FieldError> {
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

/// A new secret of the endpoint's scheme, from the OS random source:
/// `whsec_…` (standard) or 48 hex characters (hex).
///
/// # Errors
/// When the OS random source fails.
pub fn new_secret(stored: &StoredEndpoint) -> Result<String, RandomError> {
    match stored.settings.get("signature").and_then(Value::as_str) {
        Some("hex") => {
            let mut out = String::with_capacity(48);
            for byte in random_bytes::<24>()? {
                use std::fmt::Write as _;
                let _ = write!(out, "{byte:02x}");
            }
            Ok(out)
        }
        _ => crate::signing::SigningSecret::generate(),
    }
}

/// Rotates: `new` signs from now on; every older secret keeps signing until
/// `now + overlap` (or its own earlier expiry).
pub fn rotate(
    stored: &StoredEndpoint,
    key: &SecretsKey,
    new: &str,
    overlap: std::time::Duration,
) -> Result<StoredEndpoint, RandomError> {
    let now = time::OffsetDateTime::now_utc();
    let until = now + overlap;
    let until_text = until
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut next = stored.clone();
    let mut secrets = vec![StoredSecret {
        sealed: key.seal(&stored.id, new)?,
        expires_at: None,
    }];
    for old in &stored.secrets {
        let keep_until = match old.expires_at.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }) {
            Some(t) if t <= now => continue,
            Some(t) if t < until => old.expires_at.clone(),
            _ => Some(until_text.clone()),
        };
        secrets.push(StoredSecret {
            sealed: old.sealed.clone(),
            expires_at: keep_until,
        });
    }
    next.secrets = secrets;
    next.version += 1;
    next.updated_at = crate::contract::now_rfc3339();
    Ok(next)
}

/// The endpoint as the API shows it: settings (credentials in the URL
/// hidden), `headers` names with values hidden, the secrets' count and expiries (never their values), and the
/// read-only fields.
pub fn public_view(stored: &StoredEndpoint, paused: bool) -> Value {
    let mut out = stored.settings.clone();
    if let Some(Value::String(url)) = out.get_mut("url") {
        *url = crate::secret::redact_url(url);
    }
    out.insert("id".into(), Value::String(stored.id.clone()));
    if let Some(name) = &stored.name {
        out.insert("name".into(), Value::String(name.clone()));
    }
    if let Some(d) = &stored.description {
        out.insert("description".into(), Value::String(d.clone()));
    }
    out.insert("metadata".into(), Value::Object(stored.metadata.clone()));
    out.insert(
        "headers".into(),
        Value::Object(
            stored
                .headers
                .keys()
                .map(|k| (k.clone(), Value::String("***".into())))
                .collect(),
        ),
    );
    out.insert(
        "secrets".into(),
        Value::Array(
            stored
                .secrets
                .iter()
                .map(|s| serde_json::json!({ "value": "***", "expires_at": s.expires_at }))
                .collect(),
        ),
    );
    out.insert("version".into(), Value::from(stored.version));
    out.insert(
        "created_at".into(),
        Value::String(stored.created_at.clone()),
    );
    out.insert(
        "updated_at".into(),
        Value::String(stored.updated_at.clone()),
    );
    out.insert("source".into(), Value::String("api".into()));
    out.insert("paused".into(), Value::Bool(paused));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn config() -> Config {
        Config::from_toml_str(
            "[[endpoints]]\nid = \"from-file\"\nurl = \"https://f.example.com/\"\nevents = [\"#\"]\n",
            "t.toml".as_ref(),
            &[],
        )
        .unwrap()
    }

    fn input(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn seal_and_open_round_trip_bound_to_the_endpoint() {
        let key = SecretsKey::parse(KEY).unwrap();
        let sealed = key.seal("a", "whsec_secret").unwrap();
        assert!(!sealed.contains("whsec"));
        assert_eq!(key.open("a", &sealed).unwrap(), "whsec_secret");
        assert!(key.open("b", &sealed).is_err(), "bound to the id");
        let other = SecretsKey::parse("HwAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=").unwrap();
        assert!(other.open("a", &sealed).is_err());
        assert!(
            SecretsKey::parse("c2hvcnQ=")
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(format!("{key:?}").contains("***"));
    }

    #[test]
    fn nonces_and_generated_secrets_are_fresh_random_bytes() {
        let key = SecretsKey::parse(KEY).unwrap();
        let (a, b) = (
            key.seal("a", "same").unwrap(),
            key.seal("a", "same").unwrap(),
        );
        assert_ne!(a, b, "a fresh nonce per seal");
        let nonce = |sealed: &str| STANDARD.decode(&sealed[3..]).unwrap()[..12].to_vec();
        assert_ne!(nonce(&a), nonce(&b));
        assert_eq!(key.open("a", &a).unwrap(), "same");
        let stored = |signature: &str| StoredEndpoint {
            id: "p".into(),
            version: 1,
            name: None,
            description: None,
            metadata: Map::new(),
            settings: input(serde_json::json!({ "signature": signature })),
            headers: BTreeMap::new(),
            secrets: Vec::new(),
            created_at: String::new(),
            updated_at: String::new(),
        };
        let hex = stored("hex");
        let (x, y) = (new_secret(&hex).unwrap(), new_secret(&hex).unwrap());
        assert_ne!(x, y);
        for h in [&x, &y] {
            assert_eq!(h.len(), 48);
            assert!(
                h.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{h}"
            );
        }
        let standard = stored("standard");
        let (x, y) = (
            new_secret(&standard).unwrap(),
            new_secret(&standard).unwrap(),
        );
        assert_ne!(x, y);
        for s in [&x, &y] {
            let bytes = STANDARD.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
            assert_eq!(bytes.len(), 32);
        }
    }

    #[test]
    fn register_validates_seals_and_loads_back() {
        let key = SecretsKey::parse(KEY).unwrap();
        let stored = register(
            input(serde_json::json!({
                "id": "partner", "url": "https://p.example.com/hooks", "events": ["order.*"],
                "secrets": ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
                "headers": {"Authorization": "Bearer xyz"},
                "name": "Partner", "metadata": {"team": "growth"}, "max_retries": 3
            })),
            &config(),
            Some(&key),
            None,
        )
        .unwrap();
        let text = serde_json::to_string(&stored).unwrap();
        assert!(!text.contains("C2FVsBQ") && !text.contains("xyz"), "{text}");
        assert_eq!(stored.version, 1);
        let endpoint = to_endpoint(
            &stored,
            &config(),
            Some(&key),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(endpoint.retry.max_retries, 3);
        assert_eq!(endpoint.secrets.len(), 1);
        assert_eq!(endpoint.headers[0].1.expose(), "Bearer xyz");
        let view = public_view(&stored, false).to_string();
        assert!(!view.contains("C2FVsBQ") && !view.contains("xyz"), "{view}");
        let with_login = register(
            input(serde_json::json!({"id": "login", "url": "https://user:hunter2@p.example.com/", "events": ["#"]})),
            &config(),
            Some(&key),
            None,
        )
        .unwrap();
        let view = public_view(&with_login, false).to_string();
        assert!(!view.contains("hunter2"), "{view}");
    }

    #[test]
    fn register_names_the_bad_field() {
        let key = SecretsKey::parse(KEY).unwrap();
        let bad = |v: Value| match register(input(v), &config(), Some(&key), None) {
            Err(OpError::Invalid(e)) => e,
            other => panic!("{other:?}"),
        };
        let base =
            || serde_json::json!({"id": "p", "url": "https://p.example.com/", "events": ["#"]});
        let mut v = base();
        v["events"] = serde_json::json!(["ok", "Bad Pattern"]);
        assert_eq!(bad(v).field, "events[1]");
        let mut v = base();
        v["max_retries"] = serde_json::json!("three");
        assert_eq!(bad(v).field, "max_retries");
        let mut v = base();
        v["colour"] = serde_json::json!("red");
        assert_eq!(bad(v).field, "colour");
        let mut v = base();
        v.as_object_mut().unwrap().remove("url");
        assert_eq!(bad(v).field, "url");
        let mut v = base();
        v["metadata"] = serde_json::json!([1]);
        assert_eq!(bad(v).field, "metadata");
        let mut v = base();
        v["id"] = serde_json::json!("from-file");
        assert_eq!(bad(v).field, "id");
        let mut v = base();
        v["transform"] = serde_json::json!(".data |");
        assert_eq!(bad(v).field, "transform");
        let mut v = base();
        v["secrets"] = serde_json::json!(["nope"]);
        let e = bad(v);
        assert_eq!(e.field, "secrets[0]");
        assert!(!e.message.contains("nope"));
    }

    #[test]
    fn rotation_keeps_old_secrets_for_the_overlap_only() {
        let key = SecretsKey::parse(KEY).unwrap();
        let stored = register(
            input(
                serde_json::json!({"id": "p", "url": "https://p.example.com/", "events": ["#"],
                "secrets": ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]}),
            ),
            &config(),
            Some(&key),
            None,
        )
        .unwrap();
        let new = new_secret(&stored).unwrap();
        let rotated = rotate(&stored, &key, &new, std::time::Duration::from_secs(3600)).unwrap();
        assert_eq!(rotated.version, 2);
        assert_eq!(rotated.secrets.len(), 2);
        let now = time::OffsetDateTime::now_utc();
        let during = to_endpoint(&rotated, &config(), Some(&key), now).unwrap();
        assert_eq!(during.secrets.len(), 2, "both sign during the overlap");
        let after = to_endpoint(
            &rotated,
            &config(),
            Some(&key),
            now + time::Duration::hours(2),
        )
        .unwrap();
        assert_eq!(after.secrets.len(), 1, "only the new one after it");
        assert_eq!(
            after.secrets[0],
            crate::signing::SigningSecret::parse(&new).unwrap()
        );
    }
}
