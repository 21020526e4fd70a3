//! Tenants and environments end to end: the broker keeps each customer's
//! events in that customer's endpoint queues, each environment variant has
//! its own queue, URL and secrets, and an envelope that disagrees with its
//! routing key is dead-lettered, never delivered.

use common::Event;
use common::topology::Topology;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use producer::Publisher;
use std::collections::BTreeSet;
use std::time::Duration;
use tests::Scope;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, header_str};
use tests::receiver::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(20);
const S0: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const S1: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const S2: &str = "whsec_aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGk=";

fn event(event_type: &str, tenant: Option<&str>, environment: Option<&str>) -> Event {
    Event::new(event_type, serde_json::json!({ "tenant": tenant }))
        .expect("valid type")
        .with_scope(tenant, environment)
        .expect("valid scope")
}

async fn publish(publisher: &Publisher, events: &[Event]) -> Vec<String> {
    publisher.publish_many(events).await.expect("published");
    events.iter().map(|e| e.id.clone()).collect()
}

fn ids<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeSet<String> {
    events.into_iter().map(|e| e.id.clone()).collect()
}

fn ids_in(messages: &[lapin::message::BasicGetMessage]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| Event::from_slice(&m.delivery.data).expect("envelope").id)
        .collect()
}

/// Two tenants with the same types and a global endpoint, every event of
/// every scope published: checked in the queues themselves, before any
/// dispatcher runs, so a leak cannot hide behind a filter.
#[tokio::test]
async fn each_tenants_queue_holds_only_that_tenants_events() {
    let scope = Scope::new().await;
    let url = "http://127.0.0.1:9/";
    let config = scope.config(&format!(
        "{FAST}{}{}{}",
        endpoint("acme", url, &["order.*"], "tenant = \"acme\""),
        endpoint("globex", url, &["order.*"], "tenant = \"globex\""),
        endpoint("analytics", url, &["#"], ""),
    ));
    scope.track_config(&config);
    let topology = Topology::new(&config.amqp);
    topology
        .declare_base(&scope.connection, &scope.channel)
        .await
        .expect("base");
    for e in &config.endpoints {
        topology
            .declare_endpoint(&scope.channel, &e.id, &e.binding_keys())
            .await
            .expect("endpoint");
    }
    let publisher = Publisher::connect(&config).await.expect("connect");
    let mut all = Vec::new();
    for tenant in [Some("acme"), Some("globex"), None] {
        for t in ["order.created", "order.paid", "invoice.sent"] {
            all.push(event(t, tenant, None));
        }
    }
    // Nobody subscribed: another tenant, and an environment nobody declared.
    let stray = [
        event("order.created", Some("initech"), Some("snd")),
        event("order.created", Some("acme"), Some("snd")),
    ];
    publish(&publisher, &all).await;
    publish(&publisher, &stray).await;

    let of = |tenant: &str| {
        ids(all
            .iter()
            .filter(|e| e.tenant.as_deref() == Some(tenant) && e.event_type.starts_with("order.")))
    };
    let acme = scope.take(&topology.endpoint_queue("acme"), 2).await;
    let globex = scope.take(&topology.endpoint_queue("globex"), 2).await;
    let analytics = scope.take(&topology.endpoint_queue("analytics"), 9).await;
    let unrouted = scope.take(&topology.unrouted_scoped(), 2).await;
    assert_eq!(ids_in(&acme), of("acme"));
    assert_eq!(ids_in(&globex), of("globex"));
    assert_eq!(ids_in(&analytics), ids(&all));
    assert_eq!(ids_in(&unrouted), ids(&stray));
    // Nothing else arrived anywhere (every publish above was confirmed, so
    // every copy is already in its queue).
    for queue in ["acme", "globex", "analytics"] {
        assert_eq!(
            scope.depth(&topology.endpoint_queue(queue)).await,
            0,
            "{queue}"
        );
    }
    assert_eq!(scope.depth(&topology.unrouted()).await, 0);
}

#[tokio::test]
async fn tenant_endpoints_receive_exactly_their_tenants_events() {
    let scope = Scope::new().await;
    let (acme_rx, globex_rx, global_rx) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let config = scope.config(&format!(
        "{FAST}{}{}{}",
        endpoint("acme", &acme_rx.url, &["order.*"], "tenant = \"acme\""),
        endpoint(
            "globex",
            &globex_rx.url,
            &["order.*"],
            "tenant = \"globex\""
        ),
        endpoint("analytics", &global_rx.url, &["order.*"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let mut all = Vec::new();
    for tenant in [Some("acme"), Some("globex"), None] {
        for _ in 0..3 {
            all.push(event("order.created", tenant, None));
        }
    }
    publish(&publisher, &all).await;
    let of = |tenant: &str| -> Vec<String> {
        all.iter()
            .filter(|e| e.tenant.as_deref() == Some(tenant))
            .map(|e| e.id.clone())
            .collect()
    };
    acme_rx.wait_ids(&of("acme"), WAIT).await;
    globex_rx.wait_ids(&of("globex"), WAIT).await;
    let everything: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    global_rx.wait_ids(&everything, WAIT).await;
    dispatcher.stop().await.expect("clean stop");
    // After a graceful stop nothing more can arrive: compare exactly.
    assert_eq!(
        acme_rx.ids().into_iter().collect::<BTreeSet<_>>(),
        of("acme").into_iter().collect()
    );
    assert_eq!(
        globex_rx.ids().into_iter().collect::<BTreeSet<_>>(),
        of("globex").into_iter().collect()
    );
    assert_eq!(global_rx.ids().len(), everything.len());
    let received = acme_rx.received();
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).expect("json");
    assert_eq!(body["tenant"], "acme", "the envelope carries its tenant");
}

fn verifies(secret: &str, request: &tests::receiver::Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test]
async fn each_environment_gets_only_its_events_at_its_url_signed_with_its_secret() {
    let scope = Scope::new().await;
    // The first request to the base URL and to prd's is answered after 1 s:
    // within the base's 10 s timeout, past prd's own 300 ms (retried there).
    let slow_first: tests::receiver::Behaviour = std::sync::Arc::new(|n, _| {
        if n == 0 {
            Reply::Delay(Duration::from_secs(1), 200)
        } else {
            Reply::Status(200, Vec::new())
        }
    });
    let (base_rx, prd_rx, snd_rx) = (
        Receiver::with(slow_first.clone()).await,
        Receiver::with(slow_first).await,
        Receiver::start().await,
    );
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "shop",
            &base_rx.url,
            &["order.*"],
            &format!(
                "tenant = \"acme\"\nsecrets = [\"{S0}\"]\ntimeout_ms = 10000\nenvironments = {{ prd = {{ url = \"{}\", secrets = [\"{S1}\"], timeout_ms = 300 }}, snd = {{ url = \"{}\", method = \"PUT\", secrets = [\"{S2}\"], headers = {{ X-Env = \"sandbox\" }} }} }}",
                prd_rx.url, snd_rx.url
            )
        ),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let base = vec![event("order.created", Some("acme"), None)];
    let prd = vec![
        event("order.created", Some("acme"), Some("prd")),
        event("order.paid", Some("acme"), Some("prd")),
    ];
    let snd = vec![
        event("order.created", Some("acme"), Some("snd")),
        event("order.paid", Some("acme"), Some("snd")),
    ];
    // Declared by nobody: an undeclared environment, another tenant's prd,
    // a tenant-less prd.
    let stray = vec![
        event("order.created", Some("acme"), Some("qa")),
        event("order.created", Some("globex"), Some("prd")),
        event("order.created", None, Some("prd")),
    ];
    for batch in [&base, &prd, &snd, &stray] {
        publish(&publisher, batch).await;
    }
    let want = |events: &[Event]| -> Vec<String> { events.iter().map(|e| e.id.clone()).collect() };
    base_rx.wait_ids(&want(&base), WAIT).await;
    prd_rx.wait_ids(&want(&prd), WAIT).await;
    snd_rx.wait_ids(&want(&snd), WAIT).await;
    // Timeouts are per environment: prd's 300 ms gave up on its slow first
    // answer and retried it; the base's 10 s waited for its own.
    let prd_requests = prd_rx.wait_requests(prd.len() + 1, WAIT).await;
    let mut prd_attempts: Vec<String> = prd_requests
        .iter()
        .filter_map(|r| r.header(common::contract::header::ATTEMPT))
        .collect();
    prd_attempts.sort();
    assert_eq!(prd_attempts, ["1", "1", "2"]);
    let series = |endpoint: &str, class: &str| {
        format!(
            "hookpost_delivery_attempts_total{{endpoint=\"{endpoint}\",status_class=\"{class}\"}}"
        )
    };
    tests::eventually(WAIT, "the base's slow answer counted", || async {
        (dispatcher.metric(&series("shop", "2xx")).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(dispatcher.metric(&series("shop", "timeout")).await, 0.0);
    assert_eq!(dispatcher.metric(&series("shop~prd", "timeout")).await, 1.0);
    // Labels stay bounded: per endpoint (and variant), never per tenant.
    let text = dispatcher.metrics_text().await;
    assert!(text.contains("endpoint=\"shop~snd\""));
    assert!(!text.contains("tenant") && !text.contains("acme"), "{text}");
    dispatcher.stop().await.expect("clean stop");

    for (rx, events, secret, others) in [
        (&base_rx, &base, S0, [S1, S2]),
        (&prd_rx, &prd, S1, [S0, S2]),
        (&snd_rx, &snd, S2, [S0, S1]),
    ] {
        assert_eq!(
            rx.ids().into_iter().collect::<BTreeSet<_>>(),
            ids(events.iter()),
            "{}",
            rx.url
        );
        for request in rx.received() {
            assert!(verifies(secret, &request), "signed with its own secret");
            assert!(!others.iter().any(|s| verifies(s, &request)));
        }
    }
    assert_eq!(
        snd_rx.received()[0].header("x-env").as_deref(),
        Some("sandbox")
    );
    assert_eq!(
        prd_rx.received()[0].header("x-env"),
        None,
        "headers are per environment"
    );
    // Method and timeout are per environment too.
    assert!(snd_rx.received().iter().all(|r| r.method == "PUT"));
    assert!(prd_rx.received().iter().all(|r| r.method == "POST"));
    assert!(base_rx.received().iter().all(|r| r.method == "POST"));
    let topology = Topology::new(&config.amqp);
    let unrouted = scope.take(&topology.unrouted_scoped(), 3).await;
    assert_eq!(ids_in(&unrouted), ids(&stray));
}

#[tokio::test]
async fn a_failing_sandbox_never_delays_production_and_its_dead_letters_say_so() {
    let scope = Scope::new().await;
    let prd_rx = Receiver::start().await;
    let snd_rx = Receiver::with(std::sync::Arc::new(|_, _| Reply::Status(503, Vec::new()))).await;
    let config = scope.config(&format!(
        "{FAST}{}",
        endpoint(
            "shop",
            "http://127.0.0.1:9/",
            &["order.*"],
            &format!(
                "tenant = \"acme\"\nmax_retries = 1\nenvironments = {{ prd = {{ url = \"{}\" }}, snd = {{ url = \"{}\" }} }}",
                prd_rx.url, snd_rx.url
            )
        ),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let snd: Vec<Event> = (0..3)
        .map(|_| event("order.created", Some("acme"), Some("snd")))
        .collect();
    let prd: Vec<Event> = (0..3)
        .map(|_| event("order.created", Some("acme"), Some("prd")))
        .collect();
    publish(&publisher, &snd).await;
    publish(&publisher, &prd).await;
    let want: Vec<String> = prd.iter().map(|e| e.id.clone()).collect();
    prd_rx.wait_ids(&want, WAIT).await;

    let topology = Topology::new(&config.amqp);
    let dead = scope.take(&topology.dead(), 3).await;
    assert_eq!(ids_in(&dead), ids(&snd));
    for letter in &dead {
        assert_eq!(
            header_str(letter, "hookpost-endpoint").as_deref(),
            Some("shop~snd")
        );
        assert_eq!(
            header_str(letter, "hookpost-tenant").as_deref(),
            Some("acme")
        );
        assert_eq!(
            header_str(letter, "hookpost-environment").as_deref(),
            Some("snd")
        );
        assert_eq!(
            header_str(letter, "hookpost-reason").as_deref(),
            Some("exhausted")
        );
    }
    dispatcher.stop().await.expect("clean stop");
    assert_eq!(prd_rx.ids().len(), 3);
}

/// A plain AMQP client publishing by the documented scheme is delivered; one
/// whose routing key disagrees with its envelope is dead-lettered as
/// `misrouted`, never delivered.
#[tokio::test]
async fn a_plain_amqp_client_routes_by_key_and_a_lying_envelope_is_misrouted() {
    let scope = Scope::new().await;
    let (acme_rx, global_rx) = (Receiver::start().await, Receiver::start().await);
    let config = scope.config(&format!(
        "{FAST}{}{}",
        endpoint("acme", &acme_rx.url, &["order.*"], "tenant = \"acme\""),
        endpoint("analytics", &global_rx.url, &["order.*"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let topology = Topology::new(&config.amqp);
    let raw = |exchange: String, key: &'static str, event: Event| {
        let channel = scope.channel.clone();
        async move {
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &event.to_vec(),
                    BasicProperties::default().with_message_id(event.id.as_str().into()),
                )
                .await
                .expect("publish")
                .await
                .expect("sent");
            event.id
        }
    };
    let honest = raw(
        topology.scoped_exchange(),
        "t=acme.e=.order.created",
        event("order.created", Some("acme"), None),
    )
    .await;
    let lying = raw(
        topology.scoped_exchange(),
        "t=acme.e=.order.created",
        event("order.created", Some("globex"), None),
    )
    .await;
    let sandbox_on_plain_key = raw(
        topology.events_exchange(),
        "order.created",
        event("order.created", None, Some("snd")),
    )
    .await;
    acme_rx.wait_ids(std::slice::from_ref(&honest), WAIT).await;
    global_rx
        .wait_ids(&[honest.clone(), lying.clone()], WAIT)
        .await;
    let dead = scope.take(&topology.dead(), 2).await;
    let mut seen: Vec<(String, String, String)> = dead
        .iter()
        .map(|m| {
            (
                Event::from_slice(&m.delivery.data).expect("envelope").id,
                header_str(m, "hookpost-endpoint").unwrap_or_default(),
                header_str(m, "hookpost-reason").unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (lying.clone(), "acme".to_owned(), "misrouted".to_owned()),
        // The global endpoint accepts any tenant, but not an environment it
        // did not declare.
        (
            sandbox_on_plain_key.clone(),
            "analytics".to_owned(),
            "misrouted".to_owned(),
        ),
    ];
    // The lying event also reached the global endpoint legitimately (it
    // takes every tenant's events): delivered there, not dead-lettered.
    want.sort();
    dispatcher.stop().await.expect("clean stop");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen, want);
    assert!(!acme_rx.ids().contains(&lying));
    assert!(!acme_rx.ids().contains(&sandbox_on_plain_key));
    assert!(global_rx.ids().contains(&lying));
    assert!(!global_rx.ids().contains(&sandbox_on_plain_key));
}

/// The scale scenario at a size CI affords (the benchmark runs 1,000
/// tenants): 40 tenants with three endpoints each on one dispatcher, events
/// for every tenant; each endpoint gets exactly its tenant's matching events.
#[tokio::test]
async fn forty_tenants_with_three_endpoints_each_get_exactly_their_events() {
    const TENANTS: usize = 40;
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let kinds = [
        ("orders", "order.*"),
        ("billing", "invoice.*"),
        ("all", "#"),
    ];
    let mut endpoints = String::new();
    for t in 0..TENANTS {
        for (name, pattern) in kinds {
            endpoints.push_str(&endpoint(
                &format!("t{t}-{name}"),
                &format!("{}/t{t}/{name}", receiver.url.trim_end_matches('/')),
                &[pattern],
                &format!("tenant = \"t{t}\""),
            ));
        }
    }
    let config = scope.config_with(
        &format!("{FAST}{endpoints}"),
        "queue_type = \"classic\"",
        &tests::amqp_url(),
    );
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let events: Vec<Event> = (0..TENANTS)
        .flat_map(|t| {
            [
                "order.created",
                "order.paid",
                "invoice.sent",
                "user.created",
            ]
            .map(|ty| event(ty, Some(&format!("t{t}")), None))
        })
        .collect();
    publish(&publisher, &events).await;
    let all: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    // The `all` endpoints together receive every event once; 7 per tenant in total.
    receiver
        .wait_requests(TENANTS * 7, Duration::from_secs(60))
        .await;
    receiver.wait_ids(&all, WAIT).await;
    dispatcher.stop().await.expect("clean stop");
    let received = receiver.received();
    assert_eq!(received.len(), TENANTS * 7);
    for t in 0..TENANTS {
        let tenant = format!("t{t}");
        for (name, pattern) in kinds {
            let path_end = format!("/t{t}/{name}");
            let got: BTreeSet<String> = received
                .iter()
                .filter(|r| r.path.ends_with(&path_end))
                .flat_map(tests::receiver::Received::ids)
                .collect();
            let want = ids(events.iter().filter(|e| {
                e.tenant.as_deref() == Some(tenant.as_str())
                    && common::routing::topic_matches(pattern, &e.event_type)
            }));
            assert_eq!(got, want, "{path_end}");
        }
    }
}

/// An endpoint whose queue an older version bound with plain patterns gets
/// its scoped bindings at the next start; giving it a tenant later removes
/// its global bindings (the recorded keys it no longer wants are unbound).
#[tokio::test]
async fn an_existing_endpoint_gains_tenant_events_and_a_tenant_change_rebinds_it() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let global = scope.config(&format!(
        "{FAST}{}",
        endpoint("legacy", &receiver.url, &["order.*"], "")
    ));
    let topology = Topology::new(&global.amqp);
    // What a version before tenants declared: the pattern on `events` only.
    topology
        .declare_base(&scope.connection, &scope.channel)
        .await
        .expect("base");
    topology
        .declare_endpoint(&scope.channel, "legacy", &["order.*".to_owned()])
        .await
        .expect("old-style endpoint");
    let dispatcher = Running::start(global.clone()).await;
    let publisher = Publisher::connect(&global).await.expect("connect");
    let before = [
        event("order.created", None, None),
        event("order.created", Some("acme"), None),
    ];
    publish(&publisher, &before).await;
    receiver
        .wait_ids(
            &before.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            WAIT,
        )
        .await;
    dispatcher.stop().await.expect("clean stop");

    let tenant = scope.config(&format!(
        "{FAST}{}",
        endpoint("legacy", &receiver.url, &["order.*"], "tenant = \"acme\"")
    ));
    let dispatcher = Running::start(tenant).await;
    let after = [
        event("order.created", None, None),
        event("order.created", Some("globex"), None),
        event("order.created", Some("acme"), None),
    ];
    publish(&publisher, &after).await;
    receiver
        .wait_ids(std::slice::from_ref(&after[2].id), WAIT)
        .await;
    dispatcher.stop().await.expect("clean stop");
    let got: BTreeSet<String> = receiver.ids().into_iter().collect();
    assert!(
        !got.contains(&after[0].id) && !got.contains(&after[1].id),
        "{got:?}"
    );
    // The untenanted event found no endpoint: kept in `unrouted`.
    let unrouted = scope.take(&topology.unrouted(), 1).await;
    assert_eq!(ids_in(&unrouted), ids([&after[0]]));
}

/// `Event`'s fields are public: the Publisher checks them again, since the
/// tenant and environment become the routing key.
#[tokio::test]
async fn the_publisher_refuses_an_event_whose_scope_was_changed_after_it_was_built() {
    let scope = Scope::new().await;
    let config = scope.config("");
    let publisher = Publisher::connect(&config).await.expect("connect");
    let mut forged = event("order.created", Some("acme"), None);
    forged.tenant = Some("acme.e=prd".into());
    let err = publisher.publish(&forged).await.expect_err("refused");
    assert!(
        matches!(err, producer::PublishError::Invalid { .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("tenant"), "{err}");
}
