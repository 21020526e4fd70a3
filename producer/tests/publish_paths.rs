//! Every way of publishing carries a tenant and an environment to the
//! endpoint variant they name, end to end: the Rust library, the CLI
//! (`hookpost-producer publish --tenant --environment`), the HTTP ingest and
//! a plain AMQP client following the README's routing key scheme.

use common::Event;
use common::topology::Topology;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use std::process::Command;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint};
use tests::receiver::Receiver;
use tests::{Scope, amqp_url, eventually};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "ingest-token-for-the-publish-paths-test";

#[tokio::test]
async fn every_publishing_path_reaches_only_the_named_tenant_and_environment() {
    let scope = Scope::new().await;
    let (acme_base, acme_snd, globex_base, globex_snd) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let variant = |tenant: &str, url: &str| {
        format!("tenant = \"{tenant}\"\nenvironments = {{ snd = {{ url = \"{url}\" }} }}")
    };
    let config = scope.config(&format!(
        "{FAST}[ingest]\ntokens = [\"{TOKEN}\"]\n{}{}",
        endpoint(
            "acme-shop",
            &acme_base.url,
            &["order.*"],
            &variant("acme", &acme_snd.url),
        ),
        endpoint(
            "globex-shop",
            &globex_base.url,
            &["order.*"],
            &variant("globex", &globex_snd.url),
        ),
    ));
    scope.track_config(&config);
    let dispatcher = Running::start(config.clone()).await;
    let mut sent = Vec::new();

    // The library.
    let publisher = producer::Publisher::connect(&config)
        .await
        .expect("connect");
    let event = Event::new("order.created", serde_json::json!({ "via": "library" }))
        .expect("type")
        .with_scope(Some("acme"), Some("snd"))
        .expect("scope");
    publisher.publish(&event).await.expect("published");
    sent.push(event.id.clone());

    // The CLI: it prints the id it published.
    let out = Command::new(env!("CARGO_BIN_EXE_hookpost-producer"))
        .env_remove("HOOKPOST_CONFIG")
        .env("HOOKPOST_AMQP_URL", amqp_url())
        .env("HOOKPOST_AMQP_PREFIX", &scope.prefix)
        .env("HOOKPOST_LOG", "warn")
        .args([
            "publish",
            "--type",
            "order.paid",
            "--tenant",
            "acme",
            "--environment",
            "snd",
        ])
        .output()
        .expect("run hookpost-producer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!printed.is_empty(), "the CLI printed no id");
    sent.push(printed);

    // The HTTP ingest.
    let (ingest, metrics) = (
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    );
    let base = format!("http://{}", ingest.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let serving = tokio::spawn(producer::serve(
        config.clone(),
        producer::Listeners {
            ingest,
            metrics,
            api: None,
        },
        stop.clone(),
    ));
    let client = tests::http_client();
    let answer: serde_json::Value = eventually(WAIT, "the ingest accepts the event", || {
        let request = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(r#"{"type":"order.shipped","tenant":"acme","environment":"snd"}"#);
        async move {
            let response = request.send().await.ok()?;
            (response.status() == 202).then_some(())?;
            serde_json::from_slice(&response.bytes().await.ok()?).ok()
        }
    })
    .await;
    let id = answer["ids"][0]
        .as_str()
        .expect("the ingest answers the id");
    sent.push(id.to_owned());

    // A plain AMQP client, by the documented scheme.
    let plain = Event::new("order.refunded", serde_json::json!({ "via": "amqp" }))
        .expect("type")
        .with_scope(Some("acme"), Some("snd"))
        .expect("scope");
    scope
        .channel
        .basic_publish(
            Topology::new(&config.amqp)
                .scoped_exchange()
                .as_str()
                .into(),
            "t=acme.e=snd.order.refunded".into(),
            BasicPublishOptions::default(),
            &plain.to_vec(),
            BasicProperties::default().with_message_id(plain.id.as_str().into()),
        )
        .await
        .expect("publish")
        .await
        .expect("sent");
    sent.push(plain.id.clone());

    acme_snd.wait_ids(&sent, WAIT).await;
    // Then nothing else: the other receivers got nothing, and nothing waits
    // in their queues either.
    stop.cancel();
    serving.await.expect("serve task").expect("serve");
    publisher.close().await;
    dispatcher.stop().await.expect("clean stop");
    let mut got = acme_snd.ids();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "each path delivered once, to acme's snd URL");
    assert!(
        acme_base.ids().is_empty(),
        "a sandbox event reached the base URL"
    );
    assert!(
        globex_snd.ids().is_empty() && globex_base.ids().is_empty(),
        "another tenant's endpoint got acme's events"
    );
    // Nor is anything still on its way to them: their queues are empty.
    for queue in [
        "acme-shop",
        "acme-shop~snd",
        "globex-shop",
        "globex-shop~snd",
    ] {
        let name = format!("{}.ep.{queue}", scope.prefix);
        assert_eq!(scope.depth(&name).await, 0, "{name}");
    }
}
