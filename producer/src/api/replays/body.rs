//! A replay request's body, checked: every value an API caller sends is
//! hostile input (unknown keys refused, types and bounds checked, a tenant
//! token held to its own tenant and rate).

use super::TENANT_MAX_RATE;
use crate::api::Caller;
use common::archive::replay::{self, DEFAULT_RATE, Request};
use common::registry;
use serde_json::{Map, Value};

/// The body's request; `(field, why)` when a value is bad.
pub(super) fn parse(
    body: &Map<String, Value>,
    caller: &Caller,
) -> Result<Request, (String, String)> {
    const KEYS: [&str; 6] = ["since", "until", "type", "tenant", "rate", "dry_run"];
    if let Some(k) = body.keys().find(|k| !KEYS.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err((
            shown,
            format!("is not a replay field ({})", KEYS.join(", ")),
        ));
    }
    let text = |name: &str| -> Result<Option<&str>, (String, String)> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err((name.to_owned(), "must be a string".to_owned())),
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let time =
        |name: &str, t: &str| common::history::parse_time(t, now).map_err(|e| (name.to_owned(), e));
    let since = time(
        "since",
        text("since")?.ok_or_else(|| ("since".to_owned(), "is required".to_owned()))?,
    )?;
    let until = text("until")?.map(|t| time("until", t)).transpose()?;
    if until.is_some_and(|u| u <= since) {
        return Err(("until".into(), "must be after since".into()));
    }
    let event_type = text("type")?.map(str::to_owned);
    if let Some(p) = &event_type
        && !common::config::is_valid_pattern(p)
    {
        return Err((
            "type".into(),
            "is not a pattern (dot-separated words, `*` or `#`)".into(),
        ));
    }
    let tenant = match (text("tenant")?, caller) {
        (None, Caller::Operator) => None,
        (Some(t), Caller::Operator) => {
            registry::check_tenant(t)
                .map_err(|_| ("tenant".to_owned(), "is not a tenant".to_owned()))?;
            Some(t.to_owned())
        }
        // A tenant token replays its own tenant's events, whatever it asks.
        (None, Caller::Tenant(own)) => Some(own.clone()),
        (Some(t), Caller::Tenant(own)) if t == own => Some(own.clone()),
        (Some(_), Caller::Tenant(_)) => {
            return Err((
                "tenant".into(),
                "a tenant token replays only its own tenant's events".into(),
            ));
        }
    };
    let max = match caller {
        Caller::Operator => replay::MAX_RATE,
        Caller::Tenant(_) => TENANT_MAX_RATE,
    };
    let rate = match body.get("rate") {
        None | Some(Value::Null) => DEFAULT_RATE.min(max),
        Some(v) => v
            .as_f64()
            .filter(|r| r.is_finite() && *r > 0.0 && *r <= max)
            .ok_or_else(|| {
                (
                    "rate".to_owned(),
                    format!("must be a number of events per second above 0 and at most {max}"),
                )
            })?,
    };
    let dry_run = match body.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(("dry_run".into(), "must be true or false".into())),
    };
    Ok(Request {
        since,
        until,
        event_type,
        tenant,
        rate,
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn bodies_are_checked_and_a_tenant_cannot_widen_its_scope() {
        let op = Caller::Operator;
        let acme = Caller::Tenant("acme".into());
        let r = parse(&body(json!({"since": "1h"})), &op).expect("minimal");
        assert_eq!((r.tenant, r.dry_run), (None, false));
        assert!((r.rate - DEFAULT_RATE).abs() < f64::EPSILON);
        let r = parse(&body(json!({"since": "1h"})), &acme).expect("tenant");
        assert_eq!(r.tenant.as_deref(), Some("acme"));
        for (b, field) in [
            (json!({}), "since"),
            (json!({"since": 5}), "since"),
            (json!({"since": "yesterday"}), "since"),
            (json!({"since": "1h", "until": "2h"}), "until"),
            (json!({"since": "1h", "type": "a..b"}), "type"),
            (json!({"since": "1h", "rate": 0}), "rate"),
            (json!({"since": "1h", "rate": "fast"}), "rate"),
            (json!({"since": "1h", "dry_run": "yes"}), "dry_run"),
            (json!({"since": "1h", "endpoint": "x"}), "endpoint"),
            (json!({"since": "1h", "tenant": "Not A Tenant"}), "tenant"),
        ] {
            let (f, _) = parse(&body(b.clone()), &op).expect_err(&b.to_string());
            assert_eq!(f, field, "{b}");
        }
        let (f, _) = parse(&body(json!({"since": "1h", "tenant": "other"})), &acme)
            .expect_err("another tenant");
        assert_eq!(f, "tenant");
        let (f, _) = parse(&body(json!({"since": "1h", "rate": 5000})), &acme)
            .expect_err("over the tenant cap");
        assert_eq!(f, "rate");
        assert!(parse(&body(json!({"since": "1h", "rate": 5000})), &op).is_ok());
    }
}
