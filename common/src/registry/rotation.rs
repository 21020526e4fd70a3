//! New secrets and their rotation: the new secret signs at once, older ones
//! keep signing for the overlap.
//!
//! Rotation is the endpoint's own (top-level) secrets only. An environment's
//! secrets (`environments.<name>.secrets`, sealed in place in `settings`)
//! are replaced with an update (PUT or PATCH) and have no overlap.

use super::{StoredEndpoint, StoredSecret};
use crate::secret::{RandomError, SecretsKey, random_bytes};
use serde_json::Value;

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
