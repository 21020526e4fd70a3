//! Bad input of every kind gets a clear outcome and never stalls a queue:
//! odd and oversized messages, hostile endpoints.

use common::Event;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use producer::{PublishError, Publisher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::dispatcher_harness::Running;
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn header(msg: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    match msg
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn oversized_and_odd_messages_have_clear_outcomes() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.config_with(
        &format!("[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[[endpoints]]\nid = \"ep\"\nurl = \"{}\"\nevents = [\"#\"]\n", receiver.url),
        "max_message_bytes = 2048",
        &tests::amqp_url(),
    );
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");

    // The publisher refuses an event over the limit, naming it.
    let huge = Event::new("a.b", serde_json::json!({ "blob": "x".repeat(4096) })).expect("valid");
    let err = publisher.publish(&huge).await.expect_err("too large");
    assert!(
        matches!(err, PublishError::TooLarge { .. }) && !err.is_retryable(),
        "{err}"
    );

    // Any AMQP client can still send one: the dispatcher dead-letters it.
    let exchange = format!("{}.events", scope.prefix);
    let send = |body: Vec<u8>, props: BasicProperties| {
        let ch = scope.channel.clone();
        let exchange = exchange.clone();
        async move {
            ch.basic_publish(
                exchange.as_str().into(),
                "a.b".into(),
                Default::default(),
                &body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    };
    send(huge.to_vec(), BasicProperties::default()).await;

    // Odd properties: a garbage attempt header, no content type, a priority,
    // an expiration: delivered as attempt 1.
    let odd = Event::new("a.b", serde_json::json!({"odd": true})).expect("valid");
    let mut headers = FieldTable::default();
    headers.insert(
        "hookpost-attempt".into(),
        AMQPValue::LongString("many".into()),
    );
    headers.insert("x-custom".into(), AMQPValue::Boolean(true));
    send(
        odd.to_vec(),
        BasicProperties::default()
            .with_headers(headers)
            .with_priority(9)
            .with_expiration("600000".into()),
    )
    .await;
    // Valid JSON, not an envelope; and a body with a wrong type.
    send(br#"[1,2,3]"#.to_vec(), BasicProperties::default()).await;
    send(
        br#"{"id":"x","type":"a.b","timestamp":"2026-01-01T00:00:00Z","data":1,"source":7}"#
            .to_vec(),
        BasicProperties::default(),
    )
    .await;

    let ok = Event::new("a.b", serde_json::Value::Null).expect("valid");
    publisher.publish(&ok).await.expect("published");
    receiver
        .wait_ids(&[odd.id.clone(), ok.id.clone()], WAIT)
        .await;
    let odd_request = receiver
        .received()
        .into_iter()
        .find(|r| r.ids() == [odd.id.clone()])
        .expect("odd delivered");
    assert_eq!(odd_request.header("hookpost-attempt").as_deref(), Some("1"));

    let dead = scope.take(&format!("{}.dead", scope.prefix), 3).await;
    assert!(
        dead.iter()
            .all(|m| header(m, "hookpost-reason").as_deref() == Some("malformed"))
    );
    let errors: Vec<String> = dead
        .iter()
        .filter_map(|m| header(m, "hookpost-last-error"))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("max_message_bytes")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("source")), "{errors:?}");
    dispatcher.stop().await.expect("clean stop");
}

#[tokio::test]
async fn hostile_endpoints_never_stall_delivery() {
    let scope = Scope::new().await;
    let endless = Receiver::with(Arc::new(|_, _| Reply::Endless)).await;
    let redirect_url = Arc::new(std::sync::OnceLock::<String>::new());
    let target = redirect_url.clone();
    let redirecting = Receiver::with(Arc::new(move |_, _| {
        Reply::Status(
            302,
            vec![("location", target.get().cloned().unwrap_or_default())],
        )
    }))
    .await;
    redirect_url.set(redirecting.url.clone()).expect("once");
    let slow = Receiver::with(Arc::new(|_, _| Reply::Delay(Duration::from_secs(5), 200))).await;
    let resetting = Receiver::with(Arc::new(|_, _| Reply::Abort)).await;
    // A plain-HTTP port spoken to over TLS: the handshake fails.
    let bad_tls = Receiver::start().await;
    let tls_url = bad_tls.url.replace("http://", "https://");
    let healthy = Receiver::start().await;
    let endpoint = |id: &str, url: &str| {
        format!("[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nevents = [\"#\"]\n")
    };
    let config = scope.config(&format!(
        "[http]\nallowed_networks = [\"127.0.0.0/8\"]\nmax_response_body_bytes = 1024\n[defaults]\ntimeout_ms = 500\nmax_retries = 1\nretry_delay_ms = 50\n{}{}{}{}{}{}",
        endpoint("endless", &endless.url),
        endpoint("redirecting", &redirecting.url),
        endpoint("slow", &slow.url),
        endpoint("resetting", &resetting.url),
        endpoint("badtls", &tls_url),
        endpoint("healthy", &healthy.url),
    ));
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let started = Instant::now();
    let events: Vec<Event> = (0..3)
        .map(|i| Event::new("a.b", serde_json::json!({ "i": i })).expect("valid"))
        .collect();
    publisher.publish_many(&events).await.expect("published");
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();

    healthy.wait_ids(&ids, WAIT).await;
    // An endless body is cut at the cap: delivered (2xx), not stuck.
    eventually(WAIT, "endless-body endpoint delivered", || async {
        (dispatcher
            .metric("hookpost_deliveries_total{endpoint=\"endless\",outcome=\"delivered\"}")
            .await
            == 3.0)
            .then_some(())
    })
    .await;
    // The others dead-letter: redirect rejected at once; slow, resetting and bad TLS after one retry.
    let dead = scope.take(&format!("{}.dead", scope.prefix), 12).await;
    let by = |ep: &str| {
        dead.iter()
            .filter(|m| header(m, "hookpost-endpoint").as_deref() == Some(ep))
            .collect::<Vec<_>>()
    };
    assert!(
        by("redirecting")
            .iter()
            .all(|m| header(m, "hookpost-reason").as_deref() == Some("rejected"))
    );
    assert_eq!(by("redirecting").len(), 3);
    assert_eq!(
        redirecting.received().len(),
        3,
        "redirects are not followed"
    );
    for ep in ["slow", "resetting", "badtls"] {
        let letters = by(ep);
        assert_eq!(letters.len(), 3, "{ep}");
        assert!(
            letters
                .iter()
                .all(|m| header(m, "hookpost-reason").as_deref() == Some("exhausted")),
            "{ep}"
        );
    }
    assert!(
        by("slow")
            .iter()
            .all(|m| header(m, "hookpost-last-error").is_some_and(|e| e.contains("timed out")))
    );
    assert!(
        bad_tls.received().is_empty(),
        "no request got through a failed handshake"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "nothing stalled: {:?}",
        started.elapsed()
    );
    dispatcher.stop().await.expect("clean stop");
}
