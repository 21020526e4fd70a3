//! `deploy/openapi.json` matches the management API: the same routes and
//! methods, the endpoint fields of `hookpost.toml`, and, against a running
//! API, every documented operation answers with a documented status and a
//! body holding exactly documented fields.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tests::Scope;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "management-token-0123456789";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

fn doc() -> Value {
    let text =
        std::fs::read_to_string(root().join("deploy/openapi.json")).expect("read openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

fn schema<'a>(doc: &'a Value, reference: &Value) -> &'a Value {
    let name = reference["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .expect("a component reference");
    &doc["components"]["schemas"][name]
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn routes_and_methods_match_the_implementation() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| *k != "parameters")
                .map(|m| (path.clone(), m.to_uppercase()))
                .collect::<Vec<_>>()
        })
        .collect();
    let implemented: BTreeSet<(String, String)> = producer::api::ROUTES
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .iter()
                .map(|m| ((*path).to_owned(), (*m).to_owned()))
        })
        .collect();
    assert_eq!(documented, implemented);
}

#[test]
fn endpoint_fields_are_the_config_keys_plus_name_description_metadata() {
    let doc = doc();
    let table: toml::Table = std::fs::read_to_string(root().join("deploy/hookpost.toml"))
        .expect("read")
        .parse()
        .expect("toml");
    let mut config_keys: BTreeSet<String> = table["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .flat_map(|e| e.as_table().expect("table").keys().cloned())
        .collect();
    config_keys.extend(
        common::registry::EXTRA_FIELDS
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let input = &doc["components"]["schemas"]["EndpointInput"];
    assert_eq!(keys(&input["properties"]), config_keys);
    let patch = &doc["components"]["schemas"]["EndpointPatch"];
    assert_eq!(keys(&patch["properties"]), config_keys);
    let output = keys(&doc["components"]["schemas"]["Endpoint"]["properties"]);
    for field in common::registry::OUTPUT_FIELDS {
        assert!(output.contains(field), "Endpoint documents {field}");
    }
}

/// One call: method, documented path, actual path, body, token.
type Case<'a> = (&'a str, &'a str, String, Option<Value>, Option<&'a str>);

/// Checks `body` against the documented response of `status`: the status is
/// documented, required fields are present, and no field is undocumented.
fn check(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let operation = &doc["paths"][path][method];
    let response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which is not documented: {body}"
    );
    let Some(reference) = response["content"]["application/json"].get("schema") else {
        return;
    };
    let schema = if reference.get("$ref").is_some() {
        schema(doc, reference)
    } else {
        reference
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        let field = required.as_str().expect("name");
        assert!(
            body.get(field).is_some(),
            "{method} {path} {status}: no {field} in {body}"
        );
    }
    let documented = keys(&schema["properties"]);
    for field in keys(body) {
        assert!(
            documented.contains(&field),
            "{method} {path} {status}: {field} is not documented"
        );
    }
}

#[tokio::test]
async fn every_operation_answers_as_documented() {
    let doc = doc();
    let scope = Scope::new().await;
    let config = scope.config(&format!(
        "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[api]\ntokens = [\"{TOKEN}\"]\n[registry]\nsecrets_key = \"{KEY}\"\n[[endpoints]]\nid = \"filed\"\nurl = \"http://127.0.0.1:9/\"\nevents = [\"f\"]\n"
    ));
    scope.track_endpoint(&config, "doc");
    // Declare the base topology (as a dispatcher would) so deletes can detach queues.
    let running = tests::dispatcher_harness::Running::start(config.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(producer::api::serve(config.clone(), listener, stop.clone()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let call = |method: &str, path: &str, body: Option<Value>, token: Option<&str>| {
        let mut req = http.request(method.parse().expect("method"), format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let one = "/v1/endpoints/{id}";
    let input = json!({"id": "doc", "url": "http://127.0.0.1:9/doc", "events": ["d.*"], "name": "Doc", "metadata": {"k": 1}});
    let cases: Vec<Case<'_>> = vec![
        (
            "post",
            "/v1/endpoints",
            "/v1/endpoints".into(),
            Some(input.clone()),
            Some(TOKEN),
        ),
        (
            "post",
            "/v1/endpoints",
            "/v1/endpoints".into(),
            Some(input.clone()),
            Some(TOKEN),
        ),
        (
            "post",
            "/v1/endpoints",
            "/v1/endpoints".into(),
            Some(json!({"id": "x"})),
            Some(TOKEN),
        ),
        (
            "get",
            "/v1/endpoints",
            "/v1/endpoints".into(),
            None,
            Some(TOKEN),
        ),
        ("get", "/v1/endpoints", "/v1/endpoints".into(), None, None),
        ("get", one, "/v1/endpoints/doc".into(), None, Some(TOKEN)),
        ("get", one, "/v1/endpoints/filed".into(), None, Some(TOKEN)),
        ("get", one, "/v1/endpoints/nosuch".into(), None, Some(TOKEN)),
        (
            "patch",
            one,
            "/v1/endpoints/doc".into(),
            Some(json!({"description": "patched"})),
            Some(TOKEN),
        ),
        (
            "patch",
            one,
            "/v1/endpoints/doc".into(),
            Some(json!({"events": ["Bad"]})),
            Some(TOKEN),
        ),
        (
            "patch",
            one,
            "/v1/endpoints/filed".into(),
            Some(json!({"events": ["g"]})),
            Some(TOKEN),
        ),
        (
            "put",
            one,
            "/v1/endpoints/doc".into(),
            Some(input.clone()),
            Some(TOKEN),
        ),
        (
            "put",
            one,
            "/v1/endpoints/nosuch".into(),
            Some(input.clone()),
            Some(TOKEN),
        ),
        (
            "post",
            "/v1/endpoints/{id}/secret/rotate",
            "/v1/endpoints/doc/secret/rotate".into(),
            None,
            Some(TOKEN),
        ),
        (
            "post",
            "/v1/endpoints/{id}/secret/rotate",
            "/v1/endpoints/nosuch/secret/rotate".into(),
            None,
            Some(TOKEN),
        ),
        (
            "delete",
            one,
            "/v1/endpoints/filed".into(),
            None,
            Some(TOKEN),
        ),
        ("delete", one, "/v1/endpoints/doc".into(), None, Some(TOKEN)),
        ("delete", one, "/v1/endpoints/doc".into(), None, Some(TOKEN)),
    ];
    let mut seen = BTreeSet::new();
    for (method, template, path, body, token) in cases {
        let (status, answer) = call(&method.to_uppercase(), &path, body, token).await;
        check(&doc, template, method, status, &answer);
        if let Some(items) = answer.get("endpoints").and_then(Value::as_array) {
            let endpoint = &doc["components"]["schemas"]["Endpoint"];
            for item in items {
                for field in keys(item) {
                    assert!(
                        keys(&endpoint["properties"]).contains(&field),
                        "list item field {field}"
                    );
                }
            }
        }
        seen.insert((method, template, status));
    }
    // Tenant tokens: minted, used, listed, refused, revoked.
    let tokens = "/v1/tenants/{tenant}/tokens";
    let token_one = "/v1/tenants/{tenant}/tokens/{id}";
    let (status, minted) = call("POST", "/v1/tenants/acme/tokens", None, Some(TOKEN)).await;
    check(&doc, tokens, "post", status, &minted);
    seen.insert(("post", tokens, status));
    let tenant_token = minted["token"].as_str().expect("token").to_owned();
    let token_id = minted["id"].as_str().expect("id").to_owned();
    let revoke = format!("/v1/tenants/acme/tokens/{token_id}");
    let more: Vec<(&str, &str, String, Option<&str>)> = vec![
        (
            "get",
            "/v1/endpoints",
            "/v1/endpoints?tenant=acme".into(),
            Some(TOKEN),
        ),
        (
            "get",
            "/v1/endpoints",
            "/v1/endpoints?tenant=Acme".into(),
            Some(TOKEN),
        ),
        (
            "get",
            "/v1/endpoints",
            "/v1/endpoints".into(),
            Some(&tenant_token),
        ),
        (
            "get",
            one,
            "/v1/endpoints/filed".into(),
            Some(&tenant_token),
        ),
        (
            "post",
            tokens,
            "/v1/tenants/Acme/tokens".into(),
            Some(TOKEN),
        ),
        (
            "post",
            tokens,
            "/v1/tenants/acme/tokens".into(),
            Some(&tenant_token),
        ),
        ("get", tokens, "/v1/tenants/acme/tokens".into(), Some(TOKEN)),
        (
            "get",
            "/v1/endpoints/{id}/attempts",
            "/v1/endpoints/filed/attempts?since=10m&outcome=retry".into(),
            Some(TOKEN),
        ),
        (
            "get",
            "/v1/endpoints/{id}/attempts",
            "/v1/endpoints/filed/attempts?status=42".into(),
            Some(TOKEN),
        ),
        (
            "get",
            "/v1/endpoints/{id}/attempts",
            "/v1/endpoints/filed/attempts".into(),
            Some(&tenant_token),
        ),
        (
            "get",
            "/v1/events/{id}/attempts",
            "/v1/events/evt_doc/attempts?limit=5".into(),
            Some(&tenant_token),
        ),
        (
            "get",
            "/v1/events/{id}/attempts",
            "/v1/events/evt_doc/attempts".into(),
            None,
        ),
        (
            "get",
            tokens,
            "/v1/tenants/acme/tokens".into(),
            Some(&tenant_token),
        ),
        ("delete", token_one, revoke.clone(), Some(&tenant_token)),
        ("delete", token_one, revoke.clone(), Some(TOKEN)),
        ("delete", token_one, revoke.clone(), Some(TOKEN)),
        (
            "get",
            "/v1/endpoints",
            "/v1/endpoints".into(),
            Some(&tenant_token),
        ),
    ];
    for (method, template, path, token) in more {
        let (status, answer) = call(&method.to_uppercase(), &path, None, token).await;
        check(&doc, template, method, status, &answer);
        seen.insert((method, template, status));
    }
    // Replays from the archive (the file endpoint `filed`).
    let replays = "/v1/endpoints/{id}/replays";
    let replay_one = "/v1/endpoints/{id}/replays/{replay_id}";
    let (status, started) = call(
        "POST",
        "/v1/endpoints/filed/replays",
        Some(json!({"since": "10m", "rate": 50})),
        Some(TOKEN),
    )
    .await;
    check(&doc, replays, "post", status, &started);
    assert_eq!(status, 202, "{started}");
    seen.insert(("post", replays, status));
    let replay = format!(
        "/v1/endpoints/filed/replays/{}",
        started["id"].as_str().expect("replay id")
    );
    let replay_cases: Vec<Case<'_>> = vec![
        (
            "post",
            replays,
            "/v1/endpoints/filed/replays".into(),
            Some(json!({"since": "10m", "dry_run": true})),
            Some(TOKEN),
        ),
        (
            "post",
            replays,
            "/v1/endpoints/filed/replays".into(),
            Some(json!({"since": "10m", "rate": -1})),
            Some(TOKEN),
        ),
        (
            "post",
            replays,
            "/v1/endpoints/nosuch/replays".into(),
            Some(json!({"since": "10m"})),
            Some(TOKEN),
        ),
        (
            "get",
            replays,
            "/v1/endpoints/filed/replays".into(),
            None,
            Some(TOKEN),
        ),
        (
            "get",
            replays,
            "/v1/endpoints/filed/replays".into(),
            None,
            None,
        ),
        ("get", replay_one, replay.clone(), None, Some(TOKEN)),
        ("delete", replay_one, replay.clone(), None, Some(TOKEN)),
        (
            "get",
            replay_one,
            "/v1/endpoints/filed/replays/rpl_nosuch".into(),
            None,
            Some(TOKEN),
        ),
        (
            "delete",
            replay_one,
            "/v1/endpoints/filed/replays/rpl_nosuch".into(),
            None,
            Some(TOKEN),
        ),
    ];
    for (method, template, path, body, token) in replay_cases {
        let (status, answer) = call(&method.to_uppercase(), &path, body, token).await;
        check(&doc, template, method, status, &answer);
        seen.insert((method, template, status));
    }
    for expected in [
        ("get", "/v1/endpoints", 400),
        ("get", tokens, 403),
        ("delete", token_one, 200),
        ("delete", token_one, 404),
        ("get", "/v1/endpoints", 401),
        ("get", "/v1/endpoints/{id}/attempts", 200),
        ("get", "/v1/endpoints/{id}/attempts", 400),
        ("get", "/v1/endpoints/{id}/attempts", 404),
        ("get", "/v1/events/{id}/attempts", 200),
        ("get", "/v1/events/{id}/attempts", 401),
        ("post", replays, 200),
        ("post", replays, 400),
        ("post", replays, 404),
        ("get", replays, 200),
        ("get", replays, 401),
        ("get", replay_one, 200),
        ("delete", replay_one, 200),
        ("get", replay_one, 404),
    ] {
        assert!(seen.contains(&expected), "{expected:?} seen");
    }
    // The walk covered a success and an error of every operation.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item
            .as_object()
            .expect("item")
            .keys()
            .filter(|k| *k != "parameters")
        {
            let codes: Vec<u16> = seen
                .iter()
                .filter(|(m, t, _)| m == method && t == path)
                .map(|(_, _, s)| *s)
                .collect();
            assert!(
                codes.iter().any(|c| *c < 300),
                "{method} {path}: no success seen"
            );
        }
    }
    stop.cancel();
    running.stop().await.expect("stop");
}

/// Where `value` breaks `schema` (the JSON Schema keywords deploy/openapi.json
/// uses; `format` is an annotation and not checked), as readable lines.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = if schema.get("$ref").is_some() {
        self::schema(doc, schema)
    } else {
        schema
    };
    let mut out = Vec::new();
    let mut fail = |why: String| out.push(format!("{at}: {why}"));
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::Array(k) => k.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        let is = |k: &str| match k {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            _ => panic!("type {k}"),
        };
        if !kinds.iter().any(|k| is(k)) {
            fail(format!("not of type {kind}"));
            return out;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        fail(format!("{value} is not one of {options:?}"));
    }
    if let Some(c) = schema.get("const")
        && c != value
    {
        fail(format!("{value} is not {c}"));
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            fail(format!("shorter than {min}"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            fail(format!("longer than {max}"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let re = regex_bites::Regex::new(pattern)
                .unwrap_or_else(|e| panic!("{at}: pattern {pattern}: {e}"));
            if !re.is_match(s) {
                fail(format!("{s:?} does not match {pattern}"));
            }
        }
    }
    if let Some(n) = value
        .as_i64()
        .map(i128::from)
        .or(value.as_u64().map(i128::from))
    {
        if let Some(min) = schema.get("minimum").and_then(Value::as_i64)
            && n < i128::from(min)
        {
            fail(format!("{n} is below {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_i64)
            && n > i128::from(max)
        {
            fail(format!("{n} is above {max}"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            fail(format!("fewer than {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            fail(format!("more than {max} items"));
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                out.extend(violations(doc, item, v, &format!("{at}[{i}]")));
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().expect("name");
            if !object.contains_key(name) {
                out.push(format!("{at}: {name} is required"));
            }
        }
        for (name, needs) in schema["dependentRequired"]
            .as_object()
            .into_iter()
            .flatten()
        {
            for need in needs.as_array().into_iter().flatten() {
                let need = need.as_str().expect("name");
                if object.contains_key(name) && !object.contains_key(need) {
                    out.push(format!("{at}: {name} needs {need}"));
                }
            }
        }
        for (name, v) in object {
            let here = format!("{at}.{name}");
            if let Some(names) = schema.get("propertyNames") {
                out.extend(violations(doc, names, &Value::String(name.clone()), &here));
            }
            match properties.and_then(|p| p.get(name)) {
                Some(property) => out.extend(violations(doc, property, v, &here)),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => out.push(format!("{here}: not allowed")),
                    Some(extra @ Value::Object(_)) => out.extend(violations(doc, extra, v, &here)),
                    _ => {}
                },
            }
        }
    }
    if let Some(not) = schema.get("not")
        && violations(doc, not, value, at).is_empty()
    {
        out.push(format!("{at}: {value} matches what `not` forbids"));
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        if let Some(condition) = part.get("if") {
            let branch = if violations(doc, condition, value, at).is_empty() {
                part.get("then")
            } else {
                part.get("else")
            };
            if let Some(branch) = branch {
                out.extend(violations(doc, branch, value, at));
            }
        } else {
            out.extend(violations(doc, part, value, at));
        }
    }
    out
}

/// Inputs just inside and just outside each constraint the API enforces:
/// `(changes merged into a valid endpoint, whether the API takes it)`.
fn boundary_cases() -> Vec<(Value, bool)> {
    let standard_24 = format!("whsec_{}", "A".repeat(32));
    let standard_64 = format!("whsec_{}AA==", "A".repeat(84));
    let standard_62 = format!("whsec_{}AAA=", "A".repeat(80));
    let standard_23 = format!("whsec_{}AAA=", "A".repeat(28));
    let standard_65 = format!("whsec_{}AAA=", "A".repeat(84));
    let max = |n: u64| json!(n);
    vec![
        // id: [a-z0-9_-], 1 to 100
        (json!({"id": "0"}), true),
        (json!({"id": "a".repeat(100)}), true),
        (json!({"id": "a".repeat(101)}), false),
        (json!({"id": ""}), false),
        (json!({"id": "A"}), false),
        (json!({"id": "a.b"}), false),
        // url: http or https with a host
        (json!({"url": "https://0.com"}), true),
        (json!({"url": "HTTP://user:pw@127.0.0.1:9/p?q#f"}), true),
        (json!({"url": "http://[::1]:9/"}), true),
        (json!({"url": "ftp://example.com/"}), false),
        (json!({"url": "https://"}), false),
        (json!({"url": "example.com"}), false),
        // events: at least one pattern of words, * and #
        (json!({"events": ["#"]}), true),
        (json!({"events": ["a.*.#", "b_c-d.e"]}), true),
        // (a global endpoint binds `*.e=.<pattern>` too: 250 + 5 bytes)
        (json!({"events": ["a".repeat(250)]}), true),
        (json!({"events": ["a".repeat(251)]}), false),
        (
            json!({"events": (0..100).map(|i| format!("e{i}")).collect::<Vec<_>>()}),
            true,
        ),
        (
            json!({"events": (0..101).map(|i| format!("e{i}")).collect::<Vec<_>>()}),
            false,
        ),
        (json!({"events": []}), false),
        (json!({"events": [""]}), false),
        (json!({"events": ["a..b"]}), false),
        (json!({"events": ["Order.created"]}), false),
        (json!({"events": ["a.b*"]}), false),
        // tenant and environments: [a-z0-9_-]{1,64}, at most 8, url required
        (json!({"tenant": "acme_1-x"}), true),
        (json!({"tenant": "Acme"}), false),
        (json!({"tenant": ""}), false),
        (json!({"tenant": "a".repeat(65)}), false),
        (
            json!({"environments": {"snd": {"url": "https://snd.example.com/"}}}),
            true,
        ),
        (
            json!({"environments": {"Snd": {"url": "https://snd.example.com/"}}}),
            false,
        ),
        (json!({"environments": {"snd": {"method": "PUT"}}}), false),
        (
            json!({"environments": {"snd": {"url": "https://x.example.com/", "x": 1}}}),
            false,
        ),
        (
            json!({"environments": {"snd": {"url": "https://x.example.com/", "timeout_ms": 900001}}}),
            false,
        ),
        // headers: token names, not reserved, values without control characters
        (
            json!({"headers": {"X-Api-Key": "v\tw", "authorization": "Bearer x"}}),
            true,
        ),
        (json!({"headers": {"X Key": "v"}}), false),
        (json!({"headers": {"": "v"}}), false),
        (json!({"headers": {"Webhook-Id": "v"}}), false),
        (json!({"headers": {"HOOKPOST-attempt": "v"}}), false),
        (json!({"headers": {"Content-Type": "text/plain"}}), false),
        (json!({"headers": {"host": "x"}}), false),
        (
            json!({"headers": {"X-Hostname": "x", "Content-Types": "y"}}),
            true,
        ),
        (json!({"headers": {"X-A": "a\nb"}}), false),
        (json!({"headers": {"X-A": "a\u{7f}"}}), false),
        // secrets: standard = whsec_ + base64 of 24 to 64 bytes
        (json!({"secrets": [standard_24]}), true),
        (json!({"secrets": [standard_64]}), true),
        (json!({"secrets": [standard_62]}), true),
        (json!({"secrets": [standard_23]}), false),
        (json!({"secrets": [standard_65]}), false),
        (
            json!({"secrets": ["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]}),
            false,
        ),
        (
            json!({"secrets": [format!("whsec_{}AB==", "A".repeat(84))]}),
            false,
        ),
        (json!({"secrets": ["0123456789abcdef"]}), false),
        // secrets: hex = 16 or more characters without spaces
        (
            json!({"signature": "hex", "secrets": ["0123456789abcdef"]}),
            true,
        ),
        (
            json!({"signature": "hex", "secrets": ["0123456789abcde"]}),
            false,
        ),
        (
            json!({"signature": "hex", "secrets": ["0123456789 abcdef"]}),
            false,
        ),
        (
            json!({"signature": "hex", "secrets": ["0123456789abcdef\u{1}"]}),
            false,
        ),
        // numbers
        (json!({"timeout_ms": 1}), true),
        (json!({"timeout_ms": 900_000}), true),
        (json!({"timeout_ms": 0}), false),
        (json!({"timeout_ms": 900_001}), false),
        (json!({"max_retries": 0}), true),
        (json!({"max_retries": 100}), true),
        (json!({"max_retries": 101}), false),
        (json!({"max_retries": -1}), false),
        (json!({"retry_delay_ms": 1}), true),
        (json!({"retry_delay_ms": 0}), false),
        (
            json!({"retry_delay_ms": 2_592_000_000u64, "max_retry_delay_ms": 2_592_000_000u64}),
            true,
        ),
        (
            json!({"retry_delay_ms": 2_592_000_001u64, "max_retry_delay_ms": 2_592_000_000u64}),
            false,
        ),
        (json!({"max_retry_delay_ms": 1, "retry_delay_ms": 1}), true),
        (json!({"max_retry_delay_ms": 0, "retry_delay_ms": 1}), false),
        (json!({"max_retry_delay_ms": 2_592_000_001u64}), false),
        (json!({"batch_size": 1}), true),
        (json!({"batch_size": 10_000}), true),
        (json!({"batch_size": 0}), false),
        (json!({"batch_size": 10_001}), false),
        (json!({"batch_interval_ms": 0}), true),
        (json!({"batch_interval_ms": 900_000}), true),
        (json!({"batch_interval_ms": 900_001}), false),
        (json!({"batch_interval_ms": -1}), false),
        (json!({"max_in_flight": 1}), true),
        (json!({"max_in_flight": max(u64::from(u32::MAX))}), true),
        (json!({"max_in_flight": 0}), false),
        (
            json!({"max_in_flight": max(u64::from(u32::MAX) + 1)}),
            false,
        ),
        (json!({"breaker_failures": 0}), true),
        (json!({"breaker_failures": max(u64::from(u32::MAX))}), true),
        (
            json!({"breaker_failures": max(u64::from(u32::MAX) + 1)}),
            false,
        ),
        (json!({"breaker_cooldown_ms": 1}), true),
        (json!({"breaker_cooldown_ms": 900_000}), true),
        (json!({"breaker_cooldown_ms": 0}), false),
        (json!({"breaker_cooldown_ms": 900_001}), false),
        (json!({"retry_on_status": {"add": [300, 599]}}), true),
        (json!({"retry_on_status": {"remove": [299]}}), false),
        (json!({"retry_on_status": {"add": [600]}}), false),
        (json!({"rate_limit_per_s": 1, "rate_limit_burst": 1}), true),
        (json!({"rate_limit_per_s": max(u64::from(u32::MAX))}), true),
        (json!({"rate_limit_per_s": 0}), false),
        (
            json!({"rate_limit_per_s": max(u64::from(u32::MAX) + 1)}),
            false,
        ),
        (json!({"rate_limit_burst": 5}), false),
        (json!({"rate_limit_per_s": 1, "rate_limit_burst": 0}), false),
        // enums and texts
        (json!({"method": "PUT"}), true),
        (json!({"method": "GET"}), false),
        (json!({"on_exhausted": "drop"}), true),
        (json!({"on_exhausted": "park"}), false),
        (json!({"signature": "hmac"}), false),
        (
            json!({"name": "n".repeat(200), "description": "d".repeat(2000)}),
            true,
        ),
        (json!({"name": "n".repeat(201)}), false),
        (json!({"description": "d".repeat(2001)}), false),
        (json!({"unknown": 1}), false),
    ]
}

#[test]
fn the_schema_states_the_constraints_the_api_enforces() {
    let doc = doc();
    let input = json!({"$ref": "#/components/schemas/EndpointInput"});
    let config = common::Config::from_toml_str(
        &format!(
            "[http]\nallowed_networks = [\"127.0.0.0/8\", \"::1/128\"]\n[registry]\nsecrets_key = \"{KEY}\"\n"
        ),
        "test.toml".as_ref(),
        &[],
    )
    .expect("config");
    let key = config.registry.secrets_key.clone();
    let api_takes = |body: &Value| {
        let object = body.as_object().expect("object").clone();
        common::registry::register(object, &config, key.as_ref(), None).map(|_| ())
    };
    let mut wrong = Vec::new();
    for (changes, valid) in boundary_cases() {
        let mut body = json!({"id": "ok", "url": "http://127.0.0.1:9/x", "events": ["a"]});
        for (k, v) in changes.as_object().expect("object") {
            body[k] = v.clone();
        }
        let schema = violations(&doc, &input, &body, "body");
        let api = api_takes(&body);
        if schema.is_empty() != valid {
            wrong.push(format!(
                "schema on {changes}: expected valid={valid}, got {schema:?}"
            ));
        }
        if api.is_ok() != valid {
            wrong.push(format!(
                "API on {changes}: expected valid={valid}, got {api:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // What a schema-driven client once generated, which the API refuses.
    let generated = json!({"events": [""], "id": "0", "url": "https://0.com"});
    assert!(api_takes(&generated).is_err());
    let why = violations(&doc, &input, &generated, "body");
    assert!(
        why.iter().any(|w| w.starts_with("body.events[0]")),
        "{why:?}"
    );

    // A patch's fields follow the same rules.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["EndpointPatch"]["properties"],
        schemas["EndpointInput"]["properties"]
    );
}
