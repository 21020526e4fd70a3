//! A broker that blocks publishers (memory alarm), for real: a throw-away
//! node (`tests::node`), never the shared broker. One test, one node (it
//! takes a few seconds to boot): the CLI, the library and the ingest server
//! fail fast while the alarm lasts, say so in the log and the metric, and
//! publish again once it clears.

use common::{Config, Event};
use producer::{PublishError, Publisher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::eventually;
use tests::node::{Node, free_port};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Process start, connection and confirm-select on top of the publish timeout.
const MARGIN: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "blocked-token-0123456789";

/// `hookpost-producer serve` as a child process, killed when dropped.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Removes a file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `hookpost-producer publish`; kills it (and fails the test) when it
/// is still running well past its bound, so a regression fails, not hangs.
fn cli_publish(config: &Path) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookpost-producer"))
        .arg("--config")
        .arg(config)
        .args(["publish", "--type", "blocked.test", "--data", "{}"])
        .env_remove("HOOKPOST_CONFIG")
        .env("HOOKPOST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hookpost-producer");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > TIMEOUT + MARGIN + Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "hookpost-producer publish still running after {:?}; killed: {}",
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    (child.wait_with_output().expect("output"), took)
}

async fn post(client: &reqwest::Client, url: &str) -> (u16, Option<String>) {
    let r = client
        .post(url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"type": "blocked.ingest"}"#)
        .send()
        .await
        .expect("ingest answers");
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry_after)
}

async fn blocked_gauge(client: &reqwest::Client, url: &str) -> Option<i64> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("hookpost_broker_blocked "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_fails_publishes_fast_and_they_resume_after_it() {
    let name = format!("hpt-blocked-{}", std::process::id());
    let port = free_port();
    let node = tokio::task::spawn_blocking(move || Node::start(&name, port))
        .await
        .expect("join");
    let Some(node) = node else { return };

    let (ingest_port, metrics_port) = (free_port(), free_port());
    let text = format!(
        "[amqp]\nurl = \"{}\"\nprefix = \"hpt-blocked\"\npublish_timeout_ms = {}\n\
         [ingest]\nlisten = \"127.0.0.1:{ingest_port}\"\ntokens = [\"{TOKEN}\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        node.amqp_url(),
        TIMEOUT.as_millis()
    );
    let path = std::env::temp_dir().join(format!("hpt-blocked-{}.toml", std::process::id()));
    std::fs::write(&path, &text).expect("write config");
    let _config_file = TempFile(path.clone());
    let config = Config::from_toml_str(&text, &path, &[]).expect("valid config");

    let log = path.with_extension("log");
    let serve = Serve {
        child: Command::new(env!("CARGO_BIN_EXE_hookpost-producer"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env_remove("HOOKPOST_CONFIG")
            .env("HOOKPOST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn serve"),
        log,
    };
    let http = tests::http_client();
    let ingest = format!("http://127.0.0.1:{ingest_port}/v1/events");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let ready = format!("http://127.0.0.1:{metrics_port}/readyz");
    eventually(WAIT, "the ingest server to be ready", || async {
        let r = http.get(&ready).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // Before the alarm everything publishes.
    let publisher = Publisher::connect(&config).await.expect("connect");
    let event = Event::new("blocked.lib", serde_json::Value::Null).expect("valid");
    publisher.publish(&event).await.expect("confirmed");
    assert_eq!(post(&http, &ingest).await.0, 202);
    assert_eq!(blocked_gauge(&http, &metrics).await, Some(0));

    // Only the throw-away node: never the shared broker.
    node.ctl(&["set_vm_memory_high_watermark", "0.0001"]);

    // The CLI: exits non-zero within its bound, saying why. It hung past
    // 120 s before (the close waited for a close-ok a blocked connection
    // never gets).
    let (out, took) = tokio::task::spawn_blocking(move || cli_publish(&path))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "published while blocked: {stderr}");
    assert!(took < TIMEOUT + MARGIN, "the CLI took {took:?}: {stderr}");
    assert!(
        stderr.contains("blocking publishes") || stderr.contains("not confirmed within"),
        "{stderr}"
    );

    // The library: the first publish learns of the block, the next fails at once.
    let started = Instant::now();
    let err = publisher.publish(&event).await.expect_err("blocked");
    let first = started.elapsed();
    assert!(
        first < TIMEOUT + Duration::from_millis(500),
        "{first:?}: {err}"
    );
    assert!(err.is_retryable(), "{err}");
    let started = Instant::now();
    let err = publisher.publish(&event).await.expect_err("still blocked");
    let second = started.elapsed();
    assert!(matches!(err, PublishError::Blocked { .. }), "{err}");
    assert!(second < Duration::from_millis(200), "{second:?}");
    assert!(publisher.blocked().is_some());
    println!("blocked: CLI exited after {took:?}; library failed after {first:?}, then {second:?}");

    // The ingest: 503 with Retry-After, the gauge at 1, one WARN line.
    let (status, retry_after) = post(&http, &ingest).await;
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
    eventually(WAIT, "hookpost_broker_blocked 1", || async {
        (blocked_gauge(&http, &metrics).await == Some(1)).then_some(())
    })
    .await;
    let (status, retry_after) = post(&http, &ingest).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (503, Some("5")),
        "fails fast while blocked"
    );
    assert_eq!(
        serve
            .log()
            .matches("Broker blocked this connection")
            .count(),
        1,
        "{}",
        serve.log()
    );

    // The alarm clears: the gauge goes back to 0, the log says so, and
    // everything publishes again.
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    eventually(WAIT, "hookpost_broker_blocked 0", || async {
        (blocked_gauge(&http, &metrics).await == Some(0)).then_some(())
    })
    .await;
    assert!(
        serve.log().contains("Broker unblocked this connection."),
        "{}",
        serve.log()
    );
    eventually(WAIT, "the ingest to accept again", || async {
        (post(&http, &ingest).await.0 == 202).then_some(())
    })
    .await;
    eventually(WAIT, "the library to publish again", || async {
        publisher.publish(&event).await.ok()
    })
    .await;
    assert!(publisher.blocked().is_none());
    let path = config.origin.clone();
    let (out, _) = tokio::task::spawn_blocking(move || cli_publish(&path))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    publisher.close().await;
    drop(serve);
    drop(node);
}
