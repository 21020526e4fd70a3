//! The event archive and replays from a point in time (issue 18) end to end,
//! against the real broker: every published event archived; a replay into
//! an endpoint created after the events sends exactly the window's matching
//! events, at the asked rate, with their ids; a dry run sends nothing; the
//! copies of concurrent single-event calls share archive messages; and
//! an archive that cannot be used never fails a publish (its copies are
//! counted lost).

use common::archive::replay::{Note, Progress, Request};
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, publish};
use tests::receiver::Receiver;
use tests::{Scope, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn metrics() -> (prometheus::Registry, common::metrics::ProducerMetrics) {
    let registry = prometheus::Registry::new();
    let m = common::metrics::ProducerMetrics::register(&registry).expect("metrics");
    (registry, m)
}

/// The archive's timestamps are milliseconds: a window boundary taken
/// between two publishes is kept apart from both by this.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test]
async fn a_replay_sends_the_windows_matching_events_to_a_new_endpoint_at_its_rate() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    // No endpoint yet: the events go to the unrouted queue, and the archive.
    let bare = scope.config(FAST);
    let (_registry, m) = metrics();
    let publisher = producer::Publisher::connect(&bare)
        .await
        .expect("publisher")
        .with_metrics(m.clone());
    let before = publish(&publisher, "order.created", 5).await;
    tick().await;
    let since = time::OffsetDateTime::now_utc();
    tick().await;
    let wanted = publish(&publisher, "order.created", 10).await;
    let other_type = publish(&publisher, "user.created", 5).await;
    tick().await;
    let until = time::OffsetDateTime::now_utc();
    tick().await;
    let after = publish(&publisher, "order.created", 5).await;
    assert_eq!(
        m.archive_records.with_label_values(&["written"]).get(),
        25,
        "every event archived"
    );
    assert_eq!(m.archive_records.with_label_values(&["lost"]).get(), 0);
    // Compressed, but each copy keeps at least its random id.
    assert!(m.archive_bytes.get() > 25 * 20, "{}", m.archive_bytes.get());

    // The endpoint is created after the events were published.
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint("late", &receiver.url, &["order.*"], "")
    ));
    let _dispatcher = Running::start(config.clone()).await;
    let admin = dispatcher::admin::Admin::connect(config.clone())
        .await
        .expect("admin");
    let request = Request {
        since,
        until: Some(until),
        event_type: None,
        tenant: None,
        rate: 20.0,
        dry_run: true,
    };
    let stop = CancellationToken::new();
    let mut reports: Vec<Progress> = Vec::new();
    let mut would: Vec<String> = Vec::new();
    let dry = admin
        .replay("late", &request, &stop, &mut |note| match note {
            Note::Progress(p) => reports.push(p.clone()),
            Note::Sent { event_id, queue } => {
                assert_eq!(queue, "late");
                would.push(event_id.to_owned());
            }
        })
        .await
        .expect("dry run");
    assert_eq!(would, wanted, "what a dry run would send, in order");
    assert_eq!(
        (dry.matched, dry.sent, dry.finished),
        (10, 0, true),
        "{dry:?}"
    );
    assert!(dry.scanned >= 15, "{dry:?}");
    assert_eq!(reports.last(), Some(&dry));
    // A dry run sends nothing.
    let queue = common::topology::Topology::new(&config.amqp).endpoint_queue("late");
    assert_eq!(scope.depth(&queue).await, 0);
    assert!(receiver.ids().is_empty());

    let started = std::time::Instant::now();
    let mut sent: Vec<String> = Vec::new();
    let done = admin
        .replay(
            "late",
            &Request {
                dry_run: false,
                ..request.clone()
            },
            &stop,
            &mut |note| {
                if let Note::Sent { event_id, .. } = note {
                    sent.push(event_id.to_owned());
                }
            },
        )
        .await
        .expect("replay");
    assert_eq!(sent, wanted, "what it sent, in order");
    let took = started.elapsed();
    assert_eq!(
        (done.matched, done.sent, done.finished),
        (10, 10, true),
        "{done:?}"
    );
    // 10 events at 20 per second: 9 gaps of 50 ms at least.
    assert!(took >= Duration::from_millis(450), "{took:?}");
    receiver.wait_ids(&wanted, WAIT).await;
    eventually(WAIT, "the endpoint queue drained", || async {
        (scope.depth(&queue).await == 0).then_some(())
    })
    .await;
    let got = receiver.ids();
    assert_eq!(got.len(), 10, "exactly the window's events: {got:?}");
    for id in before.iter().chain(&other_type).chain(&after) {
        assert!(!got.contains(id), "{id} is outside the window or type");
    }
    // Replayed events keep their ids.
    let mut sorted = got.clone();
    sorted.sort();
    let mut expected = wanted.clone();
    expected.sort();
    assert_eq!(sorted, expected);

    // --type narrows it, and an unknown endpoint is an error.
    let typed = admin
        .replay(
            "late",
            &Request {
                event_type: Some("order.paid".into()),
                ..request.clone()
            },
            &stop,
            &mut |_| {},
        )
        .await
        .expect("typed dry run");
    assert_eq!(typed.matched, 0);
    let e = admin
        .replay("nobody", &request, &stop, &mut |_| {})
        .await
        .expect_err("unknown endpoint");
    assert!(e.to_string().contains("unknown endpoint"), "{e}");
    admin.close().await;
    publisher.close().await;
}

#[tokio::test]
async fn concurrent_single_event_calls_share_archive_messages_and_every_copy_is_kept() {
    let scope = Scope::new().await;
    let config = scope.config(FAST);
    let (_registry, m) = metrics();
    let publisher = std::sync::Arc::new(
        producer::Publisher::connect(&config)
            .await
            .expect("publisher")
            .with_metrics(m.clone()),
    );
    let since = time::OffsetDateTime::now_utc();
    const CALLS: usize = 300;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                let event = common::Event::new("order.created", serde_json::json!({ "i": i }))
                    .expect("valid");
                publisher.publish(&event).await.map(|()| event.id)
            })
        })
        .collect();
    let mut published = std::collections::HashSet::new();
    for call in calls {
        published.insert(call.await.expect("task").expect("published"));
    }
    assert_eq!(published.len(), CALLS);
    // Each call returned once its copy was stored.
    assert_eq!(
        m.archive_records.with_label_values(&["written"]).get(),
        CALLS as u64
    );
    assert_eq!(m.archive_records.with_label_values(&["lost"]).get(), 0);

    // Every event's copy is in the archive once, and the calls that waited
    // behind others shared messages.
    let read = tests::archived(&config, since).await;
    assert!(
        read.iter().all(|copies| !copies.is_empty()),
        "an archive message without copies"
    );
    let messages = read.len();
    let archived: Vec<String> = read.into_iter().flatten().collect();
    let mut unique = archived.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), archived.len(), "a copy archived twice");
    assert_eq!(
        unique.into_iter().collect::<std::collections::HashSet<_>>(),
        published
    );
    assert!(
        messages < CALLS / 2,
        "{messages} archive messages for {CALLS} concurrent calls: not packed"
    );
    publisher.close().await;
}

#[tokio::test]
async fn an_archive_that_cannot_be_used_never_fails_a_publish() {
    let scope = Scope::new().await;
    let config = scope.config(FAST);
    let topology = common::topology::Topology::new(&config.amqp);
    // Another connection holds an exclusive queue by the archive's name:
    // the publisher's declaration of the archive fails (RESOURCE_LOCKED).
    let holder = lapin::Connection::connect(&tests::amqp_url(), Default::default())
        .await
        .expect("connect");
    let ch = holder.create_channel().await.expect("channel");
    ch.queue_declare(
        topology.archive().as_str().into(),
        lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .expect("exclusive queue");
    let (_registry, m) = metrics();
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher")
        .with_metrics(m.clone());
    let ids = publish(&publisher, "order.created", 7).await;
    assert_eq!(ids.len(), 7);
    assert_eq!(m.archive_records.with_label_values(&["lost"]).get(), 7);
    assert_eq!(m.archive_records.with_label_values(&["written"]).get(), 0);
    // The events themselves went where they go (the unrouted queue).
    eventually(WAIT, "7 unrouted events", || async {
        (scope.depth(&topology.unrouted()).await == 7).then_some(())
    })
    .await;
    publisher.close().await;
    let _ = holder.close(200, "done".into()).await;
}

const OPERATOR: &str = "operator-token-archive-0123456789";

#[tokio::test]
async fn a_tenant_replays_only_its_own_events_into_its_own_endpoints_over_the_api() {
    use reqwest::Method;
    use serde_json::{Value, json};
    let scope = Scope::new().await;
    let (acme_rx, globex_rx) = (Receiver::start().await, Receiver::start().await);
    let config = scope.config(&format!(
        "{FAST}[api]\ntokens = [\"{OPERATOR}\"]\n[registry]\nsecrets_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
    ));
    scope.track_endpoint(&config, "acme-hook");
    scope.track_endpoint(&config, "globex-hook");
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let scoped = |tenant: &str, n: usize| -> Vec<common::Event> {
        (0..n)
            .map(|i| {
                common::Event::new("order.created", json!({ "i": i }))
                    .expect("event")
                    .with_scope(Some(tenant), None)
                    .expect("scope")
            })
            .collect()
    };
    tick().await;
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let (ours, theirs) = (scoped("acme", 3), scoped("globex", 2));
    publisher.publish_many(&ours).await.expect("publish");
    publisher.publish_many(&theirs).await.expect("publish");

    // The endpoints are created after the events.
    let _dispatcher = Running::start(config.clone()).await;
    let (_registry, m) = metrics();
    let api = tests::api::Api::start_with(&config, Some(m.clone())).await;
    for (id, tenant, rx) in [
        ("acme-hook", "acme", &acme_rx),
        ("globex-hook", "globex", &globex_rx),
    ] {
        let (status, body) = api
            .call(
                OPERATOR,
                Method::POST,
                "/v1/endpoints",
                Some(json!({"id": id, "url": rx.url, "events": ["order.*"], "tenant": tenant})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, minted) = api
        .call(OPERATOR, Method::POST, "/v1/tenants/acme/tokens", None)
        .await;
    assert_eq!(status, 201, "{minted}");
    let acme = minted["token"].as_str().expect("token").to_owned();

    // Another tenant's endpoint is not found; another tenant's events and a
    // rate over the tenants' cap are refused.
    let body = json!({ "since": since });
    let (status, _) = api
        .call(
            &acme,
            Method::POST,
            "/v1/endpoints/globex-hook/replays",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 404);
    for (bad, field) in [
        (json!({"since": since, "tenant": "globex"}), "tenant"),
        (json!({"since": since, "rate": 5000}), "rate"),
        (json!({"since": since, "to": "globex-hook"}), "to"),
    ] {
        let (status, answer) = api
            .call(
                &acme,
                Method::POST,
                "/v1/endpoints/acme-hook/replays",
                Some(bad),
            )
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }

    // A dry run counts the tenant's events only.
    let (status, dry) = api
        .call(
            &acme,
            Method::POST,
            "/v1/endpoints/acme-hook/replays",
            Some(json!({"since": since, "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["progress"]["matched"], 3, "{dry}");
    assert_eq!(dry["progress"]["sent"], 0, "{dry}");
    assert_eq!(dry["state"], "finished", "{dry}");

    let (status, started) = api
        .call(
            &acme,
            Method::POST,
            "/v1/endpoints/acme-hook/replays",
            Some(json!({"since": since, "rate": 100})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let path = format!(
        "/v1/endpoints/acme-hook/replays/{}",
        started["id"].as_str().expect("id")
    );
    let done = eventually(WAIT, "the replay finished", || async {
        let (status, body) = api.call(&acme, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        (body["state"] != "running").then_some(body)
    })
    .await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["progress"]["sent"], 3, "{done}");
    let ids: Vec<String> = ours.iter().map(|e| e.id.clone()).collect();
    acme_rx.wait_ids(&ids, WAIT).await;
    assert_eq!(acme_rx.ids().len(), 3, "{:?}", acme_rx.ids());
    assert!(globex_rx.ids().is_empty(), "{:?}", globex_rx.ids());
    // The other tenant cannot see it; the operator can, in the list.
    let (status, _) = api
        .call(
            &acme,
            Method::GET,
            "/v1/endpoints/globex-hook/replays",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, list) = api
        .call(
            OPERATOR,
            Method::GET,
            "/v1/endpoints/acme-hook/replays",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        list["replays"].as_array().map(Vec::len),
        Some(2),
        "the dry run and the replay: {list}"
    );
    assert_eq!(m.replay_events.with_label_values(&["sent"]).get(), 3);
    assert_eq!(m.replay_events.with_label_values(&["matched"]).get(), 6);
    assert_eq!(m.replays_running.get(), 0);
    let _: &Value = &done;
    publisher.close().await;
}
