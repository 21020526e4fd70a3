//! Values that must never reach a log line, a metric or an error message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use std::fmt;

/// A string that prints as `***` in `Debug` and `Display`.
///
/// Read the real value with [`Redacted::expose`] at the one place it is used
/// (signing, an `Authorization` header, a broker login).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call it only where the value is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `url` with any password (and user) replaced by `***`, for logs and listings.
///
/// Works on any `scheme://user:pass@host/...` string without parsing it fully,
/// so that even a malformed URL never leaks its credentials.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The operating system's random source failed (no key, secret or nonce is
/// made without it).
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number source failed: {0}")]
pub struct RandomError(#[source] getrandom::Error);

/// `N` bytes from the operating system's random source, for keys, secrets
/// and nonces.
///
/// # Errors
/// When the OS source fails (it does not once the system has booted; the
/// error is kept rather than a panic).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(RandomError)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Redacted::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "\"***\" ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("https://h.example/p?q=a@b"),
            "https://h.example/p?q=a@b"
        );
        assert_eq!(redact_url("https://u:p@h/x"), "https://***@h/x");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}

/// The key that seals secrets: 32 bytes, given base64-encoded.
#[derive(Clone)]
pub struct SecretsKey(ChaCha20Poly1305);

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(***)")
    }
}

impl SecretsKey {
    /// Parses a base64 key of 32 bytes.
    ///
    /// # Errors
    /// A message that never shows the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "must be base64 (the value is not shown)".to_owned())?;
        if bytes.len() != 32 {
            return Err(format!(
                "must be 32 bytes once decoded, not {} (make one with `head -c 32 /dev/urandom | base64`)",
                bytes.len()
            ));
        }
        let key = ChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| "must be 32 bytes once decoded".to_owned())?;
        Ok(Self(key))
    }

    /// Seals `plain` for endpoint `id` (bound to it as associated data), under
    /// a random 96-bit nonce from the OS random source.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn seal(&self, id: &str, plain: &str) -> Result<String, RandomError> {
        let nonce = random_bytes::<12>()?;
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .unwrap_or_else(|_| unreachable!("encryption of a short text cannot fail"));
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("v1:{}", STANDARD.encode(out)))
    }

    /// Opens what [`SecretsKey::seal`] made for endpoint `id`.
    ///
    /// # Errors
    /// Not sealed by this key for this endpoint (or damaged).
    pub fn open(&self, id: &str, sealed: &str) -> Result<String, String> {
        let bytes = sealed
            .strip_prefix("v1:")
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|b| b.len() > 12)
            .ok_or_else(|| "not a sealed value".to_owned())?;
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = self
            .0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| {
                "cannot be opened with this key (a different registry.secrets_key?)".to_owned()
            })?;
        String::from_utf8(plain).map_err(|_| "not text".to_owned())
    }
}
