//! Many endpoints on one dispatcher (issue 15), at a size CI affords: more
//! endpoints than the consumer-channel pool has channels, two dispatchers
//! sharing them, and a reload that adds and removes hundreds. Full size
//! (10,000 endpoints) is the benchmark's job.

use common::Config;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::receiver::Receiver;
use tests::{Scope, eventually};

/// `[[endpoints]]` `from..to`, each subscribed to `scale.<i>` and delivering
/// to `<url>/ep/<i>` (the receiver's URL is `…/hook`).
fn endpoints(from: usize, to: usize, url: &str) -> String {
    (from..to)
        .map(|i| {
            format!(
                "[[endpoints]]\nid = \"ep-{i}\"\nurl = \"{url}/ep/{i}\"\nevents = [\"scale.{i}\"]\n"
            )
        })
        .collect()
}

fn config(scope: &Scope, from: usize, to: usize, url: &str) -> Config {
    scope.config_with(
        &format!(
            "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n{}",
            endpoints(from, to, url)
        ),
        "queue_type = \"classic\"\nconsume_channels = 8\npublish_channels = 2",
        &tests::amqp_url(),
    )
}

/// Publishes one event of type `scale.<i>` for each `i` and returns the ids by `i`.
async fn publish(config: &Config, range: std::ops::Range<usize>) -> BTreeMap<usize, String> {
    let publisher = producer::Publisher::connect(config)
        .await
        .expect("publisher");
    let mut ids = BTreeMap::new();
    let events: Vec<common::Event> = range
        .clone()
        .map(|i| {
            common::EventDraft {
                id: None,
                event_type: format!("scale.{i}"),
                timestamp: None,
                source: None,
                tenant: None,
                environment: None,
                data: serde_json::json!({ "i": i }),
            }
            .into_event()
            .expect("event")
        })
        .collect();
    publisher.publish_many(&events).await.expect("published");
    publisher.close().await;
    for (i, e) in range.zip(&events) {
        ids.insert(i, e.id.clone());
    }
    ids
}

/// What the receiver got, as `i` → event ids, from the request paths.
fn received_by_endpoint(receiver: &Receiver) -> BTreeMap<usize, Vec<String>> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for r in receiver.received() {
        let i = r
            .path
            .strip_prefix("/hook/ep/")
            .and_then(|i| i.parse().ok())
            .expect("path /ep/<i>");
        for e in r.events() {
            out.entry(i)
                .or_default()
                .push(e["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_hundred_endpoints_share_a_bounded_channel_pool() {
    const N: usize = 300;
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = config(&scope, 0, N, &receiver.url);
    let dispatcher = Running::start(config.clone()).await;
    // Ready means every endpoint has its consumer.
    let text = dispatcher.metrics_text().await;
    let consuming = text
        .lines()
        .filter(|l| l.starts_with("hookpost_consuming{") && l.ends_with(" 1"))
        .count();
    assert_eq!(consuming, N, "ready before every endpoint consumed");
    // 300 consumers on at most 8 consumer channels and 2 publishing ones.
    assert_eq!(
        dispatcher
            .metric("hookpost_amqp_channels{role=\"consume\"}")
            .await,
        8.0
    );
    let ids = publish(&config, 0..N).await;
    eventually(
        Duration::from_secs(60),
        "every endpoint delivered",
        || async { (received_by_endpoint(&receiver).len() == N).then_some(()) },
    )
    .await;
    let got = received_by_endpoint(&receiver);
    for (i, id) in &ids {
        assert_eq!(
            got[i],
            vec![id.clone()],
            "endpoint {i} got exactly its event"
        );
    }
    assert!(
        dispatcher
            .metric("hookpost_amqp_channels{role=\"publish\"}")
            .await
            <= 2.0
    );
    dispatcher.stop().await.expect("clean stop");
    // Deliveries on shared channels were acked: once the dispatcher's
    // channels are closed (which would return anything unacked), every
    // queue is empty.
    let topology = common::topology::Topology::new(&config.amqp);
    for i in 0..N {
        assert_eq!(
            scope
                .depth(&topology.endpoint_queue(&format!("ep-{i}")))
                .await,
            0,
            "ep-{i} left a message unacked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_share_hundreds_of_endpoints() {
    const N: usize = 200;
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = config(&scope, 0, N, &receiver.url);
    let a = Running::start(config.clone()).await;
    let b = Running::start(config.clone()).await;
    let first = publish(&config, 0..N).await;
    let second = publish(&config, 0..N).await;
    eventually(Duration::from_secs(60), "every event delivered", || async {
        let got = received_by_endpoint(&receiver);
        (got.values().map(Vec::len).sum::<usize>() >= 2 * N).then_some(())
    })
    .await;
    let got = received_by_endpoint(&receiver);
    for i in 0..N {
        let mut want = vec![first[&i].clone(), second[&i].clone()];
        let mut have = got[&i].clone();
        want.sort();
        have.sort();
        assert_eq!(have, want, "endpoint {i}: each event once");
    }
    let served = |text: String| {
        text.lines()
            .filter(|l| {
                l.starts_with("hookpost_deliveries_total{") && l.contains("outcome=\"delivered\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let (sa, sb) = (
        served(a.metrics_text().await),
        served(b.metrics_text().await),
    );
    assert_eq!(sa + sb, (2 * N) as f64, "a {sa} + b {sb}");
    a.stop().await.expect("clean stop");
    b.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_adds_and_removes_hundreds_of_endpoints() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let before = config(&scope, 0, 200, &receiver.url);
    let after = config(&scope, 100, 300, &receiver.url);
    let dispatcher = Running::start(before).await;
    dispatcher.reload.send(after.clone()).await.expect("reload");
    // The removed endpoints stop consuming; the added ones start.
    eventually(Duration::from_secs(60), "reload applied", || async {
        let text = dispatcher.metrics_text().await;
        let on = |i: usize| text.contains(&format!("hookpost_consuming{{endpoint=\"ep-{i}\"}} 1"));
        ((100..300).all(on) && !(0..100).any(on)).then_some(())
    })
    .await;
    dispatcher.wait_ready().await;
    let ids = publish(&after, 0..300).await;
    eventually(
        Duration::from_secs(60),
        "the kept and added endpoints delivered",
        || async {
            let got = received_by_endpoint(&receiver);
            (100..300).all(|i| got.contains_key(&i)).then_some(())
        },
    )
    .await;
    let got = received_by_endpoint(&receiver);
    for i in 100..300 {
        assert_eq!(got[&i], vec![ids[&i].clone()], "endpoint {i}");
    }
    assert!(
        (0..100).all(|i| !got.contains_key(&i)),
        "removed endpoints got nothing"
    );
    // Their events went unrouted (bindings removed), not lost.
    let topology = common::topology::Topology::new(&after.amqp);
    assert_eq!(scope.depth(&topology.unrouted()).await, 100);
    dispatcher.stop().await.expect("clean stop");
}
