//! `hookpost-admin` against a dead-letter queue filled by real failed deliveries.

use common::Event;
use producer::Publisher;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::dispatcher_harness::Running;
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Longest one `hookpost-admin` command may run here.
const ADMIN_LIMIT: Duration = Duration::from_secs(120);

/// Runs `hookpost-admin --config <config> args…` and returns its output;
/// killed after [`ADMIN_LIMIT`] (the test fails rather than hangs).
fn admin(config: &Path, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_hookpost-admin"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("HOOKPOST_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hookpost-admin");
    let pid = child.id().to_string();
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(ADMIN_LIMIT) {
        Ok(output) => output.expect("hookpost-admin's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("hookpost-admin {args:?} did not end within {ADMIN_LIMIT:?}");
        }
    }
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line message: {stderr}"
    );
    stderr
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Two endpoints: `shop` answers 400 (rejected at once), `billing` 500 with
/// no retries (exhausted at once). Returns the scope, config path, receivers,
/// the running dispatcher, and the ids dead-lettered per endpoint.
struct Fixture {
    scope: Scope,
    config: PathBuf,
    shop: Receiver,
    billing: Receiver,
    dispatcher: Running,
    shop_ids: Vec<String>,
    billing_ids: Vec<String>,
}

async fn fixture(shop_events: usize, billing_events: usize) -> Fixture {
    let scope = Scope::new().await;
    let shop = Receiver::with(Arc::new(|_, _| Reply::Status(400, vec![]))).await;
    let billing = Receiver::with(Arc::new(|_, _| Reply::Status(500, vec![]))).await;
    let endpoints = format!(
        "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[[endpoints]]\nid = \"shop\"\nurl = \"{}\"\nevents = [\"order.*\"]\n[[endpoints]]\nid = \"billing\"\nurl = \"{}\"\nevents = [\"invoice.*\"]\nmax_retries = 0\n",
        shop.url, billing.url
    );
    let config = scope.write_config("admin", "", &endpoints);
    let loaded = common::Config::load(&config).expect("config");
    let dispatcher = Running::start(loaded.clone()).await;
    let publisher = Publisher::connect(&loaded).await.expect("connect");
    let publish = |t: &'static str, n: usize| {
        let events: Vec<Event> = (0..n)
            .map(|i| Event::new(t, serde_json::json!({ "i": i, "text": "héllo" })).expect("valid"))
            .collect();
        events
    };
    let shop_events = publish("order.created", shop_events);
    let billing_events = publish("invoice.paid", billing_events);
    publisher
        .publish_many(&shop_events)
        .await
        .expect("published");
    publisher
        .publish_many(&billing_events)
        .await
        .expect("published");
    let total = (shop_events.len() + billing_events.len()) as u32;
    let dead = format!("{}.dead", scope.prefix);
    eventually(WAIT, "the dead-letter queue filled", || async {
        (scope.depth(&dead).await == total).then_some(())
    })
    .await;
    Fixture {
        scope,
        config,
        shop,
        billing,
        dispatcher,
        shop_ids: shop_events.into_iter().map(|e| e.id).collect(),
        billing_ids: billing_events.into_iter().map(|e| e.id).collect(),
    }
}

/// Waits until `queue` holds exactly `n` ready messages. Messages a reader
/// took without acking return when its channel closes, a moment after the
/// command exits, so the count is awaited, not read once.
async fn settles_at(scope: &Scope, queue: &str, n: u32) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} messages in {queue}"),
        || async { (scope.depth(queue).await == n).then_some(()) },
    )
    .await;
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ids_of(lines: &[serde_json::Value]) -> Vec<String> {
    sorted(
        lines
            .iter()
            .map(|l| l["id"].as_str().expect("id").to_owned())
            .collect(),
    )
}

#[tokio::test]
async fn list_filter_show_and_stats_change_nothing() {
    let f = fixture(3, 2).await;
    let dead = format!("{}.dead", f.scope.prefix);

    let table = ok(&admin(&f.config, &["dlq", "list"]));
    assert!(table.starts_with("EVENT ID"), "{table}");
    assert_eq!(table.lines().count(), 6, "{table}");
    let all = json_lines(&ok(&admin(&f.config, &["dlq", "list", "--json"])));
    assert_eq!(
        ids_of(&all),
        sorted([f.shop_ids.clone(), f.billing_ids.clone()].concat())
    );
    let shop_line = all.iter().find(|l| l["endpoint"] == "shop").expect("shop");
    assert_eq!(
        (
            shop_line["reason"].as_str(),
            shop_line["last_status"].as_u64(),
            shop_line["attempts"].as_u64()
        ),
        (Some("rejected"), Some(400), Some(1))
    );
    assert_eq!(shop_line["type"], "order.created");

    let again = json_lines(&ok(&admin(&f.config, &["dlq", "list", "--json"])));
    let order = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .map(|l| l["id"].to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&again), order(&all), "listing keeps the queue order");

    let by_endpoint = json_lines(&ok(&admin(
        &f.config,
        &["dlq", "list", "--json", "--endpoint", "shop"],
    )));
    assert_eq!(ids_of(&by_endpoint), sorted(f.shop_ids.clone()));
    let by_type = json_lines(&ok(&admin(
        &f.config,
        &["dlq", "list", "--json", "--type", "invoice.*"],
    )));
    assert_eq!(ids_of(&by_type), sorted(f.billing_ids.clone()));
    let by_reason = json_lines(&ok(&admin(
        &f.config,
        &["dlq", "list", "--json", "--reason", "exhausted"],
    )));
    assert_eq!(ids_of(&by_reason), sorted(f.billing_ids.clone()));
    assert_eq!(
        json_lines(&ok(&admin(
            &f.config,
            &["dlq", "list", "--json", "--since", "1h"]
        )))
        .len(),
        5
    );
    assert_eq!(
        json_lines(&ok(&admin(
            &f.config,
            &["dlq", "list", "--json", "--until", "1h"]
        )))
        .len(),
        0
    );
    assert_eq!(
        json_lines(&ok(&admin(
            &f.config,
            &["dlq", "list", "--json", "--limit", "2"]
        )))
        .len(),
        2
    );

    let stats = ok(&admin(&f.config, &["dlq", "stats"]));
    assert!(
        stats.contains("shop") && stats.contains("rejected") && stats.contains("total: 5"),
        "{stats}"
    );
    assert!(
        stats.lines().any(|l| l.starts_with("billing")
            && l.contains("exhausted")
            && l.trim_end().ends_with('2')),
        "{stats}"
    );

    let shown: serde_json::Value =
        serde_json::from_str(&ok(&admin(&f.config, &["dlq", "show", &f.shop_ids[0]])))
            .expect("json");
    assert_eq!(shown["body"]["id"], f.shop_ids[0].as_str());
    assert_eq!(shown["body"]["data"]["text"], "héllo");
    assert!(
        shown["properties"].to_string().contains("hookpost-reason"),
        "{shown}"
    );

    let dry = ok(&admin(
        &f.config,
        &["dlq", "replay", "--dry-run", "--endpoint", "shop"],
    ));
    assert_eq!(
        dry.lines()
            .filter(|l| l.starts_with("would replay"))
            .count(),
        3,
        "{dry}"
    );
    let dry = ok(&admin(&f.config, &["dlq", "purge", "--dry-run"]));
    assert_eq!(
        dry.lines().filter(|l| l.starts_with("would purge")).count(),
        5,
        "{dry}"
    );
    settles_at(&f.scope, &dead, 5).await; // reading changed nothing
    assert_eq!(f.shop.received().len(), 3, "dry runs sent nothing");
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn replay_with_a_filter_delivers_exactly_the_matching_ones() {
    let f = fixture(3, 2).await;
    let dead = format!("{}.dead", f.scope.prefix);
    f.shop.set(Arc::new(|_, _| Reply::Status(200, vec![])));
    let before = f.shop.received().len();

    let out = ok(&admin(&f.config, &["dlq", "replay", "--endpoint", "shop"]));
    assert!(out.contains("replayed 3, kept 2"), "{out}");
    eventually(WAIT, "the replayed events delivered", || async {
        (f.shop.received().len() == before + 3).then_some(())
    })
    .await;
    let replayed = &f.shop.received()[before..];
    assert_eq!(
        sorted(replayed.iter().flat_map(|r| r.ids()).collect()),
        sorted(f.shop_ids.clone())
    );
    assert!(
        replayed
            .iter()
            .all(|r| r.header("hookpost-attempt").as_deref() == Some("1")),
        "fresh attempt count"
    );
    assert!(
        replayed
            .iter()
            .all(|r| r.header("webhook-id") == r.ids().first().cloned()),
        "original webhook-id"
    );
    let left = json_lines(&ok(&admin(&f.config, &["dlq", "list", "--json"])));
    assert_eq!(
        ids_of(&left),
        sorted(f.billing_ids.clone()),
        "the rest stays"
    );
    settles_at(&f.scope, &dead, 2).await;

    // --to-endpoint: billing's failures go to the healthy shop endpoint.
    let out = ok(&admin(
        &f.config,
        &["dlq", "replay", "--to-endpoint", "shop"],
    ));
    assert!(out.contains("replayed 2"), "{out}");
    f.shop.wait_ids(&f.billing_ids, WAIT).await;
    assert_eq!(
        f.billing.received().len(),
        2,
        "nothing more went to billing"
    );
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn replay_rate_is_honoured() {
    let f = fixture(10, 0).await;
    f.shop.set(Arc::new(|_, _| Reply::Status(200, vec![])));
    let started = Instant::now();
    let out = ok(&admin(&f.config, &["dlq", "replay", "--rate", "5"]));
    let took = started.elapsed();
    assert!(out.contains("replayed 10"), "{out}");
    // 10 messages at 5/s: the first goes at once, the last after 9 intervals of 200 ms.
    assert!(took >= Duration::from_millis(1700), "took {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    f.shop.wait_ids(&f.shop_ids, WAIT).await;
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn purge_needs_yes_and_deletes_only_matches() {
    let f = fixture(2, 2).await;
    let dead = format!("{}.dead", f.scope.prefix);
    let err = failed(&admin(
        &f.config,
        &["dlq", "purge", "--reason", "exhausted"],
    ));
    assert!(err.contains("--yes"), "{err}");
    settles_at(&f.scope, &dead, 4).await;
    let out = ok(&admin(
        &f.config,
        &["dlq", "purge", "--reason", "exhausted", "--yes"],
    ));
    assert!(out.contains("purged 2, kept 2"), "{out}");
    let left = json_lines(&ok(&admin(&f.config, &["dlq", "list", "--json"])));
    assert_eq!(ids_of(&left), sorted(f.shop_ids.clone()));
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn export_then_import_round_trips_exactly() {
    let f = fixture(2, 1).await;
    let dead = format!("{}.dead", f.scope.prefix);
    let first = std::env::temp_dir().join(format!("{}-first.jsonl", f.scope.prefix));
    let second = std::env::temp_dir().join(format!("{}-second.jsonl", f.scope.prefix));
    let out = ok(&admin(
        &f.config,
        &["dlq", "export", "--out", first.to_str().expect("path")],
    ));
    assert!(out.contains("exported 3"), "{out}");
    settles_at(&f.scope, &dead, 3).await; // export removes nothing
    ok(&admin(&f.config, &["dlq", "purge", "--yes"]));
    assert_eq!(f.scope.depth(&dead).await, 0);
    let out = ok(&admin(
        &f.config,
        &["dlq", "import", first.to_str().expect("path")],
    ));
    assert!(out.contains("imported 3"), "{out}");
    ok(&admin(
        &f.config,
        &["dlq", "export", "--out", second.to_str().expect("path")],
    ));
    let read = |p: &Path| -> Vec<serde_json::Value> {
        let mut lines = json_lines(&std::fs::read_to_string(p).expect("read"));
        lines.sort_by_key(|l| l["id"].as_str().unwrap_or_default().to_owned());
        lines
    };
    assert_eq!(
        read(&first),
        read(&second),
        "bodies and properties byte-identical"
    );
    let _ = std::fs::remove_file(first);
    let _ = std::fs::remove_file(second);
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn admin_killed_mid_replay_loses_nothing() {
    let f = fixture(30, 0).await;
    f.shop.set(Arc::new(|_, _| Reply::Status(200, vec![])));
    let before = f.shop.received().len();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookpost-admin"))
        .arg("--config")
        .arg(&f.config)
        .args(["dlq", "replay", "--rate", "10"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    eventually(WAIT, "some replayed", || async {
        (f.shop.received().len() >= before + 5).then_some(())
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let replayed_before_kill = f.shop.received().len() - before;
    assert!(replayed_before_kill < 30, "killed mid-way");
    // Every event is delivered (replays already in the endpoint queue get
    // through) or still in the dead-letter queue.
    eventually(WAIT, "every event accounted for", || async {
        let delivered: std::collections::HashSet<String> = f.shop.received()[before..]
            .iter()
            .flat_map(|r| r.ids())
            .collect();
        let left = json_lines(&ok(&admin(&f.config, &["dlq", "list", "--json"])));
        let in_dlq: std::collections::HashSet<String> = ids_of(&left).into_iter().collect();
        f.shop_ids
            .iter()
            .all(|id| delivered.contains(id) || in_dlq.contains(id))
            .then_some(())
    })
    .await;
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn clear_errors() {
    let f = fixture(1, 0).await;
    let err = failed(&admin(
        &f.config,
        &["dlq", "replay", "--to-endpoint", "nope"],
    ));
    assert!(err.contains("unknown endpoint \"nope\""), "{err}");
    let err = failed(&admin(&f.config, &["dlq", "list", "--endpoint", "nope"]));
    assert!(err.contains("unknown endpoint"), "{err}");
    let err = failed(&admin(
        &f.config,
        &["dlq", "list", "--since", "last tuesday"],
    ));
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
    for rate in ["3e9", "0", "NaN"] {
        let err = failed(&admin(&f.config, &["dlq", "replay", "--rate", rate]));
        assert!(err.contains("--rate must be"), "{err}");
    }
    let err = failed(&admin(&f.config, &["dlq", "replay", "--reason", "gone"]));
    assert!(err.contains("no dead letter matches"), "{err}");
    let err = failed(&admin(&f.config, &["dlq", "show", "evt_missing"]));
    assert!(err.contains("evt_missing"), "{err}");
    let output = Command::new(env!("CARGO_BIN_EXE_hookpost-admin"))
        .args(["dlq", "list"])
        .env_remove("HOOKPOST_CONFIG")
        .env("HOOKPOST_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("HOOKPOST_AMQP_PUBLISH_TIMEOUT_MS", "500")
        .output()
        .expect("run");
    let err = failed(&output);
    assert!(
        err.contains("unreachable") && !err.contains("guest:guest"),
        "{err}"
    );
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn endpoints_and_topology_status() {
    let f = fixture(1, 0).await;
    let out = ok(&admin(&f.config, &["endpoints"]));
    let shop = out
        .lines()
        .find(|l| l.starts_with("shop"))
        .expect("shop row");
    assert!(
        shop.contains("order.*") && shop.contains("consumed"),
        "{out}"
    );
    let out = ok(&admin(&f.config, &["topology", "status"]));
    assert!(
        out.contains(&format!("{}.dead", f.scope.prefix)) && out.contains("dead letters"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}.ep.billing", f.scope.prefix)),
        "{out}"
    );
    let out = ok(&admin(&f.config, &["topology", "declare"]));
    assert!(out.contains("declared"), "{out}");

    // Pause and resume from the command line; the list shows the hold.
    let out = ok(&admin(&f.config, &["endpoints", "pause", "shop"]));
    assert!(
        out.contains("paused endpoint shop on every dispatcher"),
        "{out}"
    );
    let out = ok(&admin(&f.config, &["endpoints", "list"]));
    let shop = out
        .lines()
        .find(|l| l.starts_with("shop"))
        .expect("shop row");
    assert!(shop.contains("paused by an operator"), "{out}");
    let out = ok(&admin(&f.config, &["endpoints", "resume", "shop"]));
    assert!(out.contains("resumed endpoint shop"), "{out}");
    let out = ok(&admin(&f.config, &["endpoints"]));
    let shop = out
        .lines()
        .find(|l| l.starts_with("shop"))
        .expect("shop row");
    assert!(!shop.contains("paused"), "{out}");
    let err = failed(&admin(&f.config, &["endpoints", "pause", "Not An Id"]));
    assert!(err.contains("is not an endpoint id"), "{err}");
    f.dispatcher.stop().await.expect("stop");
}

// Multi-threaded: the in-process dispatcher must keep running while the
// test thread waits for each `hookpost-admin` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_create_update_get_rotate_and_delete_from_the_command_line() {
    if std::env::var("DEBUG_LOG").is_ok() {
        common::logging::init("info,lapin=warn");
    }
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = scope.write_config(
        "registry",
        "",
        "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[registry]\nsecrets_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n",
    );
    let loaded = common::Config::load(&config).expect("config");
    scope.track_endpoint(&loaded, "cli");
    let dispatcher = Running::start(loaded.clone()).await;

    let body = format!(
        r#"{{"id": "cli", "url": "{}", "events": ["cli.*"], "name": "From the CLI"}}"#,
        receiver.url
    );
    let created: serde_json::Value = serde_json::from_str(&ok(&admin(
        &config,
        &["endpoints", "create", "--json", &body],
    )))
    .expect("json");
    let secret = created["secret"]
        .as_str()
        .expect("generated secret")
        .to_owned();
    assert_eq!(created["name"], "From the CLI");
    scope.wait_consumers("cli", 1).await;

    let publisher = Publisher::connect(&loaded).await.expect("connect");
    let event = Event::new("cli.x", serde_json::json!({})).expect("valid");
    publisher.publish(&event).await.expect("published");
    receiver
        .wait_ids(std::slice::from_ref(&event.id), WAIT)
        .await;
    standardwebhooks::Webhook::new(&secret)
        .expect("secret")
        .verify(
            &receiver.received()[0].body,
            &receiver.received()[0].headers,
        )
        .expect("signed with the generated secret");

    let out = ok(&admin(
        &config,
        &[
            "endpoints",
            "update",
            "cli",
            "--json",
            r#"{"max_retries": 2}"#,
        ],
    ));
    assert!(out.contains("\"max_retries\": 2"), "{out}");
    let out = ok(&admin(&config, &["endpoints", "get", "cli"]));
    assert!(
        out.contains("\"version\": 2") && !out.contains(&secret),
        "{out}"
    );
    let out = ok(&admin(&config, &["endpoints"]));
    let row = out.lines().find(|l| l.starts_with("cli")).expect("cli row");
    assert!(row.contains("registry") && row.contains("cli.*"), "{out}");
    let rotated = ok(&admin(&config, &["endpoints", "rotate-secret", "cli"]));
    assert!(rotated.trim().starts_with("whsec_") && rotated.trim() != secret);

    let err = failed(&admin(
        &config,
        &[
            "endpoints",
            "update",
            "cli",
            "--json",
            r#"{"events": ["Bad Pattern"]}"#,
        ],
    ));
    assert!(err.contains("events[0]"), "{err}");
    let err = failed(&admin(&config, &["endpoints", "get", "nosuch"]));
    assert!(err.contains("no registered endpoint"), "{err}");

    let out = ok(&admin(&config, &["endpoints", "delete", "cli"]));
    assert!(
        out.contains("deleted endpoint cli (queue deleted: true"),
        "{out}"
    );
    let err = failed(&admin(&config, &["endpoints", "get", "cli"]));
    assert!(err.contains("no registered endpoint"), "{err}");
    dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn endpoints_list_filters_by_tenant_and_environment() {
    let scope = Scope::new().await;
    let config = scope.write_config(
        "tenants",
        "",
        "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n\
         [[endpoints]]\nid = \"a-shop\"\nurl = \"http://127.0.0.1:9/a\"\nevents = [\"#\"]\ntenant = \"acme\"\n\
         environments = { prd = { url = \"http://127.0.0.1:9/a/prd\" }, snd = { url = \"http://127.0.0.1:9/a/snd\" } }\n\
         [[endpoints]]\nid = \"g-shop\"\nurl = \"http://127.0.0.1:9/g\"\nevents = [\"#\"]\ntenant = \"globex\"\n\
         environments = { prd = { url = \"http://127.0.0.1:9/g/prd\" } }\n\
         [[endpoints]]\nid = \"any\"\nurl = \"http://127.0.0.1:9/n\"\nevents = [\"#\"]\n",
    );
    let loaded = common::Config::load(&config).expect("config");
    for id in ["a-reg", "a-reg~prd"] {
        scope.track_endpoint(&loaded, id);
    }
    let body = r##"{"id": "a-reg", "url": "http://127.0.0.1:9/r", "events": ["#"], "tenant": "acme",
        "environments": {"prd": {"url": "http://127.0.0.1:9/r/prd"}}}"##;
    ok(&admin(&config, &["endpoints", "create", "--json", body]));
    let ids = |out: &str| -> Vec<String> {
        sorted(
            out.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect(),
        )
    };
    let everything = ok(&admin(&config, &["endpoints"]));
    assert_eq!(
        ids(&everything),
        sorted(
            [
                "a-shop",
                "a-shop~prd",
                "a-shop~snd",
                "g-shop",
                "g-shop~prd",
                "any",
                "a-reg",
                "a-reg~prd"
            ]
            .map(str::to_owned)
            .to_vec()
        ),
        "{everything}"
    );
    let row = everything
        .lines()
        .find(|l| l.starts_with("a-reg~prd"))
        .expect("variant row");
    assert!(
        row.contains("http://127.0.0.1:9/r/prd")
            && row.contains("registry")
            && row.contains("acme"),
        "{everything}"
    );
    // `topology status` lists the registered endpoints' queues too,
    // environments included.
    let topology = ok(&admin(&config, &["topology", "status"]));
    let row = topology
        .lines()
        .find(|l| l.contains(".ep.a-reg~prd "))
        .unwrap_or_else(|| panic!("a-reg~prd's queue: {topology}"));
    assert!(row.contains("endpoint (registered)"), "{topology}");
    assert!(topology.contains(".ep.a-shop~snd "), "{topology}");
    let acme = ok(&admin(&config, &["endpoints", "--tenant", "acme"]));
    assert_eq!(
        ids(&acme),
        sorted(
            ["a-shop", "a-shop~prd", "a-shop~snd", "a-reg", "a-reg~prd"]
                .map(str::to_owned)
                .to_vec()
        ),
        "{acme}"
    );
    let prd = ok(&admin(
        &config,
        &["endpoints", "list", "--environment", "prd"],
    ));
    assert_eq!(
        ids(&prd),
        sorted(
            ["a-shop~prd", "g-shop~prd", "a-reg~prd"]
                .map(str::to_owned)
                .to_vec()
        ),
        "{prd}"
    );
    let both = ok(&admin(
        &config,
        &[
            "endpoints",
            "list",
            "--tenant",
            "acme",
            "--environment",
            "snd",
        ],
    ));
    assert_eq!(ids(&both), ["a-shop~snd"], "{both}");
    let none = ok(&admin(&config, &["endpoints", "--tenant", "initech"]));
    assert!(ids(&none).is_empty(), "{none}");
    let err = failed(&admin(&config, &["endpoints", "--tenant", "Acme"]));
    assert!(err.contains("--tenant"), "{err}");
    let err = failed(&admin(
        &config,
        &["endpoints", "list", "--environment", "a.b"],
    ));
    assert!(err.contains("--environment"), "{err}");
}

/// `hookpost-admin log`: the attempts of the fixture's failed deliveries,
/// by endpoint (JSON lines) and by event (a table); a bad flag is one line;
/// `--follow` prints a new attempt as it happens, until SIGTERM.
#[tokio::test]
async fn log_shows_each_attempt_and_follows_new_ones() {
    let f = fixture(2, 1).await;
    let lines = eventually(WAIT, "the shop's two attempts in the log", || async {
        let out = ok(&admin(&f.config, &["log", "--endpoint", "shop", "--json"]));
        let lines = json_lines(&out);
        (lines.len() == 2).then_some(lines)
    })
    .await;
    for line in &lines {
        assert_eq!(line["endpoint"], "shop");
        assert_eq!(line["outcome"], "dead_lettered");
        assert_eq!(line["status"], 400);
        assert!(
            f.shop_ids.iter().any(|id| line["event_id"] == id.as_str()),
            "{line}"
        );
    }
    let table = ok(&admin(&f.config, &["log", "--event", &f.billing_ids[0]]));
    assert!(table.starts_with("started"), "{table}");
    assert!(
        table.contains("billing") && table.contains("dead_lettered") && table.contains("HTTP 500"),
        "{table}"
    );
    assert!(table.contains("1 of 1 matching attempts shown"), "{table}");
    let err = failed(&admin(&f.config, &["log", "--outcome", "maybe"]));
    assert!(err.contains("--outcome"), "{err}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_hookpost-admin"))
        .arg("--config")
        .arg(&f.config)
        .args(["log", "--follow", "--json", "--endpoint", "billing"])
        .env_remove("HOOKPOST_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The head: the billing attempt so far.
    let head = rx.recv_timeout(WAIT).expect("the head");
    assert!(head.contains(&f.billing_ids[0]), "{head}");
    let loaded = common::Config::load(&f.config).expect("config");
    let publisher = Publisher::connect(&loaded).await.expect("connect");
    let later = Event::new("invoice.paid", serde_json::json!({})).expect("event");
    // Published until the tail shows it: the tail attaches a moment after
    // the head is printed.
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        publisher.publish(&later).await.expect("publish");
        let until = Instant::now() + Duration::from_secs(2);
        while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if line.contains(&later.id) {
                seen = true;
                break;
            }
        }
    }
    assert!(seen, "--follow printed the new attempt");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("log --follow did not exit within {WAIT:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    publisher.close().await;
    f.dispatcher.stop().await.expect("stop");
}

#[tokio::test]
async fn replay_sends_archived_events_again_and_a_dry_run_only_counts() {
    let f = fixture(2, 1).await;
    let dry = ok(&admin(
        &f.config,
        &[
            "replay",
            "--endpoint",
            "shop",
            "--since",
            "10m",
            "--dry-run",
            "--json",
        ],
    ));
    let report = &json_lines(&dry)[0];
    assert_eq!(report["matched"], 2, "{report}");
    assert_eq!(report["sent"], 0, "{report}");
    assert_eq!(report["dry_run"], true, "{report}");
    assert!(report["scanned"].as_u64() >= Some(3), "{report}");
    // The dead-letter queue holds the 3 events, and nothing was sent.
    settles_at(&f.scope, &format!("{}.dead", f.scope.prefix), 3).await;
    assert_eq!(f.shop.ids().len(), 2);

    let out = ok(&admin(
        &f.config,
        &[
            "replay",
            "--endpoint",
            "shop",
            "--since",
            "10m",
            "--rate",
            "100",
        ],
    ));
    assert!(out.contains("sent 2 of 2 matching events to shop"), "{out}");
    // The shop answers 400 again: the replayed events arrive with their ids
    // and are dead-lettered once more.
    let ids = eventually(WAIT, "the two events replayed to the shop", || async {
        let ids = f.shop.ids();
        (ids.len() == 4).then_some(ids)
    })
    .await;
    for id in &f.shop_ids {
        assert_eq!(ids.iter().filter(|i| *i == id).count(), 2, "{ids:?}");
    }
    settles_at(&f.scope, &format!("{}.dead", f.scope.prefix), 5).await;

    for (args, flag) in [
        (
            vec!["replay", "--endpoint", "shop", "--since", "soon"],
            "--since",
        ),
        (
            vec![
                "replay",
                "--endpoint",
                "shop",
                "--since",
                "1h",
                "--rate",
                "0",
            ],
            "--rate",
        ),
        (
            vec![
                "replay",
                "--endpoint",
                "shop",
                "--since",
                "1h",
                "--type",
                "a..b",
            ],
            "--type",
        ),
        (
            vec!["replay", "--endpoint", "nobody", "--since", "1h"],
            "unknown endpoint",
        ),
    ] {
        let err = failed(&admin(&f.config, &args));
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

/// `dlq list` and `dlq replay` filter by `--tenant` and `--environment`,
/// read from the dead letters of a tenant's endpoint, its sandbox variant and
/// a global endpoint (whose dead letters carry the event's tenant).
#[tokio::test]
async fn dlq_filters_by_tenant_and_environment() {
    let scope = Scope::new().await;
    let refuse = Receiver::with(Arc::new(|_, _| Reply::Status(400, vec![]))).await;
    let config = scope.write_config(
        "dlq-tenants",
        "",
        &format!(
            "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n\
             [[endpoints]]\nid = \"a-shop\"\nurl = \"{0}\"\nevents = [\"order.*\"]\ntenant = \"acme\"\n\
             environments = {{ snd = {{ url = \"{0}snd\" }} }}\n\
             [[endpoints]]\nid = \"audit\"\nurl = \"{0}audit\"\nevents = [\"invoice.*\"]\n",
            refuse.url
        ),
    );
    let loaded = common::Config::load(&config).expect("config");
    let dispatcher = Running::start(loaded.clone()).await;
    let publisher = Publisher::connect(&loaded).await.expect("connect");
    let event = |t: &str, tenant: &str, environment: Option<&str>| {
        Event::new(t, serde_json::json!({}))
            .expect("type")
            .with_scope(Some(tenant), environment)
            .expect("scope")
    };
    let acme = event("order.created", "acme", None);
    let acme_snd = event("order.created", "acme", Some("snd"));
    let globex = event("invoice.paid", "globex", None);
    publisher
        .publish_many(&[acme.clone(), acme_snd.clone(), globex.clone()])
        .await
        .expect("published");
    let dead = format!("{}.dead", scope.prefix);
    eventually(WAIT, "three dead letters", || async {
        (scope.depth(&dead).await == 3).then_some(())
    })
    .await;
    let listed = |args: &[&str]| {
        let mut all = vec!["dlq", "list", "--json"];
        all.extend_from_slice(args);
        ids_of(&json_lines(&ok(&admin(&config, &all))))
    };
    assert_eq!(
        listed(&["--tenant", "acme"]),
        sorted(vec![acme.id.clone(), acme_snd.id.clone()])
    );
    assert_eq!(listed(&["--tenant", "globex"]), [globex.id.as_str()]);
    assert_eq!(listed(&["--environment", "snd"]), [acme_snd.id.as_str()]);
    assert_eq!(
        listed(&["--tenant", "globex", "--environment", "snd"]),
        Vec::<String>::new()
    );
    settles_at(&scope, &dead, 3).await;
    let dry = ok(&admin(
        &config,
        &[
            "dlq",
            "replay",
            "--dry-run",
            "--tenant",
            "acme",
            "--environment",
            "snd",
        ],
    ));
    let would: Vec<&str> = dry
        .lines()
        .filter(|l| l.starts_with("would replay"))
        .collect();
    assert_eq!(would.len(), 1, "{dry}");
    assert!(would[0].contains(&acme_snd.id), "{dry}");
    let err = failed(&admin(&config, &["dlq", "list", "--tenant", "Acme"]));
    assert!(err.contains("--tenant"), "{err}");
    let err = failed(&admin(&config, &["dlq", "list", "--environment", "a.b"]));
    assert!(err.contains("--environment"), "{err}");
    settles_at(&scope, &dead, 3).await;
    publisher.close().await;
    dispatcher.stop().await.expect("stop");
}
