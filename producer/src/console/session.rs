//! Console sessions: a signed cookie naming who signed in, until when, and a
//! nonce that the CSRF token of every form is derived from; and the
//! per-address limit on sign-in attempts.
//!
//! The signing key is derived from the operator tokens (`api.tokens`), so
//! every API process of an installation accepts the others' sessions, and
//! replacing the operator tokens ends every session. A cookie holds no
//! token: an operator session holds a fingerprint of the operator token it
//! signed in with (the session ends when that token is removed from the
//! config), a tenant session the id of its tenant token (it ends when the
//! token is revoked).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name (over plain http).
pub const COOKIE: &str = "hookpost_session";
/// The session cookie's name when the console is served over https
/// (`api.public_origin`): [`COOKIE`] with the `__Host-` prefix.
pub const HOST_COOKIE: &str = "__Host-hookpost_session";

/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Sign-in attempts one client address may make per [`ATTEMPT_WINDOW`].
pub const ATTEMPTS_PER_WINDOW: u32 = 10;
/// The window [`ATTEMPTS_PER_WINDOW`] counts in.
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

/// Signed-out nonces remembered (a copy of a signed-out cookie is refused
/// by this process until then).
const SIGNED_OUT_KEPT: usize = 10_000;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Signed in with the operator token whose fingerprint this is.
    Operator { fingerprint: String },
    /// Signed in with the tenant token of this id.
    Tenant { tenant: String, token_id: String },
}

/// A verified session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub who: Who,
    /// Unix seconds after which the cookie is refused.
    pub expires: i64,
    /// Random; the CSRF token is derived from it.
    pub nonce: String,
}

/// Signs and checks sessions and CSRF tokens.
pub struct Keys {
    key: [u8; 32],
    signed_out: Mutex<VecDeque<String>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(***)")
    }
}

impl Keys {
    /// Keys derived from the operator tokens.
    pub fn new(operator_tokens: &[common::secret::Redacted]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"hookpost console session key v1");
        let mut tokens: Vec<&str> = operator_tokens.iter().map(|t| t.expose()).collect();
        tokens.sort_unstable();
        for t in tokens {
            hash.update((t.len() as u64).to_le_bytes());
            hash.update(t.as_bytes());
        }
        Self {
            key: hash.finalize().into(),
            signed_out: Mutex::default(),
        }
    }

    fn mac(&self, purpose: &str, data: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The cookie value for `who`, valid from `now` (Unix seconds) for [`LIFETIME`].
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn issue(
        &self,
        who: &Who,
        now: i64,
    ) -> Result<(String, Session), common::secret::RandomError> {
        let nonce = URL_SAFE_NO_PAD.encode(common::secret::random_bytes::<16>()?);
        let expires = now + i64::try_from(LIFETIME.as_secs()).unwrap_or(i64::MAX);
        let payload = match who {
            Who::Operator { fingerprint } => {
                json!({"k": "op", "f": fingerprint, "e": expires, "n": nonce})
            }
            Who::Tenant { tenant, token_id } => {
                json!({"k": "tenant", "t": tenant, "i": token_id, "e": expires, "n": nonce})
            }
        };
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let mac = URL_SAFE_NO_PAD.encode(self.mac("session", payload.as_bytes()));
        let session = Session {
            who: who.clone(),
            expires,
            nonce,
        };
        Ok((format!("{payload}.{mac}"), session))
    }

    /// The session a cookie value holds, if its signature is right, it has
    /// not expired at `now`, and it was not signed out here.
    pub fn verify(&self, cookie: &str, now: i64) -> Option<Session> {
        let (payload, mac) = cookie.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = self.mac("session", payload.as_bytes());
        if !bool::from(expected.ct_eq(&mac)) {
            return None;
        }
        let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let text = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
        let expires = payload.get("e")?.as_i64()?;
        if expires <= now {
            return None;
        }
        let nonce = text("n")?;
        let who = match payload.get("k")?.as_str()? {
            "op" => Who::Operator {
                fingerprint: text("f")?,
            },
            "tenant" => Who::Tenant {
                tenant: text("t")?,
                token_id: text("i")?,
            },
            _ => return None,
        };
        let signed_out = self
            .signed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if signed_out.contains(&nonce) {
            return None;
        }
        Some(Session {
            who,
            expires,
            nonce,
        })
    }

    /// Forgets `session` in this process (its cookie is also cleared).
    pub fn sign_out(&self, session: &Session) {
        let mut signed_out = self
            .signed_out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if signed_out.len() >= SIGNED_OUT_KEPT {
            signed_out.pop_front();
        }
        signed_out.push_back(session.nonce.clone());
    }

    /// The fingerprint an operator session keeps of its token: keyed, so
    /// a cookie gives no way to test guesses of the token offline.
    pub fn fingerprint(&self, token: &str) -> String {
        URL_SAFE_NO_PAD.encode(&self.mac("operator", token.as_bytes())[..12])
    }

    /// The CSRF token of `session`'s forms.
    pub fn csrf(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", session.nonce.as_bytes()))
    }

    /// Whether `token` is `session`'s CSRF token (constant time).
    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        bool::from(self.csrf(session).as_bytes().ct_eq(token.as_bytes()))
    }
}

/// Client addresses counted apart; past it, new addresses share one count.
const ADDRESSES_KEPT: usize = 10_000;

/// Counts sign-in attempts per client address (an IPv6 client per /64, the
/// block one host usually holds).
#[derive(Debug, Default)]
pub struct Attempts {
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The address an attempt is counted under.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Attempts {
    /// Counts an attempt from `addr` at `now`: `Err(wait)` when the address
    /// is over [`ATTEMPTS_PER_WINDOW`] (the attempt is refused unchecked).
    pub fn hit(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = bucket(addr);
        if !seen.contains_key(&key) && seen.len() >= ADDRESSES_KEPT {
            seen.retain(|_, (start, _)| now.duration_since(*start) < ATTEMPT_WINDOW);
            if seen.len() >= ADDRESSES_KEPT {
                // Flooded from many addresses: the newcomers share one count.
                key = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
            }
        }
        let entry = seen.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= ATTEMPT_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= ATTEMPTS_PER_WINDOW {
            return Err(ATTEMPT_WINDOW.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::secret::Redacted;

    fn keys(token: &str) -> Keys {
        Keys::new(&[Redacted::new(token.to_owned())])
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_not_after_sign_out() {
        let k = keys("operator-token-0123456789");
        let who = Who::Tenant {
            tenant: "acme".into(),
            token_id: "abc".into(),
        };
        let (cookie, session) = k.issue(&who, 1_000).unwrap();
        assert_eq!(k.verify(&cookie, 1_001).unwrap(), session);
        let end = 1_000 + i64::try_from(LIFETIME.as_secs()).unwrap();
        assert!(k.verify(&cookie, end).is_none(), "expired");
        k.sign_out(&session);
        assert!(k.verify(&cookie, 1_001).is_none(), "signed out");
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_refused() {
        let k = keys("operator-token-0123456789");
        let (cookie, _) = k
            .issue(
                &Who::Operator {
                    fingerprint: k.fingerprint("x"),
                },
                1_000,
            )
            .unwrap();
        // Another installation's key.
        assert!(
            keys("another-operator-token-xyz")
                .verify(&cookie, 1_001)
                .is_none()
        );
        // A payload changed (tenant session turned operator) under the same MAC.
        let (_, mac) = cookie.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD
            .encode(json!({"k": "op", "f": "0", "e": 9_999_999_999_i64, "n": "n"}).to_string());
        assert!(k.verify(&format!("{forged}.{mac}"), 1_001).is_none());
        assert!(k.verify("garbage", 1_001).is_none());
        assert!(k.verify("a.b.c", 1_001).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let k = keys("operator-token-0123456789");
        let who = Who::Operator {
            fingerprint: k.fingerprint("t"),
        };
        let (_, a) = k.issue(&who, 1).unwrap();
        let (_, b) = k.issue(&who, 1).unwrap();
        assert!(k.csrf_matches(&a, &k.csrf(&a)));
        assert!(!k.csrf_matches(&a, &k.csrf(&b)));
        assert!(!k.csrf_matches(&a, ""));
    }

    #[test]
    fn sign_in_attempts_are_limited_per_address_and_window() {
        let attempts = Attempts::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..ATTEMPTS_PER_WINDOW {
            attempts.hit(a, t0).unwrap();
        }
        let wait = attempts.hit(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        attempts.hit(b, t0).unwrap();
        attempts.hit(a, t0 + ATTEMPT_WINDOW).unwrap();
        // One IPv6 host's /64 is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..ATTEMPTS_PER_WINDOW {
            attempts
                .hit(v6(&format!("2001:db8:1:2::{i:x}")), t0)
                .unwrap();
        }
        assert!(attempts.hit(v6("2001:db8:1:2:ffff::1"), t0).is_err());
        attempts.hit(v6("2001:db8:1:3::1"), t0).unwrap();
    }

    #[test]
    fn a_flood_of_addresses_shares_one_count_and_keeps_the_map_bounded() {
        let attempts = Attempts::default();
        let t0 = Instant::now();
        for i in 0..ADDRESSES_KEPT {
            let [a, b] = u16::try_from(i).unwrap().to_be_bytes();
            attempts.hit(IpAddr::from([10, 0, a, b]), t0).unwrap();
        }
        for i in 0..ATTEMPTS_PER_WINDOW {
            attempts
                .hit(IpAddr::from([11, 0, 0, u8::try_from(i).unwrap()]), t0)
                .unwrap();
        }
        assert!(attempts.hit(IpAddr::from([12, 0, 0, 1]), t0).is_err());
        assert!(attempts.seen.lock().unwrap().len() <= ADDRESSES_KEPT + 1);
    }
}
