//! The dispatcher end to end: real broker, real HTTP receivers on loopback.

use common::Event;
use producer::Publisher;
use std::sync::Arc;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, header_str, publish};
use tests::proxy::{Proxy, broker_addr};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, amqp_url, eventually};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn delivers_signed_events_that_standardwebhooks_verifies() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "crm",
            &receiver.url,
            &["order.*"],
            &format!("secrets = [\"{SECRET}\"]\nheaders = {{ Authorization = \"Bearer abc\" }}")
        )
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "order.created", 1).await;

    let got = receiver.wait_requests(1, WAIT).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.header("webhook-id").as_deref(),
        Some(ids[0].as_str())
    );
    assert_eq!(request.header("hookpost-attempt").as_deref(), Some("1"));
    assert_eq!(
        request.header("authorization").as_deref(),
        Some("Bearer abc")
    );
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        request
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("hookpost/"))
    );
    let envelope = Event::from_slice(&request.body).expect("the body is the envelope");
    assert_eq!(envelope.id, ids[0]);
    assert_eq!(envelope.data["i"], 0);
    standardwebhooks::Webhook::new(SECRET)
        .expect("secret")
        .verify(&request.body, &request.headers)
        .expect("signature verifies");

    eventually(WAIT, "delivered metric", || async {
        (dispatcher
            .metric("hookpost_deliveries_total{endpoint=\"crm\",outcome=\"delivered\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        dispatcher
            .metric("hookpost_delivery_attempts_total{endpoint=\"crm\",status_class=\"2xx\"}")
            .await,
        1.0
    );
    assert_eq!(
        scope.depth(&format!("{}.ep.crm", scope.prefix)).await,
        0,
        "acked"
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn fans_out_by_pattern() {
    let scope = Scope::new().await;
    let (all, orders, exact, customers) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let config = scope.config(&format!(
        "{FAST}{}{}{}{}",
        endpoint("all", &all.url, &["#"], ""),
        endpoint("orders", &orders.url, &["order.*"], ""),
        endpoint("exact", &exact.url, &["order.created"], ""),
        endpoint("customers", &customers.url, &["customer.#"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let created = publish(&publisher, "order.created", 2).await;
    let paid = publish(&publisher, "order.paid", 1).await;
    let vip = publish(&publisher, "customer.vip.created", 1).await;
    let other = publish(&publisher, "invoice", 1).await;

    let everything: Vec<String> = [&created, &paid, &vip, &other]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    all.wait_ids(&everything, WAIT).await;
    orders
        .wait_ids(&[created.clone(), paid.clone()].concat(), WAIT)
        .await;
    exact.wait_ids(&created, WAIT).await;
    customers.wait_ids(&vip, WAIT).await;
    // Give stray deliveries a chance to show up before asserting their absence:
    // "all" saw every event, so the others had every chance too.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(orders.ids()),
        sorted([created.clone(), paid].concat())
    );
    assert_eq!(sorted(exact.ids()), sorted(created));
    assert_eq!(customers.ids(), vip);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn batches_by_size_and_by_interval() {
    let scope = Scope::new().await;
    let by_size = Receiver::start().await;
    let by_time = Receiver::start().await;
    let config = scope.config(&format!(
        "{FAST}{}{}",
        endpoint(
            "size",
            &by_size.url,
            &["size.*"],
            "batch_size = 5\nbatch_interval_ms = 60000\nmax_in_flight = 1"
        ),
        endpoint(
            "time",
            &by_time.url,
            &["time.*"],
            "batch_size = 100\nbatch_interval_ms = 300"
        ),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let sized = publish(&publisher, "size.x", 10).await;
    let timed = publish(&publisher, "time.x", 3).await;

    let got = by_size.wait_requests(2, WAIT).await;
    assert!(
        got.iter().all(|r| r.events().len() == 5),
        "two full batches of 5"
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(body["batch_info"]["size"], 5);
    assert!(
        got[0]
            .header("webhook-id")
            .is_some_and(|id| id.starts_with("batch_"))
    );
    let mut ids: Vec<String> = got.iter().flat_map(|r| r.ids()).collect();
    ids.sort();
    let mut want = sized;
    want.sort();
    assert_eq!(ids, want);

    let got = by_time.wait_requests(1, WAIT).await;
    assert_eq!(
        got[0].ids().len(),
        3,
        "the interval flushed a partial batch"
    );
    let mut want = timed;
    want.sort();
    let mut ids = got[0].ids();
    ids.sort();
    assert_eq!(ids, want);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn retries_with_backoff_then_delivers() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|n, _| {
        Reply::Status(if n < 2 { 500 } else { 200 }, vec![])
    }))
    .await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("flaky", &receiver.url, &["#"], "")
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "order.created", 1).await;

    let got = receiver.wait_requests(3, WAIT).await;
    let attempts: Vec<Option<String>> = got.iter().map(|r| r.header("hookpost-attempt")).collect();
    assert_eq!(
        attempts,
        [Some("1".into()), Some("2".into()), Some("3".into())]
    );
    assert!(
        got.iter().all(|r| r.ids() == ids),
        "the same event each time"
    );
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id").as_deref() == Some(ids[0].as_str())),
        "same webhook-id on retries"
    );
    // Retry 1 waits 100 ms, retry 2 waits 200 ms (wait queues, not memory).
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(100),
        "{:?}",
        got[1].at - got[0].at
    );
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(200),
        "{:?}",
        got[2].at - got[1].at
    );
    eventually(WAIT, "retry metrics", || async {
        let delivered = dispatcher
            .metric("hookpost_deliveries_total{endpoint=\"flaky\",outcome=\"delivered\"}")
            .await;
        let tier1 = dispatcher
            .metric("hookpost_retries_total{endpoint=\"flaky\",tier=\"100\"}")
            .await;
        let tier2 = dispatcher
            .metric("hookpost_retries_total{endpoint=\"flaky\",tier=\"200\"}")
            .await;
        (delivered == 1.0 && tier1 == 1.0 && tier2 == 1.0).then_some(())
    })
    .await;
    assert_eq!(scope.depth(&format!("{}.dead", scope.prefix)).await, 0);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn exhausted_retries_dead_letter_with_every_header() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| Reply::Status(503, vec![]))).await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("down", &receiver.url, &["#"], "max_retries = 2")
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let event = Event::new("order.created", serde_json::json!({"n": 1})).expect("valid");
    publisher.publish(&event).await.expect("published");

    let dead = scope.take(&format!("{}.dead", scope.prefix), 1).await;
    let msg = &dead[0];
    assert_eq!(
        header_str(msg, "hookpost-reason").as_deref(),
        Some("exhausted")
    );
    assert_eq!(
        header_str(msg, "hookpost-endpoint").as_deref(),
        Some("down")
    );
    assert_eq!(header_str(msg, "hookpost-attempt").as_deref(), Some("3"));
    assert_eq!(
        header_str(msg, "hookpost-last-status").as_deref(),
        Some("503")
    );
    assert_eq!(
        header_str(msg, "hookpost-last-error").as_deref(),
        Some("HTTP 503")
    );
    let failed_at = header_str(msg, "hookpost-failed-at").expect("failed-at");
    assert!(
        time::OffsetDateTime::parse(&failed_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{failed_at}"
    );
    assert_eq!(
        msg.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(event.id.clone())
    );
    assert_eq!(
        Event::from_slice(&msg.delivery.data).expect("body unchanged"),
        event
    );
    assert_eq!(
        receiver.received().len(),
        3,
        "first attempt and two retries"
    );
    assert_eq!(
        dispatcher
            .metric("hookpost_dead_letters_total{endpoint=\"down\",reason=\"exhausted\"}")
            .await,
        1.0
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn client_errors_dead_letter_at_once_and_410_pauses() {
    let scope = Scope::new().await;
    let rejecting = Receiver::with(Arc::new(|_, _| Reply::Status(400, vec![]))).await;
    let gone = Receiver::with(Arc::new(|_, _| Reply::Status(410, vec![]))).await;
    let config = scope.config(&format!(
        "{FAST}{}{}",
        endpoint("rejecting", &rejecting.url, &["a.*"], ""),
        endpoint("gone", &gone.url, &["b.*"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    publish(&publisher, "a.x", 1).await;
    publish(&publisher, "b.x", 1).await;

    let dead = scope.take(&format!("{}.dead", scope.prefix), 2).await;
    let reasons: std::collections::BTreeMap<String, String> = dead
        .iter()
        .map(|m| {
            (
                header_str(m, "hookpost-endpoint").expect("endpoint"),
                header_str(m, "hookpost-reason").expect("reason"),
            )
        })
        .collect();
    assert_eq!(
        reasons.get("rejecting").map(String::as_str),
        Some("rejected")
    );
    assert_eq!(reasons.get("gone").map(String::as_str), Some("gone"));
    assert_eq!(rejecting.received().len(), 1, "no retry after a 400");
    eventually(WAIT, "paused metric", || async {
        (dispatcher
            .metric("hookpost_endpoint_paused{endpoint=\"gone\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    // Paused: later events wait in its queue, untouched.
    publish(&publisher, "b.y", 2).await;
    let queue = format!("{}.ep.gone", scope.prefix);
    eventually(WAIT, "events waiting for the paused endpoint", || async {
        (scope.depth(&queue).await == 2).then_some(())
    })
    .await;
    assert_eq!(gone.received().len(), 1);
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn timeouts_retry_and_retry_after_is_honoured() {
    let scope = Scope::new().await;
    let slow = Receiver::with(Arc::new(|n, _| {
        if n == 0 {
            Reply::Delay(Duration::from_secs(3), 200)
        } else {
            Reply::Status(200, vec![])
        }
    }))
    .await;
    let limited = Receiver::with(Arc::new(|n, _| {
        if n == 0 {
            Reply::Status(429, vec![("retry-after", "1".into())])
        } else {
            Reply::Status(200, vec![])
        }
    }))
    .await;
    let config = scope.config(&format!(
        "{FAST}{}{}",
        endpoint("slow", &slow.url, &["s.*"], "timeout_ms = 300"),
        endpoint(
            "limited",
            &limited.url,
            &["l.*"],
            "retry_delay_ms = 100\nmax_retry_delay_ms = 1600\nmax_retries = 5"
        ),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    publish(&publisher, "s.x", 1).await;
    publish(&publisher, "l.x", 1).await;

    let got = slow.wait_requests(2, WAIT).await;
    assert_eq!(
        got[1].header("hookpost-attempt").as_deref(),
        Some("2"),
        "retried after the timeout"
    );
    eventually(WAIT, "timeout counted", || async {
        (dispatcher
            .metric("hookpost_delivery_attempts_total{endpoint=\"slow\",status_class=\"timeout\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;

    let got = limited.wait_requests(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {gap:?}"
    );
    assert_eq!(
        dispatcher
            .metric("hookpost_retries_total{endpoint=\"limited\",tier=\"1600\"}")
            .await,
        1.0,
        "rounded up to the 1600 ms tier"
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn malformed_messages_dead_letter_and_the_queue_keeps_flowing() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("ep", &receiver.url, &["#"], "")
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    // Straight to the exchange, as any AMQP client could.
    let exchange = format!("{}.events", scope.prefix);
    for body in [
        &b"not json"[..],
        &[0xff, 0xfe][..],
        br#"{"type":"a.b"}"#,
        br#"{"id":1,"type":"a.b","timestamp":"x","data":1}"#,
    ] {
        scope
            .channel
            .basic_publish(
                exchange.as_str().into(),
                "a.b".into(),
                Default::default(),
                body,
                Default::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let ids = publish(&publisher, "a.b", 1).await;
    receiver.wait_ids(&ids, WAIT).await;
    let dead = scope.take(&format!("{}.dead", scope.prefix), 4).await;
    assert!(
        dead.iter()
            .all(|m| header_str(m, "hookpost-reason").as_deref() == Some("malformed"))
    );
    assert!(dead.iter().all(|m| {
        !header_str(m, "hookpost-last-error")
            .unwrap_or_default()
            .is_empty()
    }));
    assert_eq!(
        &dead[0].delivery.data[..],
        b"not json",
        "body kept unchanged"
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn resumes_after_the_broker_connection_drops() {
    if std::env::var("DEBUG_LOG").is_ok() {
        common::logging::init("info,lapin=warn");
    }
    let scope = Scope::new().await;
    let proxy = Proxy::start(broker_addr(&amqp_url())).await;
    let receiver = Receiver::start().await;
    let body = format!("{FAST}{}", endpoint("ep", &receiver.url, &["#"], ""));
    let via_proxy = scope.config_with(
        &body,
        "max_reconnect_delay_ms = 200",
        &proxy.amqp_url(&amqp_url()),
    );
    let direct = scope.config(&body);
    let dispatcher = Running::start(via_proxy).await;
    let publisher = Publisher::connect(&direct).await.expect("connect");
    let before = publish(&publisher, "a.b", 5).await;
    receiver.wait_ids(&before, WAIT).await;

    proxy.down();
    eventually(WAIT, "not ready while the broker is away", || async {
        (dispatcher.ready_status().await == 503).then_some(())
    })
    .await;
    let during = publish(&publisher, "a.b", 5).await;
    proxy.up();
    dispatcher.wait_ready().await;
    let after = publish(&publisher, "a.b", 5).await;
    receiver.wait_ids(&[during, after].concat(), WAIT).await;
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn competing_dispatchers_share_the_work() {
    let scope = Scope::new().await;
    let receiver =
        Receiver::with(Arc::new(|_, _| Reply::Delay(Duration::from_millis(5), 200))).await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("ep", &receiver.url, &["#"], "max_in_flight = 2")
    ));
    let first = Running::start(config.clone()).await;
    let second = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let ids = publish(&publisher, "a.b", 200).await;
    receiver.wait_ids(&ids, WAIT).await;
    let series = "hookpost_deliveries_total{endpoint=\"ep\",outcome=\"delivered\"}";
    let (a, b) = eventually(WAIT, "200 acked deliveries counted", || async {
        let (a, b) = (first.metric(series).await, second.metric(series).await);
        (a + b >= 200.0).then_some((a, b))
    })
    .await;
    assert!(a > 0.0 && b > 0.0, "both worked: {a} and {b}");
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reload_adds_and_removes_endpoints() {
    let scope = Scope::new().await;
    let (one, two) = (Receiver::start().await, Receiver::start().await);
    let config = scope.config(&format!("{FAST}{}", endpoint("one", &one.url, &["#"], "")));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");

    let both = scope.config(&format!(
        "{FAST}{}{}",
        endpoint("one", &one.url, &["#"], ""),
        endpoint("two", &two.url, &["a.*"], "")
    ));
    dispatcher.reload.send(both).await.expect("reload");
    let ids = eventually(WAIT, "the new endpoint receiving", || async {
        let ids = publish(&publisher, "a.b", 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        two.ids().iter().any(|id| ids.contains(id)).then_some(ids)
    })
    .await;
    one.wait_ids(&ids, WAIT).await;

    // Dropping "one": its pattern is unbound, so new events no longer pile up there.
    let only_two = scope.config(&format!(
        "{FAST}{}",
        endpoint("two", &two.url, &["a.*"], "")
    ));
    dispatcher.reload.send(only_two).await.expect("reload");
    let queue = format!("{}.ep.one", scope.prefix);
    let late = eventually(WAIT, "the old endpoint unbound", || async {
        let before = scope.depth(&queue).await;
        let ids = publish(&publisher, "a.c", 1).await;
        two.wait_ids(&ids, WAIT).await;
        (scope.depth(&queue).await == before).then_some(ids)
    })
    .await;
    assert!(
        !one.ids().contains(&late[0]),
        "a removed endpoint gets nothing new"
    );
    dispatcher.stop().await.expect("clean stop");
}

/// A reload that changes `[http]` applies to the running workers' next
/// requests: narrowing `http.allowed_networks` stops deliveries to a host
/// name that now resolves only to refused addresses (before, the running
/// workers kept the old address policy until the next reconnect).
#[tokio::test]
async fn a_reload_that_narrows_allowed_networks_applies_to_running_workers() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let url = receiver.url.replace("127.0.0.1", "localhost");
    let toml = |allowed: &str| {
        format!(
            "[http]\nallowed_networks = [{allowed}]\n[defaults]\nretry_delay_ms = 100\nmax_retry_delay_ms = 200\nmax_retries = 1\ntimeout_ms = 2000\n{}",
            endpoint("ep", &url, &["#"], "")
        )
    };
    let config = scope.config(&toml("\"127.0.0.0/8\", \"::1/128\""));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let first = publish(&publisher, "a.b", 1).await;
    receiver.wait_ids(&first, WAIT).await;

    dispatcher
        .reload
        .send(scope.config(&toml("")))
        .await
        .expect("reload");
    let dead_queue = format!("{}.dead", scope.prefix);
    // Every probe so far: one dead-lettered after its round still counts.
    let probes = std::sync::Mutex::new(Vec::new());
    let refused = eventually(WAIT, "an event refused under the new policy", || async {
        let probe = publish(&publisher, "a.c", 1).await;
        probes.lock().unwrap().extend(probe);
        tokio::time::sleep(Duration::from_millis(500)).await;
        scope.drain(&dead_queue).await.into_iter().find_map(|msg| {
            let error = header_str(&msg, "hookpost-last-error")?;
            let id = msg.delivery.properties.message_id().as_ref()?.to_string();
            (probes.lock().unwrap().contains(&id) && error.contains("refused addresses"))
                .then_some(id)
        })
    })
    .await;
    assert!(
        !receiver.ids().contains(&refused),
        "the refused event was not delivered"
    );
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn restart_on_a_new_config_removes_stale_bindings() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let old = scope.config(&format!(
        "{FAST}{}",
        endpoint("ep", &receiver.url, &["a.*", "b.*"], "")
    ));
    Running::start(old.clone())
        .await
        .stop()
        .await
        .expect("clean stop");

    let new = scope.config(&format!(
        "{FAST}{}",
        endpoint("ep", &receiver.url, &["b.*"], "")
    ));
    let dispatcher = Running::start(new.clone()).await;
    let publisher = Publisher::connect(&new).await.expect("connect");
    let wanted = publish(&publisher, "b.x", 1).await;
    let dropped = publish(&publisher, "a.x", 1).await;
    receiver.wait_ids(&wanted, WAIT).await;
    let unrouted = scope.take(&format!("{}.unrouted", scope.prefix), 1).await;
    assert_eq!(
        Event::from_slice(&unrouted[0].delivery.data)
            .expect("envelope")
            .id,
        dropped[0],
        "a.x no longer routes to ep"
    );
    assert!(!receiver.ids().contains(&dropped[0]));
    dispatcher.stop().await.expect("clean stop");
}

/// A consumer's cancel that the broker never answers (a proxy holds back the
/// dispatcher's bytes) while another endpoint keeps the shared channel open:
/// the channel is closed, so that what the stopped consumer had prefetched
/// goes back to its queue instead of staying unacked there.
#[tokio::test]
async fn an_unanswered_cancel_gives_back_what_a_shared_channel_held() {
    let scope = Scope::new().await;
    let proxy = Proxy::start(broker_addr(&amqp_url())).await;
    let slow = Receiver::with(Arc::new(|_, _| Reply::Delay(Duration::from_secs(1), 200))).await;
    let other = Receiver::start().await;
    let config = |with_slow: bool| {
        let slow = if with_slow {
            endpoint("slow", &slow.url, &["s.*"], "max_in_flight = 1")
        } else {
            String::new()
        };
        scope.config_with(
            &format!(
                "{FAST}{slow}{}",
                endpoint("other", &other.url, &["o.*"], "")
            ),
            "consume_channels = 1\nmax_reconnect_delay_ms = 200",
            &proxy.amqp_url(&amqp_url()),
        )
    };
    let dispatcher = Running::start(config(true)).await;
    let publisher = Publisher::connect(&scope.config(""))
        .await
        .expect("connect");
    publish(&publisher, "s.x", 10).await;
    // One request in flight, a few more prefetched on the one shared channel
    // (its per-consumer prefetch is small), the rest still in the queue.
    slow.wait_requests(1, WAIT).await;
    let channels = "hookpost_amqp_channels{role=\"consume\"}";
    assert_eq!(dispatcher.metric(channels).await, 1.0);

    // Under a minute of stall: the broker's heartbeat timeout (60 s by
    // default) would otherwise end the connection and requeue everything,
    // hiding what this checks.
    proxy.stall();
    dispatcher.reload.send(config(false)).await.expect("reload");
    // The cancel goes unanswered for 30 s; then the channel is given up.
    // Waited for up to 45 s, then the test goes on either way: what it
    // checks is where the prefetched events end up.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while dispatcher.metric(channels).await != 0.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.resume();

    let queue = format!("{}.ep.slow", scope.prefix);
    eventually(
        WAIT,
        "what slow had prefetched back in its queue",
        || async {
            let back = scope.depth(&queue).await as usize;
            (back + slow.ids().len() >= 10).then_some(())
        },
    )
    .await;
    let ids = publish(&publisher, "o.x", 1).await;
    other.wait_ids(&ids, Duration::from_secs(40)).await;
    dispatcher.stop().await.expect("clean stop");
}
