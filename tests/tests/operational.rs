//! hookpost's operational events (issue 18) end to end, against the real
//! broker: endpoints subscribed to `hookpost.#` get `dead_lettered`,
//! `circuit_opened`, `paused` (410 and operator) and `resumed`, each with
//! the endpoint's tenant, so a tenant's subscriber sees only its tenant's;
//! a catch-all `#` endpoint gets none; and a failure to deliver an
//! operational event produces none.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, publish};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// (type, endpoint, reason) of every operational event `rx` got.
fn notices(rx: &Receiver) -> BTreeSet<(String, String, String)> {
    rx.received()
        .iter()
        .flat_map(tests::receiver::Received::events)
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["data"]["endpoint"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["data"]["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn notice(kind: &str, endpoint: &str, reason: &str) -> (String, String, String) {
    (kind.to_owned(), endpoint.to_owned(), reason.to_owned())
}

#[tokio::test]
async fn operational_events_reach_subscribers_with_the_endpoints_tenant() {
    let scope = Scope::new().await;
    let (ops, acme_ops, all) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let failing = Receiver::with(Arc::new(|_, _| Reply::Status(500, vec![]))).await;
    let gone = Receiver::with(Arc::new(|_, _| Reply::Status(410, vec![]))).await;
    let config = scope.config(&format!(
        "{FAST}{}{}{}{}{}{}{}",
        endpoint("ops", &ops.url, &["hookpost.#"], ""),
        endpoint(
            "acme-ops",
            &acme_ops.url,
            &["hookpost.#"],
            "tenant = \"acme\""
        ),
        endpoint("bad", &failing.url, &["order.*"], "max_retries = 0"),
        endpoint(
            "acme-bad",
            &failing.url,
            &["order.*"],
            "tenant = \"acme\"\nmax_retries = 0\nbreaker_failures = 1\nbreaker_cooldown_ms = 600000"
        ),
        endpoint("gone", &gone.url, &["invoice.*"], ""),
        endpoint("ops-bad", &failing.url, &["hookpost.#"], "max_retries = 0"),
        endpoint("all", &all.url, &["#"], ""),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("publisher");
    let acme_event = common::Event::new("order.created", serde_json::json!({}))
        .expect("event")
        .with_scope(Some("acme"), None)
        .expect("scope");
    publisher.publish(&acme_event).await.expect("publish");
    publish(&publisher, "invoice.paid", 1).await;
    let admin = dispatcher::admin::Admin::connect(config.clone())
        .await
        .expect("admin");
    admin.hold("acme-bad", true).await.expect("pause");
    admin.hold("acme-bad", false).await.expect("resume");

    let acme_notices = [
        notice("hookpost.delivery.dead_lettered", "acme-bad", "exhausted"),
        notice("hookpost.endpoint.circuit_opened", "acme-bad", "HTTP 500"),
        notice("hookpost.endpoint.paused", "acme-bad", "operator"),
        notice("hookpost.endpoint.resumed", "acme-bad", "operator"),
    ];
    let mut everything: BTreeSet<_> = acme_notices.iter().cloned().collect();
    everything.insert(notice(
        "hookpost.delivery.dead_lettered",
        "bad",
        "exhausted",
    ));
    everything.insert(notice("hookpost.endpoint.paused", "gone", "gone"));
    eventually(
        WAIT,
        "every operational event at the global subscriber",
        || async {
            let got = notices(&ops);
            everything.is_subset(&got).then_some(())
        },
    )
    .await;
    eventually(
        WAIT,
        "the tenant's operational events at its subscriber",
        || async {
            let got = notices(&acme_ops);
            acme_notices.iter().all(|n| got.contains(n)).then_some(())
        },
    )
    .await;
    // The tenant's subscriber got nothing of another endpoint.
    let got = notices(&acme_ops);
    assert!(
        got.iter().all(|(_, endpoint, _)| endpoint == "acme-bad"),
        "{got:?}"
    );
    let event = acme_ops.received()[0].events()[0].clone();
    assert_eq!(event["tenant"], "acme", "{event}");
    for field in ["endpoint", "reason", "event_id", "last_status"] {
        assert!(event["data"].get(field).is_some(), "{field} in {event}");
    }

    // ops-bad fails every operational event it gets: they are dead-lettered
    // and none of that is told. One more dead letter of `bad`, told after
    // them, arrives; nothing about ops-bad came before it.
    let dead_ops_bad = || async {
        let text = dispatcher.metrics_text().await;
        text.lines()
            .filter(|l| l.starts_with("hookpost_dead_letters_total{endpoint=\"ops-bad\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    eventually(WAIT, "ops-bad dead-lettered operational events", || async {
        (dead_ops_bad().await >= 3).then_some(())
    })
    .await;
    let last = publish(&publisher, "order.created", 1).await;
    eventually(WAIT, "the last dead letter told", || async {
        ops.received()
            .iter()
            .flat_map(tests::receiver::Received::events)
            .any(|e| e["data"]["event_id"] == last[0].as_str())
            .then_some(())
    })
    .await;
    // A catch-all `#` is not a subscription to hookpost's own events.
    let caught: Vec<String> = all
        .received()
        .iter()
        .flat_map(tests::receiver::Received::events)
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .filter(|t| t.starts_with("hookpost."))
        .collect();
    assert!(caught.is_empty(), "a `#` endpoint got {caught:?}");
    assert!(
        !all.received().is_empty(),
        "the `#` endpoint got the ordinary events"
    );
    let told = notices(&ops);
    assert!(
        told.iter().all(|(_, endpoint, _)| endpoint != "ops-bad"),
        "a failure to deliver an operational event was told: {told:?}"
    );
    admin.close().await;
    dispatcher.stop().await.expect("clean stop");
    publisher.close().await;
}
