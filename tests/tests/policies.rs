//! Endpoint policies end to end (real broker, real receivers): transforms,
//! rate limits, the circuit breaker, the hex signature scheme, per-endpoint
//! retry rules and `on_exhausted = "drop"`.

use common::Event;
use producer::Publisher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, header_str, publish};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn publish_data(publisher: &Publisher, event_type: &str, data: serde_json::Value) -> String {
    let event = Event::new(event_type, data).expect("valid");
    publisher.publish(&event).await.expect("published");
    event.id
}

async fn wait_metric(dispatcher: &Running, series: &str, want: f64) {
    eventually(WAIT, series, || async {
        (dispatcher.metric(series).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn transforms_add_remove_rename_filter_and_sample() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    // Keeps order.* but not order.test, keeps orders over 100 or of even i
    // (a deterministic sample), removes the e-mail, adds and renames fields.
    let program = r#"
        select(.type != "order.test")
        | select(.data.total > 100 or (.data.i % 2 == 0))
        | del(.data.email)
        | .data.source = "shop"
        | .data.amount = .data.total | del(.data.total)
    "#;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "shop",
            &receiver.url,
            &["order.*"],
            &format!("transform = '''{program}'''")
        )
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let kept_big = publish_data(
        &publisher,
        "order.created",
        serde_json::json!({"i": 1, "total": 500, "email": "a@example.com"}),
    )
    .await;
    let dropped_small_odd = publish_data(
        &publisher,
        "order.created",
        serde_json::json!({"i": 3, "total": 5, "email": "b@example.com"}),
    )
    .await;
    let kept_even = publish_data(
        &publisher,
        "order.paid",
        serde_json::json!({"i": 4, "total": 5, "email": "c@example.com"}),
    )
    .await;
    let dropped_type = publish_data(
        &publisher,
        "order.test",
        serde_json::json!({"i": 6, "total": 900}),
    )
    .await;

    receiver
        .wait_ids(&[kept_big.clone(), kept_even.clone()], WAIT)
        .await;
    wait_metric(
        &dispatcher,
        "hookpost_deliveries_total{endpoint=\"shop\",outcome=\"filtered\"}",
        2.0,
    )
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 2, "only the kept events are sent");
    let big = got
        .iter()
        .find(|r| r.header("webhook-id").as_deref() == Some(kept_big.as_str()))
        .expect("big order sent");
    let body: serde_json::Value = serde_json::from_slice(&big.body).expect("json");
    assert_eq!(
        body["data"],
        serde_json::json!({"i": 1, "amount": 500, "source": "shop"}),
        "email removed, total renamed, source added"
    );
    assert_eq!(body["id"], kept_big.as_str());
    assert_eq!(body["type"], "order.created");
    let ids = receiver.ids();
    assert!(!ids.contains(&dropped_small_odd) && !ids.contains(&dropped_type));
    assert_eq!(scope.depth(&format!("{}.ep.shop", scope.prefix)).await, 0);
    assert_eq!(scope.depth(&format!("{}.dead", scope.prefix)).await, 0);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn transform_errors_are_dead_lettered_with_the_error() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let program = r#"if .data.bad then error("refusing event \(.id)") else .data.ok = true end"#;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "t",
            &receiver.url,
            &["#"],
            &format!("transform = '''{program}'''")
        )
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let bad = publish_data(&publisher, "a.b", serde_json::json!({"bad": true})).await;
    let good = publish_data(&publisher, "a.b", serde_json::json!({"bad": false})).await;
    receiver.wait_ids(std::slice::from_ref(&good), WAIT).await;
    let dead = scope.take(&format!("{}.dead", scope.prefix), 1).await;
    assert_eq!(
        header_str(&dead[0], "hookpost-reason").as_deref(),
        Some("transform_error")
    );
    let error = header_str(&dead[0], "hookpost-last-error").expect("error text");
    assert!(error.contains(&format!("refusing event {bad}")), "{error}");
    let original = Event::from_slice(&dead[0].delivery.data).expect("original envelope kept");
    assert_eq!(original.id, bad);
    let sent = receiver.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].events()[0]["data"]["ok"], true);
    wait_metric(
        &dispatcher,
        "hookpost_dead_letters_total{endpoint=\"t\",reason=\"transform_error\"}",
        1.0,
    )
    .await;
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn rate_limited_endpoint_is_paced_without_slowing_another() {
    let scope = Scope::new().await;
    let (slow, fast) = (Receiver::start().await, Receiver::start().await);
    let config = scope.config(&format!(
        "{FAST}{}{}",
        endpoint(
            "slow",
            &slow.url,
            &["tick"],
            "rate_limit_per_s = 10\nrate_limit_burst = 1"
        ),
        endpoint("fast", &fast.url, &["tick"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "tick", 30).await;
    fast.wait_ids(&ids, WAIT).await;
    slow.wait_ids(&ids, WAIT).await;
    let slow_got = slow.received();
    let fast_got = fast.received();
    let span = slow_got[slow_got.len() - 1].at - slow_got[0].at;
    // 29 gaps at 10/s: 2.9 s at least (token bucket, burst 1).
    assert!(
        span >= Duration::from_millis(2800),
        "30 requests at 10/s took only {span:?}"
    );
    assert!(span < Duration::from_secs(15), "far too slow: {span:?}");
    assert!(
        fast_got[fast_got.len() - 1].at < slow_got[19].at,
        "the unlimited endpoint finished before the limited one was two-thirds done"
    );
    // Waiting for a token costs no attempt.
    assert!(
        slow_got
            .iter()
            .all(|r| r.header("hookpost-attempt").as_deref() == Some("1"))
    );
    assert_eq!(
        dispatcher
            .metric("hookpost_deliveries_total{endpoint=\"slow\",outcome=\"retried\"}")
            .await,
        0.0
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn breaker_opens_suspends_probes_and_recovers() {
    let scope = Scope::new().await;
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let receiver = Receiver::with(Arc::new(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Reply::Status(503, vec![])
        } else {
            Reply::Status(200, vec![])
        }
    }))
    .await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "flaky",
            &receiver.url,
            &["#"],
            "max_retries = 20\nmax_in_flight = 1\nbreaker_failures = 3\nbreaker_cooldown_ms = 1500"
        )
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "x.y", 10).await;
    let state = "hookpost_circuit_breaker_state{endpoint=\"flaky\"}";

    // Three failures open it; nothing is sent while it is open.
    wait_metric(&dispatcher, state, 1.0).await;
    let opened = receiver.received();
    assert_eq!(opened.len(), 3, "exactly the failures that tripped it");
    // The probe after the cooldown fails too: open again.
    let probed = receiver.wait_requests(4, WAIT).await;
    let gap = probed[3].at - probed[2].at;
    assert!(
        gap >= Duration::from_millis(1400),
        "no request while open (cooldown 1.5 s), got one after {gap:?}"
    );
    wait_metric(&dispatcher, state, 1.0).await;
    // The endpoint recovers: the next probe succeeds and delivery resumes.
    failing.store(false, Ordering::SeqCst);
    eventually(WAIT, "all delivered", || async {
        let delivered: std::collections::HashSet<String> =
            receiver.delivered_ids().into_iter().collect();
        ids.iter().all(|id| delivered.contains(id)).then_some(())
    })
    .await;
    wait_metric(&dispatcher, state, 0.0).await;
    let got = receiver.received();
    let failures = got.iter().filter(|r| r.answered == Some(503)).count();
    assert_eq!(failures, 4, "3 trips + 1 failed probe: {got:?}");
    let probe_ok = got
        .iter()
        .position(|r| r.answered == Some(200))
        .expect("a success");
    assert!(
        got[probe_ok].at - got[3].at >= Duration::from_millis(1400),
        "the successful probe waited for the cooldown"
    );
    // Events that never failed were held back untouched: first attempt.
    let failed_ids: std::collections::HashSet<String> =
        got[..4].iter().flat_map(|r| r.ids()).collect();
    for r in got.iter().filter(|r| r.answered == Some(200)) {
        let id = &r.ids()[0];
        if !failed_ids.contains(id) {
            assert_eq!(r.header("hookpost-attempt").as_deref(), Some("1"), "{id}");
        }
    }
    assert_eq!(scope.depth(&format!("{}.dead", scope.prefix)).await, 0);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn hex_signatures_verify_with_an_independent_hmac() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let secret = "saas-style-shared-secret-0123";
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "hex",
            &receiver.url,
            &["#"],
            &format!("signature = \"hex\"\nsecrets = [\"{secret}\"]")
        )
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "a.b", 1).await;
    let got = receiver.wait_requests(1, WAIT).await;
    let request = &got[0];
    let timestamp = request.header("x-webhook-timestamp").expect("timestamp");
    let signature = request.header("x-webhook-signature").expect("signature");
    assert!(request.header("webhook-signature").is_none());
    assert_eq!(
        request.header("webhook-id").as_deref(),
        Some(ids[0].as_str())
    );
    // Python's hmac module, as a receiver written in Python would check it.
    let script = "import hmac,hashlib,sys\nkey,ts=sys.argv[1],sys.argv[2]\nbody=sys.stdin.buffer.read()\nprint(hmac.new(key.encode(),ts.encode()+b'.'+body,hashlib.sha256).hexdigest())";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, secret, &timestamp])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&request.body)
            .expect("write body");
    }
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), signature);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn retry_rules_and_on_exhausted_drop_are_per_endpoint() {
    let scope = Scope::new().await;
    let conflict = Receiver::with(Arc::new(|_, _| Reply::Status(409, vec![]))).await;
    let unavailable = Receiver::with(Arc::new(|_, _| Reply::Status(503, vec![]))).await;
    let broken = Receiver::with(Arc::new(|_, _| Reply::Status(500, vec![]))).await;
    let config = scope.config(&format!(
        "{FAST}{}{}{}",
        endpoint(
            "conflict",
            &conflict.url,
            &["a"],
            "max_retries = 1\nretry_on_status = { add = [409] }"
        ),
        endpoint(
            "unavailable",
            &unavailable.url,
            &["b"],
            "retry_on_status = { remove = [503] }"
        ),
        endpoint(
            "broken",
            &broken.url,
            &["c"],
            "max_retries = 2\non_exhausted = \"drop\""
        ),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let a = publish(&publisher, "a", 1).await;
    let b = publish(&publisher, "b", 1).await;
    publish(&publisher, "c", 1).await;

    let dead = scope.take(&format!("{}.dead", scope.prefix), 2).await;
    let by_endpoint = |name: &str| {
        dead.iter()
            .find(|m| header_str(m, "hookpost-endpoint").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} dead-lettered"))
    };
    let c = by_endpoint("conflict");
    assert_eq!(
        header_str(c, "hookpost-reason").as_deref(),
        Some("exhausted")
    );
    assert_eq!(header_str(c, "hookpost-attempt").as_deref(), Some("2"));
    assert_eq!(
        Event::from_slice(&c.delivery.data).expect("envelope").id,
        a[0]
    );
    let u = by_endpoint("unavailable");
    assert_eq!(
        header_str(u, "hookpost-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(header_str(u, "hookpost-attempt").as_deref(), Some("1"));
    assert_eq!(
        Event::from_slice(&u.delivery.data).expect("envelope").id,
        b[0]
    );
    assert_eq!(conflict.received().len(), 2, "409 retried once");
    assert_eq!(unavailable.received().len(), 1, "503 not retried");

    wait_metric(
        &dispatcher,
        "hookpost_deliveries_total{endpoint=\"broken\",outcome=\"dropped\"}",
        1.0,
    )
    .await;
    assert_eq!(broken.received().len(), 3, "first attempt and two retries");
    assert_eq!(scope.depth(&format!("{}.ep.broken", scope.prefix)).await, 0);
    assert_eq!(
        scope.depth(&format!("{}.dead", scope.prefix)).await,
        0,
        "the dropped delivery was not dead-lettered"
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn operator_pause_and_resume_reach_every_dispatcher() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("held", &receiver.url, &["#"], "")
    ));
    let first = Running::start(config.clone()).await;
    let second = Running::start(config.clone()).await;
    scope.wait_consumers("held", 2).await;
    let admin = dispatcher::admin::Admin::connect(config.clone())
        .await
        .expect("admin connects");
    admin.hold("held", true).await.expect("paused");
    let paused = "hookpost_endpoint_paused{endpoint=\"held\"}";
    wait_metric(&first, paused, 1.0).await;
    wait_metric(&second, paused, 1.0).await;
    assert!(admin.holds().await.expect("holds").holds.contains("held"));

    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "a.b", 20).await;
    let queue = format!("{}.ep.held", scope.prefix);
    eventually(WAIT, "20 events waiting in the held queue", || async {
        (scope.depth(&queue).await == 20).then_some(())
    })
    .await;
    assert!(receiver.received().is_empty(), "nothing sent while paused");

    // A dispatcher started while the pause stands replays it and holds too.
    second.stop().await.expect("clean stop");
    let third = Running::start(config.clone()).await;
    wait_metric(&third, paused, 1.0).await;
    assert_eq!(scope.depth(&queue).await, 20);
    assert!(receiver.received().is_empty());

    admin.hold("held", false).await.expect("resumed");
    receiver.wait_ids(&ids, WAIT).await;
    wait_metric(&first, paused, 0.0).await;
    wait_metric(&third, paused, 0.0).await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.header("hookpost-attempt").as_deref() == Some("1")),
        "waiting cost no attempt"
    );
    assert!(!admin.holds().await.expect("holds").holds.contains("held"));
    admin.close().await;
    first.stop().await.expect("clean stop");
    third.stop().await.expect("clean stop");
}
