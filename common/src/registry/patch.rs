//! What an update keeps of the stored endpoint: values sent back as the API
//! shows them (`***`) keep the stored ones; and the JSON merge patch a
//! `PATCH` applies.

use super::Mode;
use serde_json::{Map, Value};

/// A URL sent back as the API shows it (its credentials as `***`) keeps
/// the stored one: the endpoint's own and each environment's.
pub(super) fn keep_shown_url(next: &mut Map<String, Value>, old: &Map<String, Value>) {
    fn keep(new: Option<&mut Value>, old: Option<&Value>) {
        if let (Some(Value::String(new)), Some(Value::String(old))) = (new, old)
            && new != old
            && *new == crate::secret::redact_url(old)
        {
            new.clone_from(old);
        }
    }
    keep(next.get_mut("url"), old.get("url"));
    if let (Some(Value::Object(new_envs)), Some(Value::Object(old_envs))) =
        (next.get_mut("environments"), old.get("environments"))
    {
        for (name, env) in new_envs.iter_mut() {
            keep(
                env.get_mut("url"),
                old_envs.get(name).and_then(|e| e.get("url")),
            );
        }
    }
}

/// The environments' secrets and header values, as the top level's: a
/// `"***"` (what the API shows) keeps the stored value at that place (a
/// header of that name, a secret at that index), and with `PUT` an
/// environment given without `secrets` or `headers` keeps its stored ones.
/// `old` is the opened stored endpoint.
pub(super) fn keep_environment_values(
    next: &mut Map<String, Value>,
    old: &Map<String, Value>,
    mode: Mode,
) {
    let (Some(Value::Object(new_envs)), Some(Value::Object(old_envs))) =
        (next.get_mut("environments"), old.get("environments"))
    else {
        return;
    };
    for (name, env) in new_envs.iter_mut() {
        let (Value::Object(env), Some(Value::Object(stored))) = (env, old_envs.get(name)) else {
            continue;
        };
        for field in ["secrets", "headers"] {
            if mode == Mode::Replace
                && !env.contains_key(field)
                && let Some(v) = stored.get(field)
            {
                env.insert(field.into(), v.clone());
            }
        }
        if let (Some(Value::Array(new)), Some(Value::Array(old))) =
            (env.get_mut("secrets"), stored.get("secrets"))
        {
            for (i, value) in new.iter_mut().enumerate() {
                if value.as_str() == Some("***")
                    && let Some(v) = old.get(i)
                {
                    *value = v.clone();
                }
            }
        }
        if let (Some(Value::Object(new)), Some(Value::Object(old))) =
            (env.get_mut("headers"), stored.get("headers"))
        {
            for (header, value) in new.iter_mut() {
                if value.as_str() == Some("***")
                    && let Some(v) = old.get(header)
                {
                    *value = v.clone();
                }
            }
        }
    }
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_url_sent_back_as_shown_keeps_its_credentials() {
        let old = serde_json::json!({
            "url": "https://user:pw@a.example/h",
            "environments": {"prd": {"url": "https://k@p.example/h"}}
        });
        let Value::Object(old) = old else {
            unreachable!()
        };
        let shown = serde_json::json!({
            "url": "https://***@a.example/h",
            "environments": {"prd": {"url": "https://***@p.example/h"}}
        });
        let Value::Object(mut next) = shown else {
            unreachable!()
        };
        keep_shown_url(&mut next, &old);
        assert_eq!(Value::Object(next), Value::Object(old.clone()));
        // A new URL, even one with ***, is taken as sent.
        let Value::Object(mut next) = serde_json::json!({"url": "https://***@b.example/h"}) else {
            unreachable!()
        };
        keep_shown_url(&mut next, &old);
        assert_eq!(next["url"], "https://***@b.example/h");
    }
    use super::*;

    #[test]
    fn environment_values_shown_as_stars_are_kept() {
        let old = serde_json::json!({"environments": {
            "prd": {"url": "https://p/", "secrets": ["s0", "s1"], "headers": {"A": "a", "B": "b"}},
            "snd": {"url": "https://s/", "secrets": ["t0"], "headers": {"C": "c"}}
        }});
        let old = old.as_object().unwrap();
        let body = serde_json::json!({"environments": {
            "prd": {"url": "https://p/", "secrets": ["***", "new"], "headers": {"A": "***", "B": "x", "D": "***"}},
            "snd": {"url": "https://s/"},
            "dev": {"url": "https://d/", "headers": {"E": "***"}}
        }});
        let mut next = body.as_object().unwrap().clone();
        keep_environment_values(&mut next, old, Mode::Replace);
        assert_eq!(
            next["environments"],
            serde_json::json!({
                "prd": {"url": "https://p/", "secrets": ["s0", "new"], "headers": {"A": "a", "B": "x", "D": "***"}},
                "snd": {"url": "https://s/", "secrets": ["t0"], "headers": {"C": "c"}},
                "dev": {"url": "https://d/", "headers": {"E": "***"}}
            })
        );
        let mut patched = body.as_object().unwrap().clone();
        keep_environment_values(&mut patched, old, Mode::Merge);
        assert_eq!(
            patched["environments"]["snd"],
            serde_json::json!({"url": "https://s/"}),
            "a merge patch already carries what it leaves out"
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(
            &mut doc,
            &serde_json::json!({"a": null, "b": {"c": 5}, "e": [2, 3], "f": "x"}),
        );
        assert_eq!(
            doc,
            serde_json::json!({"b": {"c": 5, "d": 3}, "e": [2, 3], "f": "x"})
        );
    }
}
