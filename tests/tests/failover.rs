//! `amqp.urls`: a process fails over to the next broker address when it
//! loses its node. Two proxies in front of the one local broker stand for
//! two nodes (a real cluster is `cluster.rs`'s); cutting one must move the
//! dispatcher and the publisher to the other without losing an event.

use common::Config;
use producer::Publisher;
use std::time::Duration;
use tests::dispatcher_harness::Running;
use tests::fixtures::{FAST, endpoint, publish};
use tests::proxy::{Proxy, broker_addr};
use tests::receiver::Receiver;
use tests::{Scope, amqp_url, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn node(url: &str) -> String {
    common::amqp::node_label(url)
}

#[tokio::test]
async fn the_dispatcher_and_the_publisher_fail_over_to_the_next_url() {
    let scope = Scope::new().await;
    let (first, second) = (
        Proxy::start(broker_addr(&amqp_url())).await,
        Proxy::start(broker_addr(&amqp_url())).await,
    );
    let (first_url, second_url) = (first.amqp_url(&amqp_url()), second.amqp_url(&amqp_url()));
    let receiver = Receiver::start().await;
    let text = format!(
        "[amqp]\nurls = [\"{first_url}\", \"{second_url}\"]\nprefix = \"{}\"\nmax_reconnect_delay_ms = 200\npublish_timeout_ms = 10000\n{FAST}{}",
        scope.prefix,
        endpoint("ep", &receiver.url, &["#"], "")
    );
    let config = Config::from_toml_str(&text, "failover.toml".as_ref(), &[]).expect("config");
    scope.track_config(&config);
    assert_eq!(config.amqp.urls.len(), 2);
    let dispatcher = Running::start(config.clone()).await;
    let publisher = Publisher::connect(&config).await.expect("connect");
    let on = |url: &str| format!("hookpost_broker_node{{node=\"{}\"}}", node(url));
    assert_eq!(dispatcher.metric(&on(&first_url)).await, 1.0);
    assert_eq!(dispatcher.metric(&on(&second_url)).await, 0.0);
    let before = publish(&publisher, "a.b", 5).await;
    receiver.wait_ids(&before, WAIT).await;

    // The first "node" dies: both processes move to the second.
    first.down();
    eventually(WAIT, "the dispatcher on the second node", || async {
        (dispatcher.metric(&on(&second_url)).await == 1.0).then_some(())
    })
    .await;
    dispatcher.wait_ready().await;
    assert_eq!(dispatcher.metric(&on(&first_url)).await, 0.0);
    let after = publish(&publisher, "a.b", 5).await;
    receiver.wait_ids(&after, WAIT).await;
    dispatcher.stop().await.expect("clean stop");
    publisher.close().await;
}

#[test]
fn urls_and_url_together_are_refused_and_each_url_is_checked() {
    let both = "[amqp]\nurl = \"amqp://a:5672\"\nurls = [\"amqp://b:5672\"]\n";
    let e = Config::from_toml_str(both, "x.toml".as_ref(), &[])
        .expect_err("both")
        .to_string();
    assert!(e.contains("amqp.urls") && e.contains("not both"), "{e}");
    let bad = "[amqp]\nurls = [\"amqp://b:5672\", \"http://c\"]\n";
    let e = Config::from_toml_str(bad, "x.toml".as_ref(), &[])
        .expect_err("scheme")
        .to_string();
    assert!(e.contains("amqp.urls[1]"), "{e}");
}
