//! `deploy/openapi.json` matches the management API: the same routes and
//! methods, the endpoint fields of `hookpost.toml`, and, against a running
//! API, every documented operation answers with a documented status and a
//! body holding exactly documented fields.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
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
    let http = reqwest::Client::new();
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
