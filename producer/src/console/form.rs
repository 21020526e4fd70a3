//! The console's forms: reading an `application/x-www-form-urlencoded`
//! body, and turning the endpoint form into the management API's JSON body
//! (so the API's own validation, and its messages, apply).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A submitted form: each field's last value.
#[derive(Debug, Default, Clone)]
pub struct Form(BTreeMap<String, String>);

/// The endpoint form's numeric fields, in the order the form shows them.
pub const NUMBERS: [&str; 6] = [
    "batch_size",
    "batch_interval_ms",
    "max_retries",
    "retry_delay_ms",
    "rate_limit_per_s",
    "timeout_ms",
];

/// The endpoint form's other settings; with [`NUMBERS`], every setting the
/// form edits (an edit keeps every other one).
pub const TEXTS: [&str; 7] = [
    "name",
    "description",
    "url",
    "events",
    "headers",
    "transform",
    "environments",
];

/// The form field an API error's `field` belongs to (`environments.prd.url`
/// and `events[0]` to `environments` and `events`).
pub fn form_field(field: &str) -> &str {
    field.split(['.', '[']).next().unwrap_or(field)
}

/// Whether the endpoint form has a field for `field` (an API field name),
/// so an error about it shows there.
pub fn has_field(field: &str) -> bool {
    let top = form_field(field);
    ["id", "tenant"]
        .iter()
        .chain(TEXTS.iter())
        .chain(NUMBERS.iter())
        .any(|f| *f == top)
}

/// A form field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Form {
    /// Parses a urlencoded body.
    pub fn parse(body: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// A field's value, trimmed; `""` when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.trim())
    }

    /// Whether a checkbox was ticked.
    pub fn checked(&self, name: &str) -> bool {
        matches!(self.get(name), "on" | "true" | "1")
    }

    /// The fields, for showing a refused form again as it was filled in.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The management API body this endpoint form asks for. `tenant` is
    /// taken from the form only when `with_tenant` (an operator creating).
    ///
    /// # Errors
    /// A field that cannot be put into the body (a number that is not one,
    /// a header line without a colon, environments that are not a JSON object).
    pub fn endpoint_body(&self, with_tenant: bool) -> Result<Map<String, Value>, FieldError> {
        let fail = |field: &str, message: &str| FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        };
        let mut body = Map::new();
        for text in ["name", "description", "url", "transform"] {
            if !self.get(text).is_empty() {
                body.insert(text.into(), Value::String(self.get(text).to_owned()));
            }
        }
        if with_tenant && !self.get("tenant").is_empty() {
            body.insert(
                "tenant".into(),
                Value::String(self.get("tenant").to_owned()),
            );
        }
        let events: Vec<Value> = if self.checked("all_events") {
            vec![Value::String("#".into())]
        } else {
            self.get("events")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.to_owned()))
                .collect()
        };
        if events.is_empty() {
            return Err(fail(
                "events",
                "pick at least one event type (one pattern per line), or tick All events",
            ));
        }
        body.insert("events".into(), Value::Array(events));
        for name in NUMBERS {
            let raw = self.get(name);
            if raw.is_empty() {
                continue;
            }
            let n: u64 = raw.parse().map_err(|_| {
                fail(
                    name,
                    "must be a whole number (or left empty for the default)",
                )
            })?;
            body.insert(name.into(), Value::from(n));
        }
        let mut headers = Map::new();
        for line in self
            .get("headers")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| fail("headers", "one header per line, as `Name: value`"))?;
            headers.insert(
                name.trim().to_owned(),
                Value::String(value.trim().to_owned()),
            );
        }
        if !headers.is_empty() {
            body.insert("headers".into(), Value::Object(headers));
        }
        let environments = self.get("environments");
        if !environments.is_empty() {
            match serde_json::from_str::<Value>(environments) {
                Ok(Value::Object(m)) => {
                    body.insert("environments".into(), Value::Object(m));
                }
                _ => {
                    return Err(fail(
                        "environments",
                        "must be a JSON object: {\"prd\": {\"url\": \"https://…\"}}",
                    ));
                }
            }
        }
        Ok(body)
    }
}

/// An endpoint's event patterns, as the API shows them.
pub fn patterns(view: &Value) -> Vec<&str> {
    view.get("events")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The endpoint form's fields filled from an endpoint as the API shows it
/// (secret values stay `***`; sending them back keeps them).
pub fn from_view(view: &Value) -> Form {
    let mut f = BTreeMap::new();
    let text = |k: &str| view.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    for k in ["name", "description", "url", "transform", "tenant"] {
        f.insert(k.to_owned(), text(k));
    }
    let events = patterns(view);
    if events == ["#"] {
        f.insert("all_events".into(), "on".into());
    } else {
        f.insert("events".into(), events.join("\n"));
    }
    for k in NUMBERS {
        if let Some(n) = view.get(k).and_then(Value::as_u64) {
            f.insert(k.to_owned(), n.to_string());
        }
    }
    if let Some(Value::Object(h)) = view.get("headers") {
        let lines: Vec<String> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("***")))
            .collect();
        f.insert("headers".into(), lines.join("\n"));
    }
    if let Some(env) = view.get("environments").filter(|e| e.is_object()) {
        f.insert(
            "environments".into(),
            serde_json::to_string_pretty(env).unwrap_or_default(),
        );
    }
    Form(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_endpoint_form_becomes_the_api_body() {
        let f = Form::parse(
            b"name=Orders&url=https%3A%2F%2Fa.example%2Fh&events=order.*%0D%0Ainvoice.paid%0D%0A&\
              headers=X-Key%3A+v1%0D%0A&batch_size=10&timeout_ms=&tenant=acme",
        );
        let body = f.endpoint_body(false).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"name": "Orders", "url": "https://a.example/h",
                   "events": ["order.*", "invoice.paid"], "headers": {"X-Key": "v1"},
                   "batch_size": 10})
        );
        let body = f.endpoint_body(true).unwrap();
        assert_eq!(body["tenant"], "acme");
    }

    #[test]
    fn all_events_is_the_hash_pattern_and_bad_fields_are_named() {
        let f = Form::parse(b"url=https%3A%2F%2Fa.example&all_events=on&events=ignored");
        assert_eq!(f.endpoint_body(false).unwrap()["events"], json!(["#"]));
        let bad = |body: &[u8]| Form::parse(body).endpoint_body(false).unwrap_err().field;
        assert_eq!(bad(b"url=x&events="), "events");
        assert_eq!(bad(b"url=x&events=a&max_retries=-1"), "max_retries");
        assert_eq!(bad(b"url=x&events=a&headers=novalue"), "headers");
        assert_eq!(bad(b"url=x&events=a&environments=%5B%5D"), "environments");
    }

    #[test]
    fn api_errors_find_their_form_field() {
        assert_eq!(form_field("environments.prd.url"), "environments");
        assert_eq!(form_field("events[0]"), "events");
        assert!(has_field("headers.X-Key") && has_field("timeout_ms") && has_field("tenant"));
        assert!(!has_field("method") && !has_field("signature"));
    }

    #[test]
    fn a_view_fills_the_form_and_posts_back_the_same_body() {
        let view = json!({"id": "e", "name": "N", "url": "https://a.example/h", "events": ["#"],
                          "headers": {"X-Key": "***"}, "max_retries": 3, "secrets": []});
        let f = from_view(&view);
        assert!(f.checked("all_events"));
        let body = f.endpoint_body(false).unwrap();
        assert_eq!(body["headers"], json!({"X-Key": "***"}));
        assert_eq!(body["max_retries"], 3);
        assert_eq!(body["events"], json!(["#"]));
    }
}
