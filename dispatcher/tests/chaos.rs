//! Chaos: thousands of events to several endpoints while dispatchers are
//! SIGKILLed, broker connections are closed, the RabbitMQ app is stopped and
//! started, and receivers fail, hang, reset and crawl. At the end every
//! confirmed event is delivered or dead-lettered with a reason: none is lost.
//!
//! Its broker-wide faults (`rabbitmqctl close_all_connections`, `stop_app`)
//! hit a throw-away RabbitMQ node of its own (`tests::node`), never the
//! broker other tests share.
//!
//! CI runs a short variant. The full run:
//!   HOOKPOST_CHAOS_EVENTS=5000 HOOKPOST_CHAOS_ROUNDS=3 cargo test --release -p dispatcher --test chaos -- --nocapture

use common::Event;
use lapin::types::AMQPValue;
use producer::Publisher;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tests::Scope;
use tests::node::{Node, free_port};
use tests::receiver::{Receiver, Reply};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A dispatcher process, SIGKILLed when dropped (a panicking test leaves
/// none behind).
struct Dispatcher(Child);

impl Drop for Dispatcher {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

fn dispatcher(config: &Path, log: &Path) -> Dispatcher {
    let child = Command::new(env!("CARGO_BIN_EXE_hookpost-dispatcher"))
        .arg("--config")
        .arg(config)
        .env_remove("HOOKPOST_CONFIG")
        .env("HOOKPOST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log"),
        )
        .spawn()
        .expect("spawn dispatcher");
    Dispatcher(child)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_under_faults() {
    let events_total = env_usize("HOOKPOST_CHAOS_EVENTS", 1200);
    let rounds = env_usize("HOOKPOST_CHAOS_ROUNDS", 1);
    let name = format!("hpt-chaos-{}", std::process::id());
    let port = free_port();
    let node = tokio::task::spawn_blocking(move || Node::start(&name, port))
        .await
        .expect("join");
    let Some(node) = node else { return };
    let scope = Scope::at(&node.amqp_url()).await;
    let started = Instant::now();

    // steady: answers slowly (5-25 ms). flaky: 500s for its first 4 s of
    // traffic. rough: every 5th request hangs past the timeout, every 7th
    // has its connection reset.
    let steady = Receiver::with(Arc::new(|n, _| {
        Reply::Delay(Duration::from_millis(5 + (n as u64 % 5) * 5), 200)
    }))
    .await;
    let flaky_since = Arc::new(std::sync::OnceLock::<Instant>::new());
    let flaky_clock = flaky_since.clone();
    let flaky = Receiver::with(Arc::new(move |_, _| {
        let first = *flaky_clock.get_or_init(Instant::now);
        if first.elapsed() < Duration::from_secs(4) {
            Reply::Status(500, vec![])
        } else {
            Reply::Status(200, vec![])
        }
    }))
    .await;
    let rough = Receiver::with(Arc::new(|n, _| match n % 35 {
        k if k % 5 == 0 => Reply::Delay(Duration::from_millis(1500), 200),
        k if k % 7 == 0 => Reply::Abort,
        _ => Reply::Status(200, vec![]),
    }))
    .await;
    let endpoint = |id: &str, url: &str, extra: &str| {
        format!("[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nevents = [\"#\"]\n{extra}\n")
    };
    let config = scope.write_config(
        "chaos",
        "max_reconnect_delay_ms = 1000\npublish_timeout_ms = 5000",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[defaults]\ntimeout_ms = 1000\nmax_retries = 12\nretry_delay_ms = 100\nmax_retry_delay_ms = 2000\nmax_in_flight = 8\n{}{}{}",
            endpoint("steady", &steady.url, "batch_size = 20\nbatch_interval_ms = 50"),
            endpoint("flaky", &flaky.url, ""),
            endpoint("rough", &rough.url, "batch_size = 5\nbatch_interval_ms = 20"),
        ),
    );
    let log = std::env::temp_dir().join(format!("{}-chaos.log", scope.prefix));
    let mut dispatchers = [dispatcher(&config, &log), dispatcher(&config, &log)];
    let loaded = common::Config::load(&config).expect("config");
    scope.wait_consumers("rough", 2).await;

    // Publisher: batches of 50; a failed batch is published again until
    // confirmed, as a careful caller would. Only confirmed ids count.
    let publishing_done = Arc::new(AtomicBool::new(false));
    let publisher_task = {
        let loaded = loaded.clone();
        let done = publishing_done.clone();
        // Spread the publishing over the fault rounds (about 14 s each).
        let pause =
            Duration::from_millis((14_000 * rounds as u64) / (events_total as u64 / 50).max(1));
        tokio::spawn(async move {
            let publisher = Publisher::new(&loaded);
            let mut confirmed = Vec::with_capacity(events_total);
            let mut failures = 0usize;
            while confirmed.len() < events_total {
                let n = 50.min(events_total - confirmed.len());
                let batch: Vec<Event> = (0..n)
                    .map(|i| {
                        Event::new("chaos.event", serde_json::json!({ "i": i })).expect("valid")
                    })
                    .collect();
                loop {
                    match publisher.publish_many(&batch).await {
                        Ok(()) => break,
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                confirmed.extend(batch.into_iter().map(|e| e.id));
                tokio::time::sleep(pause).await;
            }
            done.store(true, Ordering::SeqCst);
            publisher.close().await;
            (confirmed, failures)
        })
    };

    // Faults, in turn, while publishing goes on.
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        kill(&mut dispatchers[0].0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        dispatchers[0] = dispatcher(&config, &log);
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.ctl(&["close_all_connections", "hookpost chaos test"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        kill(&mut dispatchers[1].0);
        dispatchers[1] = dispatcher(&config, &log);
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.ctl(&["stop_app"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.ctl(&["start_app"]);
        node.ctl(&["await_startup", "--timeout", "60"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        kill(&mut dispatchers[0].0);
        kill(&mut dispatchers[1].0);
        dispatchers = [dispatcher(&config, &log), dispatcher(&config, &log)];
        eprintln!("chaos round {} done at {:?}", round + 1, started.elapsed());
    }
    let (confirmed, publish_failures) = publisher_task.await.expect("publisher");
    assert!(publishing_done.load(Ordering::SeqCst));

    // The scope's own connection died with the broker app: open a new one.
    let checker = Scope::at(&node.amqp_url()).await;
    let dead_queue = format!("{}.dead", scope.prefix);
    let receivers = [("steady", &steady), ("flaky", &flaky), ("rough", &rough)];
    let mut dead_letters: HashMap<String, HashSet<String>> = HashMap::new();
    let accounted = |dead: &HashMap<String, HashSet<String>>| {
        receivers.iter().all(|(id, r)| {
            let delivered: HashSet<String> = r.delivered_ids().into_iter().collect();
            let parked = dead.get(*id);
            confirmed
                .iter()
                .all(|e| delivered.contains(e) || parked.is_some_and(|p| p.contains(e)))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !accounted(&dead_letters) && Instant::now() < deadline {
        for msg in checker.drain(&dead_queue).await {
            let endpoint = match msg
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("hookpost-endpoint").cloned())
            {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                // Dead-lettered by the broker's delivery limit: the endpoint is in x-death.
                _ => format!("{:?}", msg.delivery.properties.headers())
                    .split(&format!("{}.ep.", scope.prefix))
                    .nth(1)
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let id = msg
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            dead_letters.entry(endpoint).or_default().insert(id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for child in &mut dispatchers {
        kill(&mut child.0);
    }

    println!(
        "\nchaos: {} events, {rounds} fault rounds, {:?}, {publish_failures} publish calls failed (and were retried)",
        confirmed.len(),
        started.elapsed()
    );
    println!(
        "{:<8} {:>9} {:>9} {:>10} {:>13} {:>5}",
        "endpoint", "published", "delivered", "duplicates", "dead-lettered", "lost"
    );
    let mut total_lost = 0;
    for (id, receiver) in receivers {
        let all = receiver.delivered_ids();
        let unique: HashSet<&String> = all.iter().collect();
        let confirmed_set: HashSet<&String> = confirmed.iter().collect();
        let delivered = unique
            .iter()
            .filter(|e| confirmed_set.contains(**e))
            .count();
        let parked = dead_letters
            .get(id)
            .map(|p| p.iter().filter(|e| !unique.contains(e)).count())
            .unwrap_or(0);
        let lost = confirmed
            .iter()
            .filter(|e| {
                !unique.contains(e) && !dead_letters.get(id).is_some_and(|p| p.contains(*e))
            })
            .count();
        total_lost += lost;
        println!(
            "{id:<8} {:>9} {delivered:>9} {:>10} {parked:>13} {lost:>5}",
            confirmed.len(),
            all.len() - unique.len()
        );
    }
    if total_lost > 0 {
        eprintln!("dispatcher log: {}", log.display());
    } else {
        let _ = std::fs::remove_file(&log);
    }
    assert_eq!(total_lost, 0, "events lost");
    drop(checker);
    let _: PathBuf = config;
}
