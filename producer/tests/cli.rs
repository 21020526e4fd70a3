//! `hookpost-producer publish` as a user runs it, against the real broker.

use common::Event;
use std::process::Command;
use tests::{Scope, amqp_url};

fn producer(scope: &Scope) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookpost-producer"));
    cmd.env_remove("HOOKPOST_CONFIG")
        .env("HOOKPOST_AMQP_URL", amqp_url())
        .env("HOOKPOST_AMQP_PREFIX", &scope.prefix)
        .env("HOOKPOST_LOG", "warn");
    cmd
}

/// A `serve` child: killed if the test fails before stopping it, its log
/// printed then (a timeout otherwise shows nothing of why).
struct Serving(Option<std::process::Child>);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            if let Ok(out) = child.wait_with_output() {
                eprintln!(
                    "hookpost-producer serve's log:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

#[tokio::test]
async fn publish_prints_the_ids_it_published() {
    let scope = Scope::new().await;
    scope.track_config(&scope.config(""));
    // Declare the exchanges first so the observer queue can bind.
    producer::Publisher::connect(&scope.config(""))
        .await
        .expect("connect");
    let all = scope
        .observe(&format!("{}.events", scope.prefix), "#")
        .await;

    let out = producer(&scope)
        .args([
            "publish",
            "--type",
            "order.created",
            "--data",
            r#"{"order_id":7}"#,
            "--source",
            "cli",
            "--count",
            "3",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed.len(), 3);

    let got = scope.take(&all, 3).await;
    let mut stored: Vec<Event> = got
        .iter()
        .map(|m| Event::from_slice(&m.delivery.data).expect("envelope"))
        .collect();
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    let mut want = printed.clone();
    want.sort();
    assert_eq!(
        stored.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        want
    );
    assert!(
        stored
            .iter()
            .all(|e| e.data["order_id"] == 7 && e.source.as_deref() == Some("cli"))
    );

    let file = std::env::temp_dir().join(format!("{}.json", scope.prefix));
    std::fs::write(&file, r#"{"from":"file"}"#).expect("write");
    let out = producer(&scope)
        .args([
            "publish",
            "--type",
            "order.created",
            "--data",
            &format!("@{}", file.display()),
            "--id",
            "fixed-id-1",
        ])
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "fixed-id-1");
    let got = scope.take(&all, 1).await;
    assert_eq!(
        Event::from_slice(&got[0].delivery.data)
            .expect("envelope")
            .data["from"],
        "file"
    );

    // Past one call's thousand: every id printed once, each stored.
    let out = producer(&scope)
        .args(["publish", "--type", "bulk.item", "--count", "2500"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: std::collections::BTreeSet<String> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed.len(), 2500, "2,500 distinct ids");
    let stored: std::collections::BTreeSet<String> = scope
        .take(&all, 2500)
        .await
        .iter()
        .map(|m| Event::from_slice(&m.delivery.data).expect("envelope").id)
        .collect();
    assert_eq!(stored, printed);
}

/// Arguments, environment, and what standard error must say.
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn failures_exit_non_zero_with_a_clear_message() {
    let scope = Scope::new().await;
    let cases: [Case; 5] = [
        (&["publish", "--type", "Bad Type"], &[], "field `type`"),
        (
            &["publish", "--type", "a", "--data", "{oops"],
            &[],
            "--data is not valid JSON",
        ),
        (
            &[
                "publish",
                "--type",
                "a",
                "--data",
                "@/nonexistent/file.json",
            ],
            &[],
            "/nonexistent/file.json",
        ),
        (
            &["publish", "--type", "a"],
            &[
                ("HOOKPOST_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
                ("HOOKPOST_AMQP_PUBLISH_TIMEOUT_MS", "300"),
            ],
            "unreachable",
        ),
        (
            &["publish", "--type", "a"],
            &[("HOOKPOST_DEFAULTS_BATCH_SIZE", "0")],
            "HOOKPOST_DEFAULTS_BATCH_SIZE",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = producer(&scope);
        cmd.args(args).envs(env.iter().copied());
        let out = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed ids: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        assert!(
            !stderr.contains("guest:guest"),
            "credentials leaked: {stderr}"
        );
    }

    let config = std::env::temp_dir().join(format!("{}.toml", scope.prefix));
    std::fs::write(&config, "[amqp]\nurll = \"x\"\n").expect("write");
    let out = producer(&scope)
        .arg("--config")
        .arg(&config)
        .args(["publish", "--type", "a"])
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&config.display().to_string()) && stderr.contains("amqp.urll"),
        "{stderr}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn serve_runs_the_management_api_when_api_tokens_are_set() {
    let scope = Scope::new().await;
    let (ingest, metrics, api) = (free_port(), free_port(), free_port());
    let config = scope.write_config(
        "serve-api",
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[ingest]\nlisten = \"127.0.0.1:{ingest}\"\ntokens = [\"ingest-token-0123456789\"]\n[api]\nlisten = \"127.0.0.1:{api}\"\ntokens = [\"api-token-0123456789abc\"]\n[registry]\nsecrets_key = \"bG9jYWwtZGV2LWtleS0zMi1ieXRlcy1jaGFuZ2UtbWU=\"\n"
        ),
    );
    let mut serving = Serving(Some(
        producer(&scope)
            .env_remove("HOOKPOST_AMQP_PREFIX")
            .args(["--config"])
            .arg(&config)
            .arg("serve")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("serve starts"),
    ));
    let http = tests::http_client();
    let url = format!("http://127.0.0.1:{api}/v1/endpoints");
    let listed = tests::eventually(
        std::time::Duration::from_secs(30),
        "the API answering",
        || async {
            let resp = http
                .get(&url)
                .bearer_auth("api-token-0123456789abc")
                .send()
                .await
                .ok()?;
            (resp.status().as_u16() == 200).then_some(resp.text().await.ok()?)
        },
    )
    .await;
    assert!(listed.contains("\"endpoints\""), "{listed}");
    let refused = http
        .get(&url)
        .bearer_auth("ingest-token-0123456789")
        .send()
        .await
        .expect("request");
    assert_eq!(
        refused.status().as_u16(),
        401,
        "ingest tokens are not API tokens"
    );
    let child = serving.0.take().expect("still running");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("serve exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "clean exit on SIGTERM: {log}");
    // A start and a stop right after it (a publisher still setting up its
    // channel when the close comes) log no warning or error.
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .collect();
    assert!(bad.is_empty(), "WARN/ERROR lines:\n{}", bad.join("\n"));
}

#[tokio::test]
async fn publish_with_tenant_and_environment_routes_on_the_scoped_exchange() {
    let scope = Scope::new().await;
    scope.track_config(&scope.config(""));
    producer::Publisher::connect(&scope.config(""))
        .await
        .expect("connect");
    let scoped = scope
        .observe(&format!("{}.events.scoped", scope.prefix), "t=acme.e=snd.#")
        .await;
    let out = producer(&scope)
        .args([
            "publish",
            "--type",
            "order.created",
            "--tenant",
            "acme",
            "--environment",
            "snd",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = scope.take(&scoped, 1).await;
    assert_eq!(
        got[0].delivery.routing_key.as_str(),
        "t=acme.e=snd.order.created"
    );
    let event = Event::from_slice(&got[0].delivery.data).expect("envelope");
    assert_eq!(event.tenant.as_deref(), Some("acme"));
    assert_eq!(event.environment.as_deref(), Some("snd"));

    for (flag, value) in [("--tenant", "Acme Corp"), ("--environment", "a.b")] {
        let out = producer(&scope)
            .args(["publish", "--type", "order.created", flag, value])
            .output()
            .expect("run");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let field = flag.trim_start_matches("--");
        assert!(
            stderr.contains(&format!("field `{field}`")) && stderr.contains("[a-z0-9_-]"),
            "{stderr}"
        );
    }
}
