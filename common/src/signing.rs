//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! A request is signed over `"{webhook-id}.{webhook-timestamp}.{body}"` with
//! HMAC-SHA256 and each active secret; `webhook-signature` lists one
//! `v1,<base64>` per secret, space-separated, so a receiver holding either the
//! old or the new secret accepts requests while secrets rotate.

use crate::secret::{RandomError, random_bytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

/// Prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest key the spec allows, in bytes.
pub const MIN_KEY_BYTES: usize = 24;
/// Longest key the spec allows, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Shortest secret of the `hex` scheme, in characters.
pub const MIN_RAW_SECRET_CHARS: usize = 16;
/// How far a receiver tolerates a timestamp from its clock, in seconds.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Why a secret or a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    /// The secret lacks the `whsec_` prefix, is not base64 or has the wrong length.
    #[error(
        "secret must be \"whsec_\" followed by base64 of 24 to 64 bytes ({0}); the value is not shown"
    )]
    BadSecret(&'static str),
    /// A `hex` scheme secret is too short or holds spaces.
    #[error("{0}; the value is not shown")]
    BadRawSecret(&'static str),
    /// No signature in the header matched any secret.
    #[error("no signature matches")]
    NoMatch,
    /// The timestamp is outside the tolerance.
    #[error("timestamp outside the tolerance of {TOLERANCE_SECS} s")]
    Timestamp,
}

/// A decoded signing key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

impl SigningSecret {
    /// Parses a `whsec_<base64>` secret.
    ///
    /// # Errors
    /// [`SigningError::BadSecret`] saying what is wrong, never echoing the value.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningError::BadSecret("missing whsec_ prefix"))?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| SigningError::BadSecret("not valid base64"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SigningError::BadSecret("wrong key length"));
        }
        Ok(Self(key))
    }

    /// A secret for the `hex` scheme: the key is the text's bytes as written
    /// (at least [`MIN_RAW_SECRET_CHARS`] characters, no spaces).
    ///
    /// # Errors
    /// [`SigningError::BadRawSecret`], never echoing the value.
    pub fn raw(text: &str) -> Result<Self, SigningError> {
        if text.chars().count() < MIN_RAW_SECRET_CHARS {
            return Err(SigningError::BadRawSecret(
                "hex scheme secrets need at least 16 characters",
            ));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SigningError::BadRawSecret(
                "hex scheme secrets cannot hold spaces",
            ));
        }
        Ok(Self(text.as_bytes().to_vec()))
    }

    /// Hex HMAC-SHA256 of `"{timestamp}.{body}"` (the `hex` scheme).
    pub fn sign_hex(&self, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(64);
        for byte in digest {
            use fmt::Write as _;
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// A fresh secret in `whsec_` form: 32 bytes from the OS random source.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn generate() -> Result<String, RandomError> {
        let key = random_bytes::<32>()?;
        Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The bare base64 signature of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())
    }
}

/// The `webhook-signature` header value: `v1,<sig>` for each secret, space-separated.
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.sign(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `x-webhook-signature` header of the `hex` scheme: one hex signature
/// per secret, comma-separated (one, unless secrets are rotating).
pub fn hex_signature_header(secrets: &[SigningSecret], timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign_hex(timestamp, body))
        .collect::<Vec<_>>()
        .join(",")
}

/// Verifies a request as a receiver would: any `v1` signature in `header`
/// made by any of `secrets`, and a timestamp within [`TOLERANCE_SECS`] of `now`.
///
/// # Errors
/// [`SigningError::Timestamp`] or [`SigningError::NoMatch`].
pub fn verify(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
) -> Result<(), SigningError> {
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(SigningError::Timestamp);
    }
    let candidates: Vec<Vec<u8>> = header
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .collect();
    for secret in secrets {
        for candidate in &candidates {
            // `verify_slice` compares in constant time.
            if secret
                .mac(id, timestamp, body)
                .verify_slice(candidate)
                .is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(SigningError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The test vector published with the Standard Webhooks reference libraries.
    const VECTOR_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const VECTOR_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const VECTOR_TS: i64 = 1_649_367_553;
    const VECTOR_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const VECTOR_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn published_vector() {
        let secret = SigningSecret::parse(VECTOR_SECRET).unwrap();
        let header = signature_header(
            std::slice::from_ref(&secret),
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY,
        );
        assert_eq!(header, VECTOR_SIG);
        verify(
            &[secret],
            VECTOR_ID,
            VECTOR_TS,
            VECTOR_BODY,
            VECTOR_SIG,
            VECTOR_TS,
        )
        .unwrap();
    }

    #[test]
    fn several_secrets_each_verify() {
        let old = SigningSecret::parse(VECTOR_SECRET).unwrap();
        let new = SigningSecret::parse(&SigningSecret::generate().unwrap()).unwrap();
        let header = signature_header(&[old.clone(), new.clone()], "e1", 100, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        verify(&[old], "e1", 100, b"{}", &header, 100).unwrap();
        verify(std::slice::from_ref(&new), "e1", 100, b"{}", &header, 100).unwrap();
        assert_eq!(
            verify(std::slice::from_ref(&new), "e1", 100, b"{ }", &header, 100),
            Err(SigningError::NoMatch)
        );
        assert_eq!(
            verify(&[new], "e1", 100, b"{}", &header, 100 + 301),
            Err(SigningError::Timestamp)
        );
    }

    #[test]
    fn generated_secrets_are_random_32_byte_whsec_keys() {
        let (a, b) = (
            SigningSecret::generate().unwrap(),
            SigningSecret::generate().unwrap(),
        );
        assert_ne!(a, b);
        for secret in [&a, &b] {
            let key = STANDARD
                .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
                .unwrap();
            assert_eq!(key.len(), 32);
            SigningSecret::parse(secret).unwrap();
        }
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        for bad in [
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let err = SigningSecret::parse(bad).unwrap_err();
            assert!(!err.to_string().contains(bad), "{err}");
        }
        assert_eq!(
            format!("{:?}", SigningSecret::parse(VECTOR_SECRET).unwrap()),
            "SigningSecret(***)"
        );
    }

    #[test]
    fn standardwebhooks_crate_accepts_our_signatures() {
        let secret = SigningSecret::generate().unwrap();
        let ours = SigningSecret::parse(&secret).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let body = br#"{"id":"evt_1","type":"order.created"}"#;
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let other = SigningSecret::parse(&SigningSecret::generate().unwrap()).unwrap();
        headers.insert(
            "webhook-signature",
            signature_header(&[other, ours], "evt_1", now, body)
                .parse()
                .unwrap(),
        );
        standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(body, &headers)
            .unwrap();
    }

    proptest! {
        #[test]
        fn sign_verify_round_trip(id in "[a-z0-9_]{1,30}", ts in 0i64..4_000_000_000, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let secret = SigningSecret::parse(&SigningSecret::generate().unwrap()).unwrap();
            let header = signature_header(std::slice::from_ref(&secret), &id, ts, &body);
            prop_assert!(verify(&[secret], &id, ts, &body, &header, ts).is_ok());
        }
    }
}
