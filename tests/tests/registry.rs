//! The endpoint management API end to end: real broker, real dispatchers,
//! real receivers. Endpoints created, changed, rotated and deleted over HTTP
//! take effect on running dispatchers without a restart, and survive restarts.

use common::Config;
use producer::Publisher;
use serde_json::{Value, json};
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, header_str, publish};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "management-token-0123456789";
const INGEST_TOKEN: &str = "ingest-token-0123456789";
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The management API's `/v1/endpoints`, called with the operator token.
struct Api {
    api: tests::api::Api,
    base: String,
}

impl Api {
    async fn start(config: &Config) -> Self {
        let api = tests::api::Api::start(config).await;
        let base = format!("{}/v1/endpoints", api.root);
        Self { api, base }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api
            .call(TOKEN, method, &format!("/v1/endpoints{path}"), body)
            .await
    }
}

fn config(scope: &Scope, extra: &str) -> Config {
    scope.config(&format!(
        "{FAST}[ingest]\ntokens = [\"{INGEST_TOKEN}\"]\n[api]\ntokens = [\"{TOKEN}\"]\n[registry]\nsecrets_key = \"{KEY}\"\nsecret_overlap_ms = 3600000\n{extra}"
    ))
}

fn verify(secret: &str, request: &tests::receiver::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test]
async fn endpoints_created_over_http_reach_running_dispatchers_and_survive_restarts() {
    let scope = Scope::new().await;
    let (first_rx, second_rx) = (Receiver::start().await, Receiver::start().await);
    let config = config(&scope, "");
    scope.track_endpoint(&config, "partner");
    let one = Running::start(config.clone()).await;
    let two = Running::start(config.clone()).await;
    let api = Api::start(&config).await;

    // Create: a secret is generated and shown once.
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "",
            Some(json!({
                "id": "partner", "url": first_rx.url, "events": ["order.*"],
                "headers": {"Authorization": "Bearer partner-token"},
                "name": "Partner", "description": "test partner", "metadata": {"team": "growth"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"]
        .as_str()
        .expect("generated secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["secrets"][0]["value"], "***");
    assert_eq!(created["version"], 1);
    scope.wait_consumers("partner", 2).await;
    for dispatcher in [&one, &two] {
        eventually(
            WAIT,
            "each dispatcher consuming the new endpoint",
            || async {
                (dispatcher
                    .metric("hookpost_consuming{endpoint=\"partner\"}")
                    .await
                    == 1.0)
                    .then_some(())
            },
        )
        .await;
    }

    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "order.created", 4).await;
    first_rx.wait_ids(&ids, WAIT).await;
    assert!(first_rx.received().iter().all(|r| verify(&secret, r)));

    // Update (PATCH): new URL and patterns, live.
    let (status, patched) = api
        .call(
            reqwest::Method::PATCH,
            "/partner",
            // Header values come back from GET as "***": sending that keeps them.
            Some(
                json!({"url": second_rx.url, "events": ["invoice.*"], "metadata": {"tier": "gold"},
                        "headers": {"Authorization": "***", "X-Team": "growth"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["version"], 2);
    assert_eq!(
        patched["metadata"],
        json!({"team": "growth", "tier": "gold"})
    );
    let invoices = eventually(WAIT, "the new pattern and URL in effect", || async {
        let ids = publish(&publisher, "invoice.paid", 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        second_rx
            .ids()
            .iter()
            .any(|i| ids.contains(i))
            .then_some(ids)
    })
    .await;
    second_rx.wait_ids(&invoices, WAIT).await;
    let last = second_rx.received().pop().expect("a request");
    assert_eq!(
        last.header("authorization").as_deref(),
        Some("Bearer partner-token")
    );
    assert_eq!(last.header("x-team").as_deref(), Some("growth"));
    assert_eq!(
        patched["headers"],
        json!({"Authorization": "***", "X-Team": "***"})
    );
    let orders_before = first_rx.ids().len();
    let unrouted = publish(&publisher, "order.paid", 1).await;
    let parked = scope.take(&format!("{}.unrouted", scope.prefix), 1).await;
    assert!(
        parked
            .iter()
            .any(|m| String::from_utf8_lossy(&m.delivery.data).contains(&unrouted[0])),
        "order.* is no longer bound"
    );
    assert_eq!(first_rx.ids().len(), orders_before);

    // Rotate: the new secret is returned once; both sign during the overlap.
    let (status, rotated) = api
        .call(reqwest::Method::POST, "/partner/secret/rotate", None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new_secret, secret);
    let signed = eventually(WAIT, "both signatures on a delivery", || async {
        let ids = publish(&publisher, "invoice.paid", 1).await;
        second_rx.wait_ids(&ids, WAIT).await;
        let got = second_rx.received();
        let request = got.iter().rev().find(|r| r.ids() == ids)?.clone();
        let header = request.header("webhook-signature")?;
        (header.split(' ').count() == 2).then_some(request)
    })
    .await;
    assert!(verify(&secret, &signed), "the old secret still verifies");
    assert!(verify(&new_secret, &signed), "the new secret verifies");

    // List and fetch never show secrets.
    let (status, list) = api.call(reqwest::Method::GET, "", None).await;
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(!text.contains(&secret) && !text.contains(&new_secret));
    assert_eq!(list["endpoints"][0]["id"], "partner");
    let (status, one_view) = api.call(reqwest::Method::GET, "/partner", None).await;
    assert_eq!(status, 200);
    assert_eq!(one_view["url"], second_rx.url);
    assert_eq!(one_view["secrets"].as_array().map(Vec::len), Some(2));

    // Restart everything: the registry is in RabbitMQ.
    drop(api);
    one.stop().await.expect("stop");
    two.stop().await.expect("stop");
    let three = Running::start(config.clone()).await;
    let api = Api::start(&config).await;
    let after = publish(&publisher, "invoice.due", 1).await;
    second_rx.wait_ids(&after, WAIT).await;
    let (status, again) = api.call(reqwest::Method::GET, "/partner", None).await;
    assert_eq!(status, 200);
    assert_eq!(again["version"], 3);
    assert_eq!(again["name"], "Partner");

    // Delete: the queue goes once empty; the endpoint is gone everywhere.
    let (status, deleted) = api.call(reqwest::Method::DELETE, "/partner", None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["queue_deleted"], true);
    let (status, _) = api.call(reqwest::Method::GET, "/partner", None).await;
    assert_eq!(status, 404);
    let gone = publish(&publisher, "invoice.paid", 1).await;
    let parked = scope.take(&format!("{}.unrouted", scope.prefix), 1).await;
    assert!(String::from_utf8_lossy(&parked[0].delivery.data).contains(&gone[0]));
    three.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_input_and_bad_tokens_are_refused_with_the_field_named() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(std::sync::Arc::new(|_, _| Reply::Status(503, vec![]))).await;
    let config = config(
        &scope,
        &format!(
            "[[endpoints]]\nid = \"filed\"\nurl = \"{}\"\nevents = [\"x\"]\n",
            receiver.url
        ),
    );
    scope.track_endpoint(&config, "valid");
    let api = Api::start(&config).await;
    let http = tests::http_client();

    // Auth: none, wrong, and an ingest token.
    for token in [None, Some("wrong-token-0123456789"), Some(INGEST_TOKEN)] {
        let mut req = http.get(&api.base);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 401, "{token:?}");
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
    }

    let base = json!({"id": "valid", "url": receiver.url, "events": ["a.*"]});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"id": "Bad Id"}), "id"),
        (json!({"url": "ftp://x.example.com/"}), "url"),
        (json!({"url": 5}), "url"),
        // Non-global literal addresses (decided, never connected to).
        (json!({"url": "http://169.254.169.254/latest"}), "url"),
        (json!({"url": "http://[64:ff9b::a9fe:a9fe]/"}), "url"),
        (json!({"url": "http://10.0.0.1/"}), "url"),
        (json!({"events": []}), "events"),
        (json!({"events": ["a..b"]}), "events[0]"),
        (json!({"method": "DELETE"}), "method"),
        (
            json!({"headers": {"webhook-id": "x"}}),
            "headers.webhook-id",
        ),
        (json!({"secrets": ["not-a-secret"]}), "secrets[0]"),
        (json!({"timeout_ms": 0}), "timeout_ms"),
        (json!({"max_retries": "many"}), "max_retries"),
        (json!({"max_retries": 1000}), "max_retries"),
        (json!({"retry_delay_ms": -1}), "retry_delay_ms"),
        (
            json!({"max_retry_delay_ms": 1, "retry_delay_ms": 100}),
            "max_retry_delay_ms",
        ),
        (json!({"batch_size": 100000}), "batch_size"),
        (json!({"batch_interval_ms": 99999999}), "batch_interval_ms"),
        (json!({"max_in_flight": 0}), "max_in_flight"),
        (json!({"on_exhausted": "explode"}), "on_exhausted"),
        (json!({"breaker_failures": -1}), "breaker_failures"),
        (
            json!({"breaker_cooldown_ms": 99999999}),
            "breaker_cooldown_ms",
        ),
        (
            json!({"retry_on_status": {"add": [200]}}),
            "retry_on_status.add",
        ),
        (json!({"rate_limit_per_s": 0}), "rate_limit_per_s"),
        (json!({"rate_limit_burst": 5}), "rate_limit_burst"),
        (json!({"signature": "md5"}), "signature"),
        (json!({"transform": ".data |"}), "transform"),
        (json!({"name": 5}), "name"),
        (json!({"description": ["x"]}), "description"),
        (json!({"metadata": "x"}), "metadata"),
        (json!({"colour": "red"}), "colour"),
    ];
    for (patch, field) in cases {
        let mut body = base.clone();
        tests_merge(&mut body, &patch);
        let (status, answer) = api.call(reqwest::Method::POST, "", Some(body)).await;
        assert_eq!(status, 400, "{patch}: {answer}");
        assert_eq!(answer["field"], field, "{patch}: {answer}");
        assert!(
            !answer.to_string().contains("not-a-secret"),
            "secret values never echoed: {answer}"
        );
    }
    let missing = json!({"id": "valid", "events": ["a"]});
    let (status, answer) = api.call(reqwest::Method::POST, "", Some(missing)).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("url")),
        "{answer}"
    );
    let (status, _) = api.call(reqwest::Method::POST, "", Some(json!([1]))).await;
    assert_eq!(status, 400);
    let resp = http
        .post(&api.base)
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = http
        .post(&api.base)
        .bearer_auth(TOKEN)
        .body(vec![b' '; producer::api::MAX_BODY_BYTES + 10])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 413);

    // Conflicts, unknown ids, read-only file endpoints, methods.
    let (status, _) = api
        .call(reqwest::Method::POST, "", Some(base.clone()))
        .await;
    assert_eq!(status, 201);
    let (status, _) = api
        .call(reqwest::Method::POST, "", Some(base.clone()))
        .await;
    assert_eq!(status, 409, "the id is taken");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "",
            Some(json!({"id": "filed", "url": receiver.url, "events": ["x"]})),
        )
        .await;
    assert_eq!(status, 409, "the file's endpoint is read-only");
    let (status, filed) = api.call(reqwest::Method::GET, "/filed", None).await;
    assert_eq!((status, filed["read_only"].as_bool()), (200, Some(true)));
    let (status, _) = api
        .call(
            reqwest::Method::PATCH,
            "/filed",
            Some(json!({"events": ["y"]})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = api.call(reqwest::Method::DELETE, "/nosuch", None).await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            reqwest::Method::PATCH,
            "/valid",
            Some(json!({"id": "other"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = api.call(reqwest::Method::PUT, "", Some(base.clone())).await;
    assert_eq!(status, 405);
    let (status, _) = api
        .call(reqwest::Method::GET, "/valid/secret/rotate", None)
        .await;
    assert_eq!(status, 405);

    // A delete with messages waiting needs force; force dead-letters them.
    let publisher = Publisher::connect(&config).await.expect("connect");
    // No dispatcher runs: declare the queue as one would, then publish.
    let declared = Running::start(config.clone()).await;
    scope.wait_consumers("valid", 1).await;
    declared.stop().await.expect("stop");
    publish(&publisher, "a.b", 3).await;
    let queue = format!("{}.ep.valid", scope.prefix);
    eventually(WAIT, "3 waiting", || async {
        (scope.depth(&queue).await == 3).then_some(())
    })
    .await;
    let (status, refused) = api.call(reqwest::Method::DELETE, "/valid", None).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("3 messages"),
        "{refused}"
    );
    let (status, forced) = api
        .call(reqwest::Method::DELETE, "/valid?force=true", None)
        .await;
    assert_eq!(status, 200, "{forced}");
    assert_eq!(forced["dead_lettered"], 3);
    let dead = scope.take(&format!("{}.dead", scope.prefix), 3).await;
    assert!(
        dead.iter()
            .all(|m| header_str(m, "hookpost-reason").as_deref() == Some("endpoint_deleted"))
    );
    // The same headers as every other dead letter (what `dlq list` reads).
    for m in &dead {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        for name in common::contract::header::DEAD_LETTER.iter().filter(|n| {
            // The endpoint has no tenant or environment: no header for them.
            ![
                "x-death",
                common::contract::header::TENANT,
                common::contract::header::ENVIRONMENT,
            ]
            .contains(*n)
        }) {
            assert!(headers.inner().contains_key(*name), "{name} missing");
        }
        let letter = common::contract::DeadLetter::read(&headers);
        assert_eq!(
            (letter.endpoint.as_str(), letter.attempt, letter.last_status),
            ("valid", 1, None)
        );
    }
}

fn tests_merge(target: &mut Value, patch: &Value) {
    common::registry::merge_patch(target, patch);
}

#[tokio::test]
async fn concurrent_writers_on_several_connections_all_land() {
    // The API, dispatchers and hookpost-admin write to the control stream
    // from their own connections.
    let scope = Scope::new().await;
    let config = config(&scope, "");
    let topology = common::topology::Topology::new(&config.amqp);
    let url = tests::amqp_url();
    let conns: Vec<lapin::Connection> = futures_util::future::join_all(
        (0..4).map(|_| lapin::Connection::connect(&url, lapin::ConnectionProperties::default())),
    )
    .await
    .into_iter()
    .map(|c| c.expect("connect"))
    .collect();
    common::registry::control::ensure(&conns[0], &topology)
        .await
        .expect("created once");
    let results = futures_util::future::join_all(conns.iter().enumerate().map(|(i, conn)| {
        let topology = topology.clone();
        async move {
            common::registry::control::append(
                conn,
                &topology,
                &common::registry::control::Command::hold(&format!("e{i}"), true),
            )
            .await
        }
    }))
    .await;
    for r in results {
        r.expect("every write lands");
    }
    let state = common::registry::control::read(&conns[1], &topology, Duration::from_secs(10))
        .await
        .expect("read");
    assert_eq!(state.holds.len(), 4);
}

#[tokio::test]
async fn an_endpoint_a_dispatcher_cannot_load_keeps_its_events_queued() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let good = config(&scope, "");
    scope.track_endpoint(&good, "keyed");
    let api = Api::start(&good).await;
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "",
            Some(json!({"id": "keyed", "url": receiver.url, "events": ["k.*"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let first = Running::start(good.clone()).await;
    scope.wait_consumers("keyed", 1).await;
    first.stop().await.expect("stop");

    // Another key: this dispatcher cannot open the endpoint's secret.
    let other_key = scope.config(&format!(
        "{FAST}[registry]\nsecrets_key = \"HwAdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=\"\n"
    ));
    let wrong = Running::start(other_key.clone()).await;
    let publisher = Publisher::connect(&good).await.expect("connect");
    let ids = publish(&publisher, "k.x", 2).await;
    let queue = format!("{}.ep.keyed", scope.prefix);
    eventually(
        WAIT,
        "the events waiting in the endpoint's queue",
        || async { (scope.depth(&queue).await == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        scope.depth(&format!("{}.unrouted", scope.prefix)).await,
        0,
        "still bound"
    );
    wrong.stop().await.expect("stop");

    // A dispatcher with the right key delivers them.
    let right = Running::start(good.clone()).await;
    receiver.wait_ids(&ids, WAIT).await;
    right.stop().await.expect("stop");
}

#[tokio::test]
async fn concurrent_updates_never_silently_overwrite_each_other() {
    let scope = Scope::new().await;
    let config = config(&scope, "");
    scope.track_endpoint(&config, "race");
    let url = tests::amqp_url();
    let (a, b) = (
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("connect"),
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("connect"),
    );
    let (ra, rb) = (
        common::registry::Registry::new(&a, &config),
        common::registry::Registry::new(&b, &config),
    );
    let body = |v: Value| v.as_object().expect("object").clone();
    ra.create(body(
        json!({"id": "race", "url": "http://127.0.0.1:9/", "events": ["r"]}),
    ))
    .await
    .expect("created");
    let mode = common::registry::Mode::Merge;
    let (x, y) = tokio::join!(
        ra.update("race", body(json!({"description": "from a"})), mode),
        rb.update("race", body(json!({"description": "from b"})), mode),
    );
    let last = ra.get("race").await.expect("still there");
    match (&x, &y) {
        (Ok(_), Ok(_)) => assert_eq!(last.version, 3, "one after the other"),
        (Ok(w), Err(common::registry::OpError::Conflict(_)))
        | (Err(common::registry::OpError::Conflict(_)), Ok(w)) => {
            assert_eq!(&last, w, "the winner's change is the one stored");
            assert_eq!(last.version, 2);
        }
        other => panic!("unexpected outcome: {other:?}"),
    }
}

/// A create or a pattern change answered by the API is in effect for
/// routing at once: the API declares the endpoint's queue and bindings
/// before it answers, so events published right after the answer wait in
/// the queue even when no dispatcher runs yet.
#[tokio::test]
async fn events_published_right_after_a_create_or_change_wait_for_the_endpoint() {
    let scope = Scope::new().await;
    let rx = Receiver::start().await;
    let config = config(&scope, "");
    scope.track_endpoint(&config, "early");
    let api = Api::start(&config).await;
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "",
            Some(json!({"id": "early", "url": rx.url, "events": ["order.*"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let publisher = Publisher::connect(&config).await.expect("connect");
    let orders = publish(&publisher, "order.created", 5).await;
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            "/early",
            Some(json!({"events": ["invoice.*"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let invoices = publish(&publisher, "invoice.paid", 5).await;
    // Nothing consumed yet: all ten wait in the endpoint's queue.
    assert!(rx.ids().is_empty());
    let dispatcher = Running::start(config.clone()).await;
    let all: Vec<String> = orders.iter().chain(&invoices).cloned().collect();
    rx.wait_ids(&all, WAIT).await;
    let _ = dispatcher.stop().await;
    publisher.close().await;
}

/// Management API writes read the registry through the API's live follower
/// (`control::FollowerReads`): one marker appended, not a replay of the
/// stream. What such a read returns holds every change confirmed before it,
/// whoever wrote it; a read no follower answers falls back to a replay.
#[tokio::test]
async fn reads_answered_by_a_live_follower_hold_every_write_confirmed_before_them() {
    use common::registry::control::{self, FollowerReads, Holds};
    let scope = Scope::new().await;
    let config = config(&scope, "");
    let url = tests::amqp_url();
    let connect = || async {
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("connect")
    };
    let (a, b) = (std::sync::Arc::new(connect().await), connect().await);
    let topology = common::topology::Topology::for_config(&config);
    let reads = FollowerReads::default();
    let (tx, mut followed) = tokio::sync::watch::channel(Holds::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let follower = tokio::spawn({
        let (a, topology, reads, stop) = (a.clone(), topology.clone(), reads.clone(), stop.clone());
        async move {
            control::keep_following(
                || {
                    let a = a.clone();
                    async move { Some(a) }
                },
                &topology,
                tx,
                stop,
                Some(reads),
                || {},
            )
            .await;
        }
    });
    followed.changed().await.expect("the follower caught up");
    let body = |v: Value| v.as_object().expect("object").clone();
    let through_follower =
        common::registry::Registry::new(&a, &config).with_follower(reads.clone());
    let other_writer = common::registry::Registry::new(&b, &config);
    for n in 0..10 {
        let id = format!("f{n}");
        scope.track_endpoint(&config, &id);
        // Another writer's change, confirmed: the next read holds it.
        other_writer
            .create(body(
                json!({"id": id, "url": "http://127.0.0.1:9/", "events": ["r"]}),
            ))
            .await
            .expect("created");
        let state = reads
            .read(&a, &topology, Duration::from_secs(5))
            .await
            .expect("the follower answers");
        assert_eq!(state.endpoints[&id].version, 1, "{id}");
        // A write through the follower, seen by a reader that replays.
        let updated = through_follower
            .update(
                &id,
                body(json!({"description": "changed"})),
                common::registry::Mode::Merge,
            )
            .await
            .expect("updated");
        assert_eq!(updated.version, 2);
        assert_eq!(other_writer.get(&id).await.expect("there").version, 2);
        assert_eq!(through_follower.get(&id).await.expect("there").version, 2);
    }
    // Two writers through followers at once: one after the other, or one
    // loses with a conflict; never a silent overwrite.
    let second = common::registry::Registry::new(&b, &config).with_follower(reads.clone());
    let (x, y) = tokio::join!(
        through_follower.update(
            "f0",
            body(json!({"description": "from a"})),
            common::registry::Mode::Merge
        ),
        second.update(
            "f0",
            body(json!({"description": "from b"})),
            common::registry::Mode::Merge
        ),
    );
    let last = other_writer.get("f0").await.expect("still there");
    match (&x, &y) {
        (Ok(_), Ok(_)) => assert_eq!(last.version, 4, "one after the other"),
        (Ok(w), Err(common::registry::OpError::Conflict(_)))
        | (Err(common::registry::OpError::Conflict(_)), Ok(w)) => {
            assert_eq!(&last, w, "the winner's change is the one stored");
            assert_eq!(last.version, 3);
        }
        other => panic!("unexpected outcome: {other:?}"),
    }
    // No follower answers these: the read says so, and the registry replays.
    let unserved = FollowerReads::default();
    assert!(
        unserved
            .read(&a, &topology, Duration::from_millis(300))
            .await
            .is_none()
    );
    let fallback = common::registry::Registry::new(&a, &config).with_follower(unserved);
    assert_eq!(
        fallback.get("f9").await.expect("found by a replay").version,
        2
    );
    stop.cancel();
    follower.await.expect("the follower ends");
}

/// The management API opens a few channels per write on one connection.
/// lapin keeps the error of a channel the broker closed (a 404 to a passive
/// declare) under its id, and a channel opened on that id once the ids
/// wrap (at `channel_max`) failed with it: one API write in about 300
/// answered 503 "no queue '<prefix>.control'". Every channel is opened
/// through `open_channel`, which skips such ids.
#[tokio::test]
async fn channels_keep_opening_after_the_ids_wrap_past_a_refused_one() {
    let scope = Scope::new().await;
    let conn =
        lapin::Connection::connect(&tests::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let missing = format!("{}.never-declared", scope.prefix);
    assert!(
        !common::amqp::queue_exists(&conn, &missing)
            .await
            .expect("a 404 is an answer"),
        "the broker refused the passive declare and closed its channel"
    );
    let max = u32::from(conn.configuration().channel_max());
    assert!(max > 0, "the broker set a channel_max");
    // Twice round every id: each one, the refused channel's included, opens.
    for i in 0..2 * max + 2 {
        let ch = common::amqp::open_channel(&conn)
            .await
            .unwrap_or_else(|e| panic!("channel {i} of {}: {e}", 2 * max + 2));
        let _ = ch.close(200, "done".into()).await;
    }
    assert!(
        !common::amqp::queue_exists(&conn, &missing)
            .await
            .expect("the connection still answers"),
    );
    let _ = conn.close(200, "done".into()).await;
}

/// An API process declares the installation's base topology (exchanges,
/// dead-letter and unrouted queues) once, not on every write. When it is
/// gone since (deleted here), the next create declares it all again, so
/// events published once the create is answered still wait in the new
/// endpoint's queue.
#[tokio::test]
async fn a_create_after_the_base_topology_went_away_declares_it_again() {
    let scope = Scope::new().await;
    let config = config(&scope, "");
    scope.track_endpoint(&config, "first");
    scope.track_endpoint(&config, "second");
    let api = Api::start(&config).await;
    let create = |id: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api
                .call(
                    reqwest::Method::POST,
                    "",
                    Some(json!({"id": id, "url": "http://127.0.0.1:9/hook", "events": [format!("{id}.made")]})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    create("first").await;
    let events = format!("{}.events", scope.prefix);
    scope
        .channel
        .exchange_delete(
            events.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .expect("events exchange deleted");
    create("second").await;
    let publisher = Publisher::connect(&config).await.expect("publisher");
    publish(&publisher, "second.made", 3).await;
    let queue = format!("{}.ep.second", scope.prefix);
    eventually(WAIT, "the events in the new endpoint's queue", || async {
        (scope.depth(&queue).await == 3).then_some(())
    })
    .await;
    publisher.close().await;
}
