//! The endpoint registry: endpoints created at runtime (management API,
//! `hookpost-admin endpoints create`), stored as records of the control stream
//! ([`control`]). Secrets and header values are sealed with
//! ChaCha20-Poly1305 under a key from the environment (`[registry]
//! secrets_key`); the stream never holds them in clear.
//!
//! - `model`: the stored record and the errors;
//! - `validate`: API object → checked, sealed record;
//! - `load`: record → opened settings → runtime endpoint;
//! - `rotation`: new secrets and their overlap;
//! - `view`: what the API shows;
//! - [`control`]: the control stream's records, writer and reader;
//! - [`snapshot`]: snapshots of it, and the reader's replay;
//! - `ops`: create, update, get, rotate through the control stream;
//! - `lifecycle`: delete, draining the queues when forced;
//! - [`tokens`]: tenant tokens (format, hash, authentication); minted and
//!   revoked through the control stream by `ops`.

pub mod control;
mod lifecycle;
mod load;
mod model;
mod ops;
mod patch;
mod rotation;
pub mod snapshot;
mod token_ops;
pub mod tokens;
mod validate;
mod view;

pub use crate::secret::SecretsKey;
pub use lifecycle::Deleted;
pub use load::{Opened, opened_settings, to_endpoint};
pub use model::{EXTRA_FIELDS, FieldError, OUTPUT_FIELDS, OpError, StoredEndpoint, StoredSecret};
pub use ops::{Mode, Registry, check_tenant};
pub use patch::merge_patch;
pub use rotation::{new_secret, rotate};
pub use validate::register;
pub use view::public_view;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;

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
    fn environments_secrets_and_header_values_are_sealed_at_rest() {
        let key = SecretsKey::parse(KEY).unwrap();
        let body = || {
            input(serde_json::json!({
                "id": "multi", "url": "https://p.example.com/", "events": ["#"],
                "environments": {
                    "prd": {"url": "https://prd.example.com/",
                            "secrets": ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"],
                            "headers": {"X-Env-Key": "env-header-plain"}},
                    "snd": {"url": "https://snd.example.com/"}
                }
            }))
        };
        let stored = register(body(), &config(), Some(&key), None).unwrap();
        // What the control stream holds.
        let record = serde_json::to_string(&control::Command::Put {
            endpoint: stored.clone(),
        })
        .unwrap();
        for plain in ["C2FVsBQ", "env-header-plain"] {
            assert!(!record.contains(plain), "{record}");
        }
        assert!(stored.secrets.is_empty(), "nothing generated by register");
        let prd = &stored.settings["environments"]["prd"];
        assert!(prd["secrets"][0].as_str().unwrap().starts_with("v1:"));
        assert!(
            prd["headers"]["X-Env-Key"]
                .as_str()
                .unwrap()
                .starts_with("v1:")
        );
        assert!(
            stored.settings["environments"]["snd"]
                .get("secrets")
                .is_none(),
            "an environment without secrets stays unsigned"
        );
        let endpoint = to_endpoint(
            &stored,
            &config(),
            Some(&key),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let prd = endpoint
            .variants
            .iter()
            .find(|v| v.id == "multi~prd")
            .unwrap();
        assert_eq!(prd.secrets.len(), 1);
        assert_eq!(prd.headers[0].1.expose(), "env-header-plain");
        let snd = endpoint
            .variants
            .iter()
            .find(|v| v.id == "multi~snd")
            .unwrap();
        assert!(snd.secrets.is_empty());
        let view = public_view(&stored, false);
        let text = view.to_string();
        for plain in ["C2FVsBQ", "env-header-plain", "v1:"] {
            assert!(!text.contains(plain), "{text}");
        }
        assert_eq!(
            view["environments"]["prd"]["headers"]["X-Env-Key"], "***",
            "{text}"
        );
        assert_eq!(view["environments"]["prd"]["secrets"][0], "***");
        // Without a key, nothing secret can be stored.
        match register(body(), &config(), None, None) {
            Err(OpError::Invalid(e)) => assert_eq!(e.field, "secrets"),
            other => panic!("{other:?}"),
        }
        // Another key cannot open them.
        let other = SecretsKey::parse("HwAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=").unwrap();
        let e = to_endpoint(
            &stored,
            &config(),
            Some(&other),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(e.field.starts_with("environments.prd."), "{e}");
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
