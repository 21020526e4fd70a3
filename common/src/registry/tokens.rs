//! Tenant tokens: bearer tokens of the management API that act for one
//! tenant only. A token is `hptk_<id>_<secret>` (`id`: 8 random bytes,
//! `secret`: 32 random bytes, both lowercase hex, from the OS random
//! source); it is shown once, when minted. The control stream keeps only
//! its id, tenant, creation time and the SHA-256 of the whole token
//! (records `token_mint` and `token_revoke`, [`super::control`]).

use super::control::State;
use crate::secret::{RandomError, random_bytes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every tenant token starts with this.
pub const PREFIX: &str = "hptk_";

/// Most live tokens one tenant may hold.
pub const MAX_PER_TENANT: usize = 20;

/// Hex characters of a token's id.
const ID_HEX: usize = 16;
/// Hex characters of a token's secret.
const SECRET_HEX: usize = 64;

/// A live tenant token, as the control stream keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The tenant it acts for.
    pub tenant: String,
    /// Its id (the part after `hptk_`; not secret).
    pub id: String,
    /// Lowercase hex SHA-256 of the whole token.
    pub hash: String,
    /// When it was minted (RFC 3339).
    pub created_at: String,
}

/// A new token for `tenant`: the token (to show once) and what is stored.
///
/// # Errors
/// The OS random source failed.
pub fn mint(tenant: &str) -> Result<(String, StoredToken), RandomError> {
    let id = hex(&random_bytes::<{ ID_HEX / 2 }>()?);
    let secret = hex(&random_bytes::<{ SECRET_HEX / 2 }>()?);
    let token = format!("{PREFIX}{id}_{secret}");
    let stored = StoredToken {
        tenant: tenant.to_owned(),
        id,
        hash: hash(&token),
        created_at: crate::contract::now_rfc3339(),
    };
    Ok((token, stored))
}

/// The id of a well-formed token (`hptk_` + 16 hex + `_` + 64 hex,
/// lowercase); `None` for anything else, before any hashing.
pub fn parse_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let lower_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    (lower_hex(id, ID_HEX) && lower_hex(secret, SECRET_HEX)).then_some(id)
}

/// The tenant a presented token acts for, if it is live in `state`: its id
/// is known and the SHA-256 of the whole token equals the stored one
/// (compared in constant time).
pub fn authenticate<'s>(state: &'s State, token: &str) -> Option<&'s str> {
    let id = parse_id(token)?;
    let stored = state.tokens.get(id)?;
    let presented = hash(token);
    bool::from(presented.as_bytes().ct_eq(stored.hash.as_bytes())).then_some(&stored.tenant)
}

/// The live tokens of `tenant`, oldest first.
pub fn of_tenant<'s>(state: &'s State, tenant: &str) -> Vec<&'s StoredToken> {
    let mut tokens: Vec<&StoredToken> = state
        .tokens
        .values()
        .filter(|t| t.tenant == tenant)
        .collect();
    tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    tokens
}

/// Lowercase hex SHA-256 of `token`.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::control::{Command, apply};

    #[test]
    fn minted_tokens_are_fresh_well_formed_and_stored_only_as_a_hash() {
        let (a, stored) = mint("acme").unwrap();
        let (b, _) = mint("acme").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), PREFIX.len() + ID_HEX + 1 + SECRET_HEX);
        assert_eq!(parse_id(&a), Some(stored.id.as_str()));
        let record = serde_json::to_string(&Command::TokenMint {
            tenant: stored.tenant.clone(),
            id: stored.id.clone(),
            hash: stored.hash.clone(),
            created_at: stored.created_at.clone(),
        })
        .unwrap();
        let secret = a.rsplit('_').next().unwrap();
        assert!(!record.contains(secret) && !record.contains(&a), "{record}");
        assert_eq!(stored.hash.len(), 64);
    }

    #[test]
    fn only_well_formed_tokens_are_parsed() {
        let (token, _) = mint("acme").unwrap();
        let id = &token[5..21];
        for bad in [
            String::new(),
            "hptk_".into(),
            token.to_uppercase(),
            format!("{token}0"),
            token[..token.len() - 1].to_owned(),
            token.replacen("hptk_", "hptx_", 1),
            format!("hptk_{id}_{}", "g".repeat(64)),
            format!("hptk_{id}-{}", "0".repeat(64)),
            format!("hptk_{id}_{}_", "0".repeat(63)),
        ] {
            assert_eq!(parse_id(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_authenticates_until_revoked() {
        let mut state = State::default();
        let (token, stored) = mint("acme").unwrap();
        let (other, _) = mint("acme").unwrap();
        assert!(apply(&mut state, &Command::mint(&stored)));
        assert_eq!(authenticate(&state, &token), Some("acme"));
        assert_eq!(authenticate(&state, &other), None, "never minted");
        // Same id, another secret.
        let forged = format!("{}{}", &token[..22], "0".repeat(64));
        assert_eq!(authenticate(&state, &forged), None);
        assert!(
            !apply(
                &mut state,
                &Command::TokenRevoke {
                    tenant: "globex".into(),
                    id: stored.id.clone()
                }
            ),
            "another tenant's revoke changes nothing"
        );
        assert_eq!(authenticate(&state, &token), Some("acme"));
        assert!(apply(
            &mut state,
            &Command::TokenRevoke {
                tenant: "acme".into(),
                id: stored.id.clone()
            }
        ));
        assert_eq!(authenticate(&state, &token), None);
    }

    #[test]
    fn a_tenant_holds_at_most_the_cap_of_live_tokens() {
        let mut state = State::default();
        for _ in 0..MAX_PER_TENANT {
            let (_, stored) = mint("acme").unwrap();
            assert!(apply(&mut state, &Command::mint(&stored)));
        }
        let (_, over) = mint("acme").unwrap();
        assert!(!apply(&mut state, &Command::mint(&over)), "over the cap");
        let (_, other) = mint("globex").unwrap();
        assert!(apply(&mut state, &Command::mint(&other)), "per tenant");
        assert_eq!(of_tenant(&state, "acme").len(), MAX_PER_TENANT);
        assert_eq!(of_tenant(&state, "globex").len(), 1);
    }
}
