//! The attempt log (issue 18) end to end, against the real broker: every
//! attempt of a flaky endpoint recorded with its status and the start of
//! the answer; queries by event, endpoint, outcome, status and time window;
//! and a log stream that disappears under a running dispatcher (deliveries
//! go on, the records lost are counted, the log comes back).

use common::history::{Attempt, Outcome, Query};
use std::sync::Arc;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, publish};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);
const HEADER_VALUE: &str = "Bearer header-value-never-logged-5c1d";

fn query(since: time::OffsetDateTime) -> Query {
    Query {
        endpoint: None,
        endpoints_in: None,
        event: None,
        tenant: None,
        outcome: None,
        status: None,
        since,
        until: None,
        limit: 100,
    }
}

/// The records `query` finds once there are `n` of them.
async fn records(admin: &dispatcher::admin::Admin, query: &Query, n: usize) -> Vec<Attempt> {
    eventually(WAIT, &format!("{n} attempt log records"), || async {
        let (found, _) = admin.log(query, None).await.expect("read the log");
        (found.len() >= n).then_some(found)
    })
    .await
}

#[tokio::test]
async fn every_attempt_is_logged_with_its_answer_and_can_be_queried() {
    let scope = Scope::new().await;
    // Request n (0-based): the first three fail.
    let receiver = Receiver::with(Arc::new(|n, _| {
        if n < 3 {
            Reply::Status(500, vec![])
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
            &["order.*"],
            &format!("max_retries = 5\nheaders = {{ Authorization = \"{HEADER_VALUE}\" }}")
        )
    ));
    let began = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    let dispatcher = Running::start(config.clone()).await;
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let ids = publish(&publisher, "order.created", 1).await;
    receiver.wait_ids(&ids, WAIT).await;
    let admin = dispatcher::admin::Admin::connect(config.clone())
        .await
        .expect("admin");

    let by_event = Query {
        event: Some(ids[0].clone()),
        ..query(began)
    };
    let found = records(&admin, &by_event, 4).await;
    assert_eq!(found.len(), 4, "{found:#?}");
    for (i, a) in found.iter().enumerate() {
        assert_eq!(a.attempt, u32::try_from(i).expect("small") + 1, "{a:?}");
        assert_eq!(a.endpoint, "flaky");
        assert_eq!(a.event_type, "order.created");
        let text = serde_json::to_string(a).expect("json");
        assert!(
            !text.contains(HEADER_VALUE),
            "a header value in the log: {text}"
        );
        assert!(a.started().is_some_and(|t| t >= began), "{a:?}");
        // The receiver answers every request with the body "ok".
        assert_eq!(a.response.as_deref(), Some("ok"), "{a:?}");
    }
    for a in &found[..3] {
        assert_eq!((a.outcome, a.status), (Outcome::Retry, Some(500)), "{a:?}");
        assert_eq!(a.error.as_deref(), Some("HTTP 500"));
    }
    let last = &found[3];
    assert_eq!(
        (last.outcome, last.status, last.error.as_deref()),
        (Outcome::Delivered, Some(200), None)
    );

    // By endpoint, outcome and status; and a window before the event.
    let retries = Query {
        endpoint: Some("flaky".into()),
        outcome: Some(Outcome::Retry),
        ..query(began)
    };
    assert_eq!(admin.log(&retries, None).await.expect("read").0.len(), 3);
    let ok = Query {
        status: Some(200),
        ..query(began)
    };
    assert_eq!(
        admin.log(&ok, None).await.expect("read").0,
        vec![last.clone()]
    );
    let before = Query {
        until: Some(began),
        ..query(began - Duration::from_secs(600))
    };
    let (none, _) = admin.log(&before, None).await.expect("read");
    assert!(none.is_empty(), "{none:?}");
    let newest = Query {
        limit: 2,
        ..by_event.clone()
    };
    let (two, scanned) = admin.log(&newest, None).await.expect("read");
    assert_eq!(two, found[2..].to_vec(), "the newest two, oldest first");
    assert_eq!(scanned.matched, 4);

    let metrics = dispatcher.metrics_text().await;
    assert!(
        metrics.contains("hookpost_log_records_total{result=\"written\"} 4"),
        "{metrics}"
    );
    admin.close().await;
    dispatcher.stop().await.expect("clean stop");
    publisher.close().await;
}

/// The log stream deleted under a running dispatcher: deliveries go on,
/// the records that could not be written are counted lost (a warning says
/// so, with backoff), and the writer declares the stream again, so later
/// attempts are logged.
#[tokio::test]
async fn a_missing_log_stream_loses_records_not_deliveries() {
    use lapin::options::QueueDeleteOptions;
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("steady", &receiver.url, &["order.*"], "")
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let first = publish(&publisher, "order.created", 5).await;
    receiver.wait_ids(&first, WAIT).await;
    let counted = |result: &'static str| {
        let dispatcher = &dispatcher;
        async move {
            let text = dispatcher.metrics_text().await;
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!(
                        "hookpost_log_records_total{{result=\"{result}\"}} "
                    ))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        }
    };
    eventually(WAIT, "5 records written", || async {
        (counted("written").await >= 5).then_some(())
    })
    .await;

    let log = format!("{}.log", scope.prefix);
    scope
        .channel
        .queue_delete(log.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the log stream");
    // Every event is still delivered while records are lost ...
    let during = publish(&publisher, "order.created", 5).await;
    receiver.wait_ids(&during, WAIT).await;
    eventually(WAIT, "lost records counted", || async {
        (counted("lost").await >= 1).then_some(())
    })
    .await;
    // ... and the log comes back: later attempts are written again.
    let written = counted("written").await;
    let began = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    let after = eventually(WAIT, "records written again", || async {
        let ids = publish(&publisher, "order.created", 1).await;
        receiver.wait_ids(&ids, WAIT).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        (counted("written").await > written).then_some(ids)
    })
    .await;
    let admin = dispatcher::admin::Admin::connect(config.clone())
        .await
        .expect("admin");
    let by_event = Query {
        event: Some(after[0].clone()),
        ..query(began)
    };
    let found = records(&admin, &by_event, 1).await;
    assert_eq!(found[0].outcome, Outcome::Delivered);
    admin.close().await;
    dispatcher.stop().await.expect("clean stop");
    publisher.close().await;
}

/// The attempts on the API: an operator sees every endpoint's; a tenant
/// token sees its tenant's registered endpoints' attempts and nothing else
/// (another tenant's endpoint answers 404, another tenant's event shows no
/// attempt, and the config file's global endpoint is never shown to it).
#[tokio::test]
async fn a_tenant_token_reads_only_its_own_attempts() {
    use reqwest::Method;
    use serde_json::{Value, json};
    const OPERATOR: &str = "operator-token-0123456789";
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config(&format!(
        "{FAST}[api]\ntokens = [\"{OPERATOR}\"]\n[registry]\nsecrets_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n{}",
        endpoint("global", &receiver.url, &["#"], "")
    ));
    scope.track_endpoint(&config, "acme-hook");
    scope.track_endpoint(&config, "globex-hook");
    let began = time::OffsetDateTime::now_utc() - Duration::from_secs(1);
    let dispatcher = Running::start(config.clone()).await;
    let api = tests::api::Api::start(&config).await;
    for (id, tenant) in [("acme-hook", "acme"), ("globex-hook", "globex")] {
        let (status, body) = api
            .call(
                OPERATOR,
                Method::POST,
                "/v1/endpoints",
                Some(
                    json!({"id": id, "url": receiver.url, "events": ["order.*"], "tenant": tenant}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, minted) = api
        .call(OPERATOR, Method::POST, "/v1/tenants/acme/tokens", None)
        .await;
    assert_eq!(status, 201, "{minted}");
    let acme = minted["token"].as_str().expect("token").to_owned();
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let event = |tenant: &str| {
        common::Event::new("order.created", json!({}))
            .expect("event")
            .with_scope(Some(tenant), None)
            .expect("scope")
    };
    let (ours, theirs) = (event("acme"), event("globex"));
    publisher
        .publish_many(&[ours.clone(), theirs.clone()])
        .await
        .expect("publish");
    let attempts = |token: String, path: String| {
        let api = &api;
        async move {
            let (status, body) = api.call(&token, Method::GET, &path, None).await;
            (status, body)
        }
    };
    let ids = |body: &Value| -> Vec<(String, String)> {
        body["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["endpoint"].as_str().unwrap_or_default().to_owned(),
                    a["event_id"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let since = began
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time")
        .replace(':', "%3A");
    // The operator sees both deliveries of our event: the tenant's
    // endpoint and the global one.
    let operator_view = eventually(WAIT, "both attempts of the acme event", || async {
        let (status, body) = attempts(
            OPERATOR.to_owned(),
            format!("/v1/events/{}/attempts?since={since}", ours.id),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let mut seen = ids(&body);
        seen.sort();
        (seen.len() == 2).then_some(seen)
    })
    .await;
    assert_eq!(
        operator_view,
        vec![
            ("acme-hook".to_owned(), ours.id.clone()),
            ("global".to_owned(), ours.id.clone())
        ]
    );
    // The tenant: its endpoint's attempt only.
    let (status, body) = attempts(
        acme.clone(),
        format!("/v1/events/{}/attempts?since={since}", ours.id),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![("acme-hook".to_owned(), ours.id.clone())]);
    let (status, body) = attempts(
        acme.clone(),
        format!("/v1/endpoints/acme-hook/attempts?since={since}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), vec![("acme-hook".to_owned(), ours.id.clone())]);
    assert_eq!(body["attempts"][0]["outcome"], "delivered");
    // Not another tenant's endpoint, event, or tenant filter; not the file's endpoint.
    for path in [
        "/v1/endpoints/globex-hook/attempts",
        "/v1/endpoints/global/attempts",
    ] {
        let (status, body) = attempts(acme.clone(), format!("{path}?since={since}")).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = attempts(
        acme.clone(),
        format!("/v1/events/{}/attempts?since={since}", theirs.id),
    )
    .await;
    assert_eq!((status, ids(&body)), (200, vec![]), "{body}");
    let (status, body) = attempts(
        acme.clone(),
        format!("/v1/events/{}/attempts?tenant=globex", theirs.id),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = attempts(
        "hptk_0000000000000000_nope".to_owned(),
        "/v1/events/x/attempts".to_owned(),
    )
    .await;
    assert_eq!(status, 401);
    dispatcher.stop().await.expect("clean stop");
    publisher.close().await;
}

/// Retention bounds the log: with `max_age = "1s"`, the segments written
/// before the last second are removed once newer ones roll in (RabbitMQ
/// applies retention when a segment fills), so the stream's first offset
/// moves on.
#[tokio::test]
async fn retention_removes_old_segments() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let scope = Scope::new().await;
    let config = scope.config("[log]\nmax_age = \"1s\"\nmax_bytes = 1048576\n");
    let topology = common::topology::Topology::for_config(&config);
    common::history::ensure(&scope.connection, &topology, &config.log)
        .await
        .expect("log stream");
    let log = topology.log();
    let ch = scope.connection.create_channel().await.expect("channel");
    // 64 KiB segments (a sixteenth of max_bytes, at least 64 KiB): 1 KiB
    // records, 100 at a time.
    let record = vec![b'x'; 1024];
    // Each read on a connection of its own: attaching at a segment that
    // retention is removing can answer with a connection-level error.
    let first_offset = || async {
        let conn =
            lapin::Connection::connect(&tests::amqp_url(), lapin::ConnectionProperties::default())
                .await
                .ok()?;
        let offset = async {
            let reader = conn.create_channel().await.ok()?;
            reader.basic_qos(1, BasicQosOptions::default()).await.ok()?;
            let mut args = FieldTable::default();
            args.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("first".into()),
            );
            let mut consumer = reader
                .basic_consume(
                    log.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
                .ok()?;
            let delivery = tokio::time::timeout(WAIT, consumer.next())
                .await
                .ok()??
                .ok()?;
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            common::contract::int(&headers, "x-stream-offset")
        }
        .await;
        let _ = conn.close(200, "read".into()).await;
        offset
    };
    let write = |n: usize| {
        let (ch, log, record) = (&ch, &log, &record);
        async move {
            for _ in 0..n {
                ch.basic_publish(
                    "".into(),
                    log.as_str().into(),
                    BasicPublishOptions::default(),
                    record,
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("publish");
            }
        }
    };
    // Offsets start at 0: a first offset above it means records went.
    write(300).await;
    let moved = eventually(WAIT, "the oldest segments removed", || async {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        write(100).await;
        first_offset().await.filter(|first| *first > 0)
    })
    .await;
    assert!(
        moved >= 60,
        "at least the first 64 KiB segment went: first offset {moved}"
    );
}

/// A read of the log whose broker stops answering before the read caught
/// up ends with an error (`hookpost-admin log` and the API's attempt
/// queries read this way) instead of waiting for good.
#[tokio::test]
async fn a_read_from_a_stalled_broker_fails_instead_of_hanging() {
    use lapin::options::BasicPublishOptions;
    let scope = Scope::new().await;
    let config = scope.config("");
    let topology = common::topology::Topology::for_config(&config);
    common::history::ensure(&scope.connection, &topology, &config.log)
        .await
        .expect("log stream");
    // More messages than the read's prefetch (1,000): some are still at
    // the broker when the proxy stalls.
    for i in 0..3_000 {
        scope
            .channel
            .basic_publish(
                "".into(),
                topology.log().as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    let proxy = tests::proxy::Proxy::start(tests::proxy::broker_addr(&tests::amqp_url())).await;
    let conn = lapin::Connection::connect(
        &proxy.amqp_url(&tests::amqp_url()),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect through the proxy");
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut cursor = common::history::Cursor::open(&conn, &topology.log(), since, None, "test")
        .await
        .expect("open")
        .stalling_after(Duration::from_secs(1));
    proxy.stall();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        let mut read = 0usize;
        loop {
            match cursor.next().await {
                Ok(Some(common::history::Step::Message(_))) => read += 1,
                other => return (read, other.map(|s| s.is_some())),
            }
        }
    })
    .await
    .expect("the read ended on its own");
    let (read, ended) = outcome;
    let error = ended.expect_err("a stalled broker is an error").to_string();
    assert!(
        error.contains("no message from the broker") || error.contains("took no ack"),
        "{error}"
    );
    assert!(read < 3_000, "read {read} before the stall");
    proxy.resume();
}
