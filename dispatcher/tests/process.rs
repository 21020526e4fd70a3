//! `hookpost-dispatcher` as a process: SIGKILL loses nothing, SIGTERM drains
//! and exits 0, SIGHUP reloads (and rejects an invalid config).

use common::Event;
use producer::Publisher;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::receiver::{Receiver, Reply};
use tests::{Scope, eventually};

const WAIT: Duration = Duration::from_secs(30);

struct Dispatcher {
    child: Child,
    log: PathBuf,
}

impl Dispatcher {
    fn start(config: &std::path::Path, log: PathBuf) -> Self {
        Self::start_with(config, log, None, "info")
    }

    /// Started with `TOKIO_WORKER_THREADS` set to `threads`, or unset.
    fn start_with(
        config: &std::path::Path,
        log: PathBuf,
        threads: Option<&std::ffi::OsStr>,
        level: &str,
    ) -> Self {
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookpost-dispatcher"));
        match threads {
            Some(value) => command.env("TOKIO_WORKER_THREADS", value),
            None => command.env_remove("TOKIO_WORKER_THREADS"),
        };
        let child = command
            .arg("--config")
            .arg(config)
            .env_remove("HOOKPOST_CONFIG")
            .env("HOOKPOST_LOG", level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn dispatcher");
        Self { child, log }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "dispatcher did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(scope: &Scope, name: &str, endpoints: &str) -> PathBuf {
    scope.write_config(
        name,
        "max_reconnect_delay_ms = 500",
        &format!("[metrics]\nlisten = \"127.0.0.1:0\"\n{FAST}{endpoints}"),
    )
}

/// Loopback receivers allowed; fast retries.
pub const FAST: &str = "[http]\nallowed_networks = [\"127.0.0.0/8\"]\n[defaults]\nretry_delay_ms = 100\nmax_retry_delay_ms = 400\ntimeout_ms = 2000\n";

fn endpoint(id: &str, url: &str, extra: &str) -> String {
    format!("[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nevents = [\"#\"]\n{extra}\n")
}

async fn publish(config: &std::path::Path, n: usize) -> Vec<String> {
    let config = common::Config::load(config).expect("config");
    let publisher = Publisher::connect(&config).await.expect("connect");
    let events: Vec<Event> = (0..n)
        .map(|i| Event::new("a.b", serde_json::json!({ "i": i })).expect("valid"))
        .collect();
    publisher.publish_many(&events).await.expect("published");
    publisher.close().await;
    events.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn sigkill_mid_batch_loses_nothing() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| {
        Reply::Delay(Duration::from_millis(30), 200)
    }))
    .await;
    let config = write_config(
        &scope,
        "kill",
        &endpoint(
            "ep",
            &receiver.url,
            "batch_size = 10\nbatch_interval_ms = 50\nmax_in_flight = 2",
        ),
    );
    let log = std::env::temp_dir().join(format!("{}-kill.log", scope.prefix));
    let mut first = Dispatcher::start(&config, log.clone());
    scope.wait_consumers("ep", 1).await;
    let ids = publish(&config, 300).await;
    receiver.wait_requests(3, WAIT).await;
    first.signal("KILL");
    first.wait_exit(WAIT).await;
    let delivered_before = receiver.ids().len();
    assert!(
        delivered_before < 300,
        "killed mid-way ({delivered_before} delivered)"
    );

    let _second = Dispatcher::start(&config, log);
    receiver.wait_ids(&ids, WAIT).await;
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| {
        Reply::Delay(Duration::from_millis(400), 200)
    }))
    .await;
    let config = write_config(
        &scope,
        "term",
        &endpoint("ep", &receiver.url, "max_in_flight = 4"),
    );
    let log = std::env::temp_dir().join(format!("{}-term.log", scope.prefix));
    let mut first = Dispatcher::start(&config, log.clone());
    scope.wait_consumers("ep", 1).await;
    let ids = publish(&config, 40).await;
    receiver.wait_requests(1, WAIT).await;
    let asked = Instant::now();
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        first.log()
    );
    assert!(
        asked.elapsed() < Duration::from_millis(2000 + 1500),
        "within the longest request timeout: {:?}",
        asked.elapsed()
    );
    let after_exit = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        after_exit,
        "nothing sent after exit"
    );

    let _second = Dispatcher::start(&config, log);
    receiver.wait_ids(&ids, WAIT).await;
    let _ = std::fs::remove_file(&config);
}

/// The runtime's worker threads: one per core unless `TOKIO_WORKER_THREADS`
/// says otherwise, logged at start; delivery works with either; a bad value
/// stops the start with an error naming the variable.
#[tokio::test]
async fn worker_threads_follow_the_cores_or_the_variable() {
    let scope = Scope::new().await;
    let receiver = Receiver::start().await;
    let config = write_config(&scope, "threads", &endpoint("ep", &receiver.url, ""));
    let log = std::env::temp_dir().join(format!("{}-threads.log", scope.prefix));
    let cores = common::cli::cores();
    let mut delivered = Vec::new();
    // The last start logs at debug: the line still comes once.
    for (var, threads, level) in [
        (None, cores, "info"),
        (Some("1"), 1, "info"),
        (Some("3"), 3, "debug"),
    ] {
        let mut dispatcher =
            Dispatcher::start_with(&config, log.clone(), var.map(std::ffi::OsStr::new), level);
        let line = format!("Runtime started. threads={threads} cores={cores}");
        eventually(WAIT, "the runtime's line", || async {
            dispatcher.log().contains(&line).then_some(())
        })
        .await;
        scope.wait_consumers("ep", 1).await;
        delivered.extend(publish(&config, 3).await);
        receiver.wait_ids(&delivered, WAIT).await;
        dispatcher.signal("TERM");
        let status = dispatcher.wait_exit(WAIT).await;
        let log = dispatcher.log();
        assert!(
            status.success(),
            "{var:?}: exit status {status:?}; log:\n{log}"
        );
        let loud: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .collect();
        assert!(loud.is_empty(), "{var:?}: {}", loud.join("\n"));
        assert_eq!(log.matches("Runtime started.").count(), 1, "{var:?}: {log}");
    }
    // Zero, not a number, and bytes that are not UTF-8.
    for bad in [&b"0"[..], b"many", b"\xff"] {
        let value = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bad);
        let mut dispatcher = Dispatcher::start_with(&config, log.clone(), Some(value), "info");
        let status = dispatcher.wait_exit(WAIT).await;
        let log = dispatcher.log();
        assert_eq!(status.code(), Some(1), "{value:?}: {log}");
        assert!(
            log.contains("error: TOKIO_WORKER_THREADS must be a whole number from 1, not"),
            "{value:?}: {log}"
        );
        assert!(!log.contains("panicked"), "{value:?}: {log}");
    }
    let _ = std::fs::remove_file(&config);
}

/// Retries and dead letters open the dispatcher's publishing channel; a
/// SIGTERM afterwards still stops it without an ERROR line (lapin used to
/// log one when it closed that channel during the connection's close).
#[tokio::test]
async fn sigterm_after_dead_letters_logs_no_error() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| Reply::Status(500, Vec::new()))).await;
    let config = write_config(
        &scope,
        "dead",
        &endpoint("ep", &receiver.url, "max_retries = 1"),
    );
    let log = std::env::temp_dir().join(format!("{}-dead.log", scope.prefix));
    let mut first = Dispatcher::start(&config, log);
    scope.wait_consumers("ep", 1).await;
    publish(&config, 5).await;
    let dead = format!("{}.dead", scope.prefix);
    eventually(WAIT, "5 dead letters", || async {
        (scope.depth(&dead).await == 5).then_some(())
    })
    .await;
    first.signal("TERM");
    let status = first.wait_exit(WAIT).await;
    let log = first.log();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(log.contains("Dispatcher stopped."), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
    let _ = std::fs::remove_file(&config);
}

/// An endpoint that fails every event: its retries and dead letters are
/// logged with backoff, each line counting the ones it stands for, not one
/// line per event.
#[tokio::test]
async fn a_failing_endpoint_logs_with_backoff_not_per_event() {
    let scope = Scope::new().await;
    let receiver = Receiver::with(Arc::new(|_, _| Reply::Status(500, Vec::new()))).await;
    let config = write_config(
        &scope,
        "flood",
        &endpoint("ep", &receiver.url, "max_retries = 1"),
    );
    let log = std::env::temp_dir().join(format!("{}-flood.log", scope.prefix));
    let mut dispatcher = Dispatcher::start(&config, log);
    scope.wait_consumers("ep", 1).await;
    let n = 60;
    publish(&config, n).await;
    let dead = format!("{}.dead", scope.prefix);
    eventually(WAIT, "every event dead-lettered", || async {
        (scope.depth(&dead).await == n as u32).then_some(())
    })
    .await;
    dispatcher.signal("TERM");
    let status = dispatcher.wait_exit(WAIT).await;
    let log = dispatcher.log();
    assert!(status.success(), "{log}");
    let lines = |what: &str| -> Vec<&str> { log.lines().filter(|l| l.contains(what)).collect() };
    let (retrying, dead_lettered) = (lines("Delivery failed; retrying"), lines("Dead-lettered"));
    assert!(!retrying.is_empty() && !dead_lettered.is_empty(), "{log}");
    // Each kind's first line at once, then at most one a second (doubling).
    assert!(
        retrying.len() <= 6,
        "{} retry lines:\n{log}",
        retrying.len()
    );
    assert!(
        dead_lettered.len() <= 6,
        "{} dead-letter lines:\n{log}",
        dead_lettered.len()
    );
    assert!(retrying[0].contains("failures=1"), "{}", retrying[0]);
    assert!(
        dead_lettered[0].contains("dead_lettered=1"),
        "{}",
        dead_lettered[0]
    );
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn sighup_reloads_and_rejects_an_invalid_config() {
    let scope = Scope::new().await;
    let (one, two) = (Receiver::start().await, Receiver::start().await);
    let config = write_config(&scope, "hup", &endpoint("one", &one.url, ""));
    let log = std::env::temp_dir().join(format!("{}-hup.log", scope.prefix));
    let dispatcher = Dispatcher::start(&config, log.clone());
    scope.wait_consumers("one", 1).await;

    let both = format!(
        "{}{}",
        endpoint("one", &one.url, ""),
        endpoint("two", &two.url, "")
    );
    write_config(&scope, "hup", &both);
    dispatcher.signal("HUP");
    scope.wait_consumers("two", 1).await;
    let ids = publish(&config, 3).await;
    two.wait_ids(&ids, WAIT).await;
    one.wait_ids(&ids, WAIT).await;

    std::fs::write(&config, "[amqp]\nnot_a_key = 1\n").expect("write");
    dispatcher.signal("HUP");
    eventually(WAIT, "the rejection logged", || async {
        dispatcher
            .log()
            .contains("keeping the running one")
            .then_some(())
    })
    .await;
    assert!(
        dispatcher.log().contains("amqp.not_a_key"),
        "{}",
        dispatcher.log()
    );
    write_config(&scope, "hup", &both);
    let ids = publish(&config, 2).await;
    two.wait_ids(&ids, WAIT).await;
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&log);
}
