//! The endpoint as the API and `hookpost-admin` show it: never a secret or
//! a header value.

use super::StoredEndpoint;
use serde_json::Value;

/// The endpoint as the API shows it: settings (credentials in the URLs
/// hidden), `headers` names with values hidden (the environments' too, and
/// their secrets as `"***"`), the secrets' count and expiries (never their values), and the
/// read-only fields.
pub fn public_view(stored: &StoredEndpoint, paused: bool) -> Value {
    let mut out = stored.settings.clone();
    if let Some(Value::String(url)) = out.get_mut("url") {
        *url = crate::secret::redact_url(url);
    }
    if let Some(Value::Object(environments)) = out.get_mut("environments") {
        for env in environments.values_mut() {
            let Value::Object(env) = env else { continue };
            if let Some(Value::String(url)) = env.get_mut("url") {
                *url = crate::secret::redact_url(url);
            }
            if let Some(Value::Array(secrets)) = env.get_mut("secrets") {
                for s in secrets.iter_mut() {
                    *s = Value::String("***".into());
                }
            }
            if let Some(Value::Object(headers)) = env.get_mut("headers") {
                for value in headers.values_mut() {
                    *value = Value::String("***".into());
                }
            }
        }
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
