//! Publishing while the broker comes and goes: every publish is either
//! confirmed or reported failed to its caller, and nothing reported
//! confirmed is missing afterwards. The broker "goes away" behind a TCP proxy
//! so that tests running beside this one are not disturbed.

use common::Event;
use producer::{PublishError, Publisher};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tests::proxy::{Proxy, broker_addr};
use tests::{Scope, amqp_url};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Takes the proxy down every `up` for `down`, until `stop`; counts the
/// outages in `outages` as they start, and returns their number.
fn flap_every(
    proxy: Arc<Proxy>,
    stop: Arc<AtomicBool>,
    (up, down): (Duration, Duration),
    outages: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(up).await;
            proxy.down();
            outages.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(down).await;
            proxy.up();
        }
        outages.load(Ordering::SeqCst)
    })
}

/// Takes the proxy down and up until `stop`.
fn flap(proxy: Arc<Proxy>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let periods = (Duration::from_millis(400), Duration::from_millis(600));
    flap_every(proxy, stop, periods, Arc::default())
}

/// A publisher whose broker connection goes through a proxy, with
/// `publish_timeout_ms`, and a queue observing every event.
async fn behind_proxy(publish_timeout_ms: u64) -> (Scope, Arc<Proxy>, Publisher, String) {
    let scope = Scope::new().await;
    let proxy = Arc::new(Proxy::start(broker_addr(&amqp_url())).await);
    let config = scope.config_with(
        "",
        &format!("publish_timeout_ms = {publish_timeout_ms}\nmax_reconnect_delay_ms = 200"),
        &proxy.amqp_url(&amqp_url()),
    );
    let publisher = Publisher::connect(&config).await.expect("connect");
    let all = scope
        .observe(&format!("{}.events", scope.prefix), "#")
        .await;
    (scope, proxy, publisher, all)
}

async fn stored_ids(scope: &Scope, queue: &str, at_least: &HashSet<String>) -> HashSet<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stored = HashSet::new();
    while !at_least.is_subset(&stored) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} events reported confirmed are not in the broker",
            at_least.difference(&stored).count()
        );
        for msg in scope.drain(queue).await {
            if let Some(id) = msg.delivery.properties.message_id().as_ref() {
                stored.insert(id.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stored
}

#[tokio::test]
async fn publish_many_during_outages_never_reports_a_lost_event_confirmed() {
    let (scope, proxy, publisher, all) = behind_proxy(1500).await;
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = flap(proxy.clone(), stop.clone());

    let (mut confirmed, mut failed) = (HashSet::new(), 0usize);
    for round in 0..30 {
        let events: Vec<Event> = (0..100)
            .map(|i| {
                Event::new("fault.test", serde_json::json!({ "round": round, "i": i }))
                    .expect("valid")
            })
            .collect();
        match publisher.publish_many(&events).await {
            Ok(()) => confirmed.extend(events.into_iter().map(|e| e.id)),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                failed += events.len();
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let outages = flapper.await.expect("flapper");
    proxy.up();
    assert!(outages >= 3, "the broker went away {outages} times");
    assert!(!confirmed.is_empty(), "some batches got through");
    let stored = stored_ids(&scope, &all, &confirmed).await;
    assert!(confirmed.is_subset(&stored));
    println!(
        "publish_many: {} confirmed, {failed} reported failed, {outages} outages",
        confirmed.len()
    );
}

/// Calls of several windows (3,500 events, 1,000 in flight at most): when
/// the channel fails, the unconfirmed events are published again, and a
/// call that lived through an outage still succeeds.
#[tokio::test]
async fn long_publish_many_calls_survive_outages() {
    let (scope, proxy, publisher, all) = behind_proxy(3000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let outages = Arc::new(AtomicUsize::new(0));
    let periods = (Duration::from_millis(700), Duration::from_millis(300));
    let flapper = flap_every(proxy.clone(), stop.clone(), periods, outages.clone());

    let (mut confirmed, mut failed, mut survived) = (HashSet::new(), 0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while (survived < 2 || rounds < 8) && tokio::time::Instant::now() < deadline {
        rounds += 1;
        let events: Vec<Event> = (0..3500)
            .map(|i| {
                Event::new("fault.test", serde_json::json!({ "round": rounds, "i": i }))
                    .expect("valid")
            })
            .collect();
        let before = outages.load(Ordering::SeqCst);
        match publisher.publish_many(&events).await {
            Ok(()) => {
                if outages.load(Ordering::SeqCst) != before {
                    survived += 1;
                }
                confirmed.extend(events.into_iter().map(|e| e.id));
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                failed += events.len();
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    flapper.await.expect("flapper");
    proxy.up();
    assert!(
        survived >= 2,
        "calls that lived through an outage and succeeded: {survived} of {rounds}"
    );
    let stored = stored_ids(&scope, &all, &confirmed).await;
    assert!(confirmed.is_subset(&stored));
    println!(
        "{rounds} calls of 3,500: {} events confirmed, {failed} reported failed, {survived} calls succeeded across an outage",
        confirmed.len()
    );
}

#[tokio::test]
async fn ingest_under_load_during_outages_never_answers_202_for_a_lost_event() {
    let scope = Scope::new().await;
    let proxy = Arc::new(Proxy::start(broker_addr(&amqp_url())).await);
    let config = scope.config_with(
        "[ingest]\ntokens = [\"faults-token-0123456789\"]\n",
        "publish_timeout_ms = 1500\nmax_reconnect_delay_ms = 200",
        &proxy.amqp_url(&amqp_url()),
    );
    // Declare the exchanges (directly) so the observer can bind before the first request.
    Publisher::connect(&scope.config(""))
        .await
        .expect("connect");
    let all = scope
        .observe(&format!("{}.events", scope.prefix), "#")
        .await;
    let (listener, metrics) = (
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    );
    let url = format!("http://{}/v1/events", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let listeners = producer::Listeners {
        ingest: listener,
        metrics,
        api: None,
    };
    let server = tokio::spawn(producer::serve(config, listeners, shutdown.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = flap(proxy.clone(), stop.clone());

    let clients: Vec<_> = (0..4)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                // An answer is due within publish_timeout_ms; 30 s is a hang.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let (mut accepted, mut refused) = (Vec::new(), 0usize);
                for i in 0..40 {
                    let body = serde_json::json!([{ "type": "fault.ingest", "data": { "c": c, "i": i } }, { "type": "fault.ingest" }]);
                    let r = match client
                        .post(&url)
                        .bearer_auth("faults-token-0123456789")
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                    {
                        Ok(r) => r,
                        Err(e) if e.is_timeout() => panic!("no answer within 30 s: {e}"),
                        Err(_) => {
                            refused += 1;
                            continue;
                        }
                    };
                    let status = r.status().as_u16();
                    let body = r.bytes().await.unwrap_or_else(|e| panic!("no whole answer within 30 s: {e}"));
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    match status {
                        202 => accepted.extend(body["ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned))),
                        503 => refused += 1,
                        other => panic!("unexpected status {other}: {body}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let (mut accepted, mut refused) = (HashSet::new(), 0usize);
    for client in clients {
        let (a, r) = client.await.expect("client");
        accepted.extend(a);
        refused += r;
    }
    stop.store(true, Ordering::SeqCst);
    let outages = flapper.await.expect("flapper");
    proxy.up();
    assert!(outages >= 1);
    assert!(!accepted.is_empty());
    let stored = stored_ids(&scope, &all, &accepted).await;
    assert!(accepted.is_subset(&stored));
    println!(
        "ingest: {} events accepted (202), {refused} requests refused (503), {outages} outages",
        accepted.len()
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the ingest server stops within 30 s")
        .expect("join")
        .expect("stopped");
}

/// A broker that stops reading (what a blocked connection looks like on the
/// wire, before or without a `connection.blocked` notice): a publish fails
/// within `publish_timeout_ms` and closing returns within its own bound
/// (it waited forever for the broker's close-ok before).
#[tokio::test]
async fn stalled_broker_publish_and_close_are_bounded() {
    let scope = Scope::new().await;
    let proxy = Proxy::start(broker_addr(&amqp_url())).await;
    let timeout = Duration::from_millis(1500);
    let config = scope.config_with(
        "",
        &format!("publish_timeout_ms = {}", timeout.as_millis()),
        &proxy.amqp_url(&amqp_url()),
    );
    let publisher = Publisher::connect(&config).await.expect("connect");
    let event = Event::new("stall.test", serde_json::Value::Null).expect("valid");
    publisher
        .publish(&event)
        .await
        .expect("confirmed before the stall");

    proxy.stall();
    let started = tokio::time::Instant::now();
    let err = publisher
        .publish(&event)
        .await
        .expect_err("no confirm through a stalled broker");
    let took = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    assert!(
        took < timeout + Duration::from_millis(500),
        "publish took {took:?}: {err}"
    );

    let started = tokio::time::Instant::now();
    tokio::time::timeout(
        common::amqp::CLOSE_TIMEOUT + Duration::from_secs(1),
        publisher.close(),
    )
    .await
    .expect("close returns within its bound");
    println!(
        "stalled: publish failed after {took:?} ({err}); close took {:?}",
        started.elapsed()
    );

    // After the stall, a new publisher gets through.
    proxy.resume();
    let again = Publisher::connect(&config).await.expect("reconnect");
    again
        .publish(&event)
        .await
        .expect("confirmed after the stall");
    again.close().await;
}

/// A broker that stalls in the middle of a long `publish_many` fails the
/// call between one timeout and a timeout and a quarter after its last
/// confirm, though the call had
/// already lasted longer than the timeout; the events before the one it
/// names were all stored.
#[tokio::test]
async fn a_long_publish_many_fails_one_timeout_after_the_broker_stalls() {
    let scope = Scope::new().await;
    let proxy = Proxy::start(broker_addr(&amqp_url())).await;
    // Not shorter: the broker's pauses passed 500 ms beside the other tests
    // (session 34), and failed the call before the stall.
    let timeout = Duration::from_millis(1000);
    let config = scope.config_with(
        "",
        &format!("publish_timeout_ms = {}", timeout.as_millis()),
        &proxy.amqp_url(&amqp_url()),
    );
    let publisher = Arc::new(Publisher::connect(&config).await.expect("connect"));
    let all = scope
        .observe(&format!("{}.events", scope.prefix), "#")
        .await;
    // Far more than the broker stores before the stall.
    let events: Arc<Vec<Event>> = Arc::new(
        (0..100_000)
            .map(|i| Event::new("stall.long", serde_json::json!({ "i": i })).expect("valid"))
            .collect(),
    );
    let call = {
        let (publisher, events) = (publisher.clone(), events.clone());
        tokio::spawn(async move { publisher.publish_many(&events).await })
    };
    // Stall once the broker has been storing the call's events for longer
    // than the timeout (seen on the test's own connection, not the proxy's).
    tests::eventually(
        Duration::from_secs(60),
        "the first events stored",
        || async { (scope.depth(&all).await > 0).then_some(()) },
    )
    .await;
    let storing = tokio::time::Instant::now();
    tests::eventually(
        Duration::from_secs(60),
        "the call to publish for longer than the timeout",
        || async { (storing.elapsed() > 2 * timeout).then_some(()) },
    )
    .await;
    if call.is_finished() {
        panic!("the call ended before the stall: {:?}", call.await);
    }
    proxy.stall();
    let stalled = tokio::time::Instant::now();
    let result = tokio::time::timeout(timeout + Duration::from_secs(10), call)
        .await
        .expect("the call ends after the stall")
        .expect("join");
    let after_stall = stalled.elapsed();
    let id = match result {
        Err(PublishError::Timeout { id, .. }) => id,
        other => panic!("a timeout expected: {other:?}"),
    };
    assert!(
        after_stall < timeout + timeout / 4 + Duration::from_millis(700),
        "failed {after_stall:?} after the stall (timeout {timeout:?})"
    );
    // The named event is the oldest unconfirmed: every one before it is stored.
    let index = events
        .iter()
        .position(|e| e.id == id)
        .expect("the error names an event of the call");
    let depth = scope.depth(&all).await;
    assert!(
        usize::try_from(depth).expect("u32") >= index,
        "{index} events confirmed, {depth} stored"
    );
    println!(
        "stalled after {:?} of publishing: failed {after_stall:?} later on event {index}, {depth} stored",
        stalled - storing
    );
    proxy.resume();
    publisher.close().await;
}
