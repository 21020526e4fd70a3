//! Tenants on the management API end to end (real broker, real API on
//! loopback): tenant tokens minted, listed and revoked by operators; what a
//! tenant token can reach (its tenant's registered endpoints) and what it
//! cannot (anything else answers 404, operator routes 403, a revoked token
//! 401); the operators' `?tenant=` filter; tokens carried by snapshots; the
//! control stream never holding a plain token, secret or header value; and
//! a delete removing (and with force, draining) the environments' queues too.

use common::Config;
use common::registry::control::{self, Command};
use common::topology::Topology;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use std::time::Duration;
use tests::api::Api;
use tests::dispatcher_harness::Running;
use tests::fixtures::FAST;
use tests::{Scope, eventually};

const OPERATOR: &str = "operator-token-0123456789";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const READ: Duration = Duration::from_secs(30);
const ENV_SECRET: &str = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY";
const ENV_HEADER: &str = "env-header-value-plain-7f3a";

/// Mints a token for `tenant` with the operator token.
async fn mint(api: &Api, tenant: &str) -> (String, String) {
    let (status, body) = api
        .call(
            OPERATOR,
            reqwest::Method::POST,
            &format!("/v1/tenants/{tenant}/tokens"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let id = body["id"].as_str().expect("id").to_owned();
    assert!(token.starts_with(&format!("hptk_{id}_")), "{token}");
    (token, id)
}

fn config(scope: &Scope, extra: &str) -> Config {
    scope.config(&format!(
        "{FAST}[api]\ntokens = [\"{OPERATOR}\"]\nmax_endpoints_per_tenant = 3\n[registry]\nsecrets_key = \"{KEY}\"\n{extra}"
    ))
}

/// Registers the queues of endpoints the test creates (with their
/// environments' `~prd` and `~snd`) for cleanup.
fn track(scope: &Scope, config: &Config, ids: &[&str]) {
    for id in ids {
        for queue in [id.to_string(), format!("{id}~prd"), format!("{id}~snd")] {
            scope.track_endpoint(config, &queue);
        }
    }
}

fn endpoint(id: &str) -> Value {
    json!({
        "id": id,
        "url": format!("http://127.0.0.1:9/{id}"),
        "events": ["order.*"],
        "environments": {
            "prd": {"url": format!("http://127.0.0.1:9/{id}/prd"),
                    "secrets": [ENV_SECRET], "headers": {"X-Env-Key": ENV_HEADER}},
            "snd": {"url": format!("http://127.0.0.1:9/{id}/snd")}
        }
    })
}

use reqwest::Method as M;

/// The 404 a tenant gets for `id` must be the one of an id that exists nowhere.
fn assert_hidden(status: u16, body: &Value, id: &str) {
    assert_eq!(status, 404, "{id}: {body}");
    assert_eq!(
        body,
        &json!({ "error": format!("no registered endpoint {id:?}") }),
        "{id}"
    );
}

#[tokio::test]
async fn a_tenant_token_reaches_only_its_own_endpoints_and_stops_once_revoked() {
    let scope = Scope::new().await;
    let config = config(
        &scope,
        "[[endpoints]]\nid = \"filed\"\nurl = \"http://127.0.0.1:9/f\"\nevents = [\"#\"]\ntenant = \"acme\"\n",
    );
    track(
        &scope,
        &config,
        &[
            "acme-hooks",
            "globex-hooks",
            "global-hooks",
            "acme-1",
            "acme-2",
        ],
    );
    let api = Api::start(&config).await;
    let (acme, acme_id) = mint(&api, "acme").await;
    let (globex, _) = mint(&api, "globex").await;

    // A tenant creates without `tenant`: it is filled in.
    let (status, created) = api
        .call(
            &acme,
            M::POST,
            "/v1/endpoints",
            Some(endpoint("acme-hooks")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tenant"], "acme");
    assert_eq!(
        created["environments"]["prd"]["headers"]["X-Env-Key"],
        "***"
    );
    let (status, body) = api
        .call(
            &globex,
            M::POST,
            "/v1/endpoints",
            Some(endpoint("globex-hooks")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .call(
            OPERATOR,
            M::POST,
            "/v1/endpoints",
            Some(endpoint("global-hooks")),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Lists: a tenant sees its own registered endpoints only.
    let ids = |v: &Value| -> Vec<String> {
        v["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| e["id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let (status, list) = api.call(&acme, M::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&list), ["acme-hooks"], "not the file's, not globex's");
    let (_, list) = api
        .call(&acme, M::GET, "/v1/endpoints?tenant=globex", None)
        .await;
    assert!(
        ids(&list).is_empty(),
        "a filter never widens a tenant's view"
    );
    let (_, list) = api.call(OPERATOR, M::GET, "/v1/endpoints", None).await;
    assert_eq!(
        ids(&list),
        ["acme-hooks", "global-hooks", "globex-hooks", "filed"]
    );

    // Anything else is 404 exactly as an id that exists nowhere.
    for other in ["globex-hooks", "global-hooks", "filed", "nowhere"] {
        let path = format!("/v1/endpoints/{other}");
        let (s, b) = api.call(&acme, M::GET, &path, None).await;
        assert_hidden(s, &b, other);
        let (s, b) = api.call(&acme, M::PUT, &path, Some(endpoint(other))).await;
        assert_hidden(s, &b, other);
        let (s, b) = api
            .call(&acme, M::PATCH, &path, Some(json!({"events": ["#"]})))
            .await;
        assert_hidden(s, &b, other);
        let (s, b) = api
            .call(&acme, M::POST, &format!("{path}/secret/rotate"), None)
            .await;
        assert_hidden(s, &b, other);
        let (s, b) = api
            .call(&acme, M::DELETE, &format!("{path}?force=true"), None)
            .await;
        assert_hidden(s, &b, other);
    }
    let (_, still) = api
        .call(OPERATOR, M::GET, "/v1/endpoints/globex-hooks", None)
        .await;
    assert_eq!(still["version"], 1, "untouched: {still}");

    // A taken id answers 409 without saying whose, or where the file is.
    for taken in ["globex-hooks", "filed"] {
        let (status, body) = api
            .call(&acme, M::POST, "/v1/endpoints", Some(endpoint(taken)))
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(
            body,
            json!({ "error": format!("endpoint id {taken:?} is taken; pick another") })
        );
    }

    // Not for another tenant, not moved.
    let mut foreign = endpoint("acme-for-globex");
    foreign["tenant"] = json!("globex");
    let (status, body) = api
        .call(&acme, M::POST, "/v1/endpoints", Some(foreign))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["field"], "tenant");
    let (status, _) = api
        .call(OPERATOR, M::GET, "/v1/endpoints/acme-for-globex", None)
        .await;
    assert_eq!(status, 404, "not created");
    let (status, body) = api
        .call(
            &acme,
            M::PATCH,
            "/v1/endpoints/acme-hooks",
            Some(json!({"tenant": "globex"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // An operator cannot move it either, nor drop its tenant.
    for body in [json!({"tenant": "globex"}), json!({"tenant": null})] {
        let (status, answer) = api
            .call(OPERATOR, M::PATCH, "/v1/endpoints/acme-hooks", Some(body))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["field"], "tenant");
    }
    let (status, answer) = api
        .call(
            OPERATOR,
            M::PUT,
            "/v1/endpoints/global-hooks",
            Some(json!({"id": "global-hooks", "url": "http://127.0.0.1:9/g", "events": ["#"], "tenant": "acme"})),
        )
        .await;
    assert_eq!(status, 400, "a tenant is not added later: {answer}");
    assert_eq!(answer["field"], "tenant");

    // Its own endpoint: a GET → PUT round trip keeps the environments'
    // secrets and header values (shown as ***).
    let (_, shown) = api
        .call(&acme, M::GET, "/v1/endpoints/acme-hooks", None)
        .await;
    let mut body = shown.clone();
    for k in [
        "version",
        "created_at",
        "updated_at",
        "source",
        "paused",
        "secrets",
    ] {
        body.as_object_mut().expect("object").remove(k);
    }
    body["description"] = json!("changed");
    let (status, updated) = api
        .call(&acme, M::PUT, "/v1/endpoints/acme-hooks", Some(body))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    let conn = connect().await;
    let state = control::read(&conn, &Topology::for_config(&config), READ)
        .await
        .expect("read");
    let opened = common::registry::to_endpoint(
        &state.endpoints["acme-hooks"],
        &config,
        config.registry.secrets_key.as_ref(),
        time::OffsetDateTime::now_utc(),
    )
    .expect("loads");
    let prd = opened
        .variants
        .iter()
        .find(|v| v.id == "acme-hooks~prd")
        .expect("prd");
    assert_eq!(prd.headers[0].1.expose(), ENV_HEADER, "*** kept the value");
    assert_eq!(prd.secrets.len(), 1, "*** kept the secret");
    let (status, rotated) = api
        .call(
            &acme,
            M::POST,
            "/v1/endpoints/acme-hooks/secret/rotate",
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");

    // Caps: api.max_endpoints_per_tenant (3 here).
    for (i, expected) in [(1, 201), (2, 201), (3, 409)] {
        let (status, body) = api
            .call(
                &acme,
                M::POST,
                "/v1/endpoints",
                Some(json!({"id": format!("acme-{i}"), "url": "http://127.0.0.1:9/x", "events": ["#"]})),
            )
            .await;
        assert_eq!(status, expected, "{i}: {body}");
    }

    // Operator routes: 403 for a tenant token.
    for (method, path) in [
        (M::POST, "/v1/tenants/acme/tokens".to_owned()),
        (M::GET, "/v1/tenants/acme/tokens".to_owned()),
        (M::DELETE, format!("/v1/tenants/acme/tokens/{acme_id}")),
        (M::POST, "/v1/tenants/globex/tokens".to_owned()),
    ] {
        let (status, body) = api.call(&acme, method.clone(), &path, None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }

    // Listing shows ids and times, never a token or its hash.
    let (status, listed) = api
        .call(OPERATOR, M::GET, "/v1/tenants/acme/tokens", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["tokens"][0]["id"], acme_id.as_str());
    assert!(listed["tokens"][0]["created_at"].is_string());
    assert_eq!(
        listed["tokens"][0].as_object().map(|o| o.len()),
        Some(2),
        "{listed}"
    );

    // Revoked: 401 at once on this API; the other tenant's token still works.
    let revoke = format!("/v1/tenants/acme/tokens/{acme_id}");
    let (status, body) = api.call(OPERATOR, M::DELETE, &revoke, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.call(&acme, M::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 401);
    let (status, _) = api.call(OPERATOR, M::DELETE, &revoke, None).await;
    assert_eq!(status, 404, "revoked already");
    let (status, _) = api
        .call(
            OPERATOR,
            M::DELETE,
            "/v1/tenants/globex/tokens/0123456789abcdef",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = api.call(&globex, M::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200);

    // At most 20 live tokens per tenant.
    for _ in 0..20 {
        mint(&api, "initech").await;
    }
    let (status, body) = api
        .call(OPERATOR, M::POST, "/v1/tenants/initech/tokens", None)
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn operators_filter_by_tenant_and_bad_tenants_and_tokens_are_refused() {
    let scope = Scope::new().await;
    let config = config(&scope, "");
    track(&scope, &config, &["a1", "g1", "n1"]);
    let api = Api::start(&config).await;
    for (id, tenant) in [("a1", Some("acme")), ("g1", Some("globex")), ("n1", None)] {
        let mut body = json!({"id": id, "url": "http://127.0.0.1:9/x", "events": ["#"]});
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let (status, answer) = api
            .call(OPERATOR, M::POST, "/v1/endpoints", Some(body))
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, list) = api
        .call(OPERATOR, M::GET, "/v1/endpoints?tenant=acme", None)
        .await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(listed, ["a1"]);

    let long = "a".repeat(65);
    for bad in ["Acme", "", "a.b", "a%2Fb", "%00", long.as_str(), "a*"] {
        let (status, body) = api
            .call(
                OPERATOR,
                M::GET,
                &format!("/v1/endpoints?tenant={bad}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["field"], "tenant", "{bad}");
        if bad.is_empty() {
            continue;
        }
        for method in [M::POST, M::GET] {
            let (status, body) = api
                .call(OPERATOR, method, &format!("/v1/tenants/{bad}/tokens"), None)
                .await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert_eq!(body["field"], "tenant");
        }
        let (status, body) = api
            .call(
                OPERATOR,
                M::DELETE,
                &format!("/v1/tenants/{bad}/tokens/0123456789abcdef"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = api
        .call(
            OPERATOR,
            M::POST,
            "/v1/endpoints",
            Some(json!({"id": "bad", "url": "http://127.0.0.1:9/x", "events": ["#"], "tenant": "ACME"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "tenant");
    // Environment names and variants are checked like the config file's.
    let long = "e".repeat(65);
    for (environments, field) in [
        (
            json!({"Snd": {"url": "http://127.0.0.1:9/s"}}),
            "environments.Snd",
        ),
        (
            json!({"s.b": {"url": "http://127.0.0.1:9/s"}}),
            "environments.s.b",
        ),
        (
            json!({ long.clone(): {"url": "http://127.0.0.1:9/s"} }),
            "environments.eee",
        ),
        (
            json!({"snd": {"url": "ftp://127.0.0.1/s"}}),
            "environments.snd.url",
        ),
        (json!({"snd": {"method": "PUT"}}), "environments.snd"),
        (json!({"snd": "http://127.0.0.1:9/s"}), "environments"),
    ] {
        let (status, body) = api
            .call(
                OPERATOR,
                M::POST,
                "/v1/endpoints",
                Some(json!({"id": "bad-env", "url": "http://127.0.0.1:9/x", "events": ["#"], "environments": environments})),
            )
            .await;
        assert_eq!(status, 400, "{environments}: {body}");
        let named = body["field"].as_str().unwrap_or_default();
        assert!(named.starts_with(field), "{environments}: {body}");
    }

    // Tokens that are not live: malformed, never minted, forged.
    let (real, _) = mint(&api, "acme").await;
    let forged = format!("{}{}", &real[..22], "0".repeat(64));
    for token in [
        "hptk_".to_owned(),
        "hptk_zz_zz".to_owned(),
        real.to_uppercase(),
        format!("{real}0"),
        format!("hptk_0123456789abcdef_{}", "a".repeat(64)),
        forged,
    ] {
        let (status, _) = api.call(&token, M::GET, "/v1/endpoints", None).await;
        assert_eq!(status, 401, "{token}");
    }
    let (status, _) = api.call(&real, M::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200);
}

async fn connect() -> lapin::Connection {
    lapin::Connection::connect(&tests::amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect")
}

/// Every record of the control stream, from its first, as raw bytes
/// (read up to a marker appended now).
async fn stream_bytes(config: &Config) -> Vec<u8> {
    let conn = connect().await;
    let topology = Topology::for_config(config);
    let token = format!("dump-{}", uuid::Uuid::new_v4().simple());
    control::append(
        &conn,
        &topology,
        &Command::Marker {
            token: token.clone(),
        },
    )
    .await
    .expect("marker");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(200, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(LongString::from("first")),
    );
    let mut consumer = ch
        .basic_consume(
            topology.control().as_str().into(),
            "dump".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume");
    let mut all = Vec::new();
    loop {
        let delivery = tokio::time::timeout(READ, consumer.next())
            .await
            .expect("the marker arrives")
            .expect("a record")
            .expect("delivery");
        all.extend_from_slice(&delivery.data);
        all.push(b'\n');
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        if String::from_utf8_lossy(&delivery.data).contains(&token) {
            return all;
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn tokens_survive_a_snapshot_and_the_stream_never_holds_a_plain_token_or_secret() {
    let scope = Scope::new().await;
    let config = config(&scope, "");
    track(&scope, &config, &["acme-hooks"]);
    let api = Api::start(&config).await;
    let (kept, _) = mint(&api, "acme").await;
    let (revoked, revoked_id) = mint(&api, "acme").await;
    let (status, created) = api
        .call(
            &kept,
            M::POST,
            "/v1/endpoints",
            Some(endpoint("acme-hooks")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let top_secret = created["secret"].as_str().expect("generated").to_owned();
    let (status, _) = api
        .call(
            OPERATOR,
            M::DELETE,
            &format!("/v1/tenants/acme/tokens/{revoked_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Compact: a fresh reader starts from the snapshot.
    let conn = connect().await;
    let topology = Topology::for_config(&config);
    let (_, stats) = control::compact(&conn, &topology, READ)
        .await
        .expect("compact");
    let snapshot = stats.wrote.expect("a snapshot");
    let (state, stats) = control::read_with_stats(&connect().await, &topology, READ)
        .await
        .expect("fresh read");
    assert_eq!(stats.snapshot.as_deref(), Some(snapshot.as_str()));
    assert_eq!(state.tokens.len(), 1, "the live token only");

    // A fresh API (its reader starts from the snapshot).
    drop(api);
    let fresh = Api::start(&config).await;
    let (status, list) = fresh.call(&kept, M::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["endpoints"][0]["id"], "acme-hooks");
    let (status, _) = fresh.call(&revoked, M::GET, "/v1/endpoints", None).await;
    assert_eq!(status, 401, "still revoked");

    // Every record, the snapshot's included: hashes and sealed values only.
    let bytes = stream_bytes(&config).await;
    assert!(contains(&bytes, "token_mint") && contains(&bytes, "token_revoke"));
    assert!(contains(&bytes, "snapshot_part"));
    for token in [&kept, &revoked] {
        let secret = token.rsplit('_').next().expect("secret part");
        assert!(!contains(&bytes, secret), "a token's secret in the stream");
    }
    let top = top_secret.strip_prefix("whsec_").expect("whsec_");
    let env = ENV_SECRET.strip_prefix("whsec_").expect("whsec_");
    for plain in [top, env, ENV_HEADER] {
        assert!(!contains(&bytes, plain), "{plain} in the stream");
    }
}

/// Whether `queue` exists (passive declare on its own channel).
async fn exists(scope: &Scope, queue: &str) -> bool {
    let ch = scope.connection.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .is_ok()
}

#[tokio::test]
async fn deleting_an_endpoint_removes_its_environments_queues_too() {
    let scope = Scope::new().await;
    let config = config(&scope, "");
    for id in ["multi", "multi~prd", "multi~snd"] {
        scope.track_endpoint(&config, id);
    }
    let dispatcher = Running::start(config.clone()).await;
    let api = Api::start(&config).await;
    let (status, body) = api
        .call(OPERATOR, M::POST, "/v1/endpoints", Some(endpoint("multi")))
        .await;
    assert_eq!(status, 201, "{body}");
    for id in ["multi", "multi~prd", "multi~snd"] {
        scope.wait_consumers(id, 1).await;
    }

    // An environment removed by an update: its queue is kept (nothing in it
    // is lost) and no longer consumed, then finished by a delete of its id.
    let (status, body) = api
        .call(
            OPERATOR,
            M::PATCH,
            "/v1/endpoints/multi",
            Some(json!({"environments": {"snd": null}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let snd = format!("{}.ep.multi~snd", scope.prefix);
    eventually(
        READ,
        "the removed environment's queue unconsumed",
        || async {
            let ch = scope.connection.create_channel().await.ok()?;
            let q = ch
                .queue_declare(
                    snd.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            (q.consumer_count() == 0).then_some(())
        },
    )
    .await;
    assert!(exists(&scope, &snd).await, "kept after the update");
    let (status, body) = api
        .call(
            OPERATOR,
            M::DELETE,
            "/v1/endpoints/multi~snd?force=true",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!exists(&scope, &snd).await);

    // A message waiting in an environment's queue (no dispatcher running):
    // the delete is refused without force, and with force it goes to the
    // dead-letter queue under the variant's id.
    dispatcher.stop().await.expect("stop");
    let prd = format!("{}.ep.multi~prd", scope.prefix);
    scope
        .channel
        .basic_publish(
            "".into(),
            prd.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"waiting",
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    eventually(READ, "the message in the prd queue", || async {
        (scope.depth(&prd).await == 1).then_some(())
    })
    .await;
    let (status, body) = api
        .call(OPERATOR, M::DELETE, "/v1/endpoints/multi", None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains(&prd),
        "{body}"
    );
    let (status, body) = api
        .call(OPERATOR, M::DELETE, "/v1/endpoints/multi?force=true", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queue_deleted"], true, "{body}");
    assert_eq!(body["dead_lettered"], 1, "{body}");
    for id in ["multi", "multi~prd"] {
        let queue = format!("{}.ep.{id}", scope.prefix);
        assert!(!exists(&scope, &queue).await, "{queue} deleted");
    }
    let dead = scope.drain(&format!("{}.dead", scope.prefix)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].delivery.data[..], b"waiting");
    let endpoint = dead[0]
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("hookpost-endpoint").cloned());
    assert_eq!(
        endpoint,
        Some(AMQPValue::LongString("multi~prd".into())),
        "dead-lettered under the variant's id"
    );
}
