//! The README's quick start, run as a new user types it: the commands are
//! read from the README's "Quick start" section (so the two cannot drift),
//! run from the repository root, and must end with the example receiver
//! printing `verified <id>` for the published event. The dispatcher must log
//! no WARN and no ERROR line from its start to its exit on SIGTERM.
//!
//! The only differences from a user's shell: the broker objects live under
//! this test's own prefix (`HOOKPOST_AMQP_PREFIX`, removed at the end), and
//! the first `cargo run --release` may build for several minutes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::{Scope, eventually};

/// The first run builds the release binaries.
const BUILD_WAIT: Duration = Duration::from_secs(30 * 60);
const WAIT: Duration = Duration::from_secs(60);
/// Longest one of the README's commands may run: it may build the release
/// binaries (`cargo run --release`), as the dispatcher's start may.
const COMMAND_LIMIT: Duration = BUILD_WAIT;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The shell commands of the README's Quick start, by code block: comment
/// lines dropped, continuations joined, trailing comments removed. Each
/// command keeps the comment line above it (if any) as its label.
fn quick_start() -> Vec<Vec<(String, String)>> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut in_block = false;
    let (mut block, mut label, mut pending) = (Vec::new(), String::new(), String::new());
    for line in section.lines() {
        if line.starts_with("```") {
            if in_block {
                blocks.push(std::mem::take(&mut block));
            }
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            label = comment.trim().to_owned();
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        block.push((
            std::mem::take(&mut label),
            strip_comment(&std::mem::take(&mut pending)),
        ));
    }
    blocks
}

/// `cmd   # comment` → `cmd` (a `#` inside quotes is kept).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return line[..i].trim_end().to_owned();
            }
            _ => {}
        }
        prev = c;
    }
    line.trim_end().to_owned()
}

/// A child process killed (with its process group) when dropped.
struct Spawned {
    child: Child,
    log: PathBuf,
}

impl Spawned {
    fn start(command: &str, prefix: &str, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        // Its own process group, so the whole command (shell, cargo, the
        // program) is signalled and killed together.
        let child = Command::new("bash")
            .arg("-c")
            .arg(command)
            .process_group(0)
            .current_dir(root())
            .env("HOOKPOST_AMQP_PREFIX", prefix)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
        Self { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("-KILL");
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The lines of `log` that are warnings or errors (tracing writes the
/// level after the timestamp, with or without colours).
fn warnings(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| {
            // Strip ANSI colour codes.
            let mut out = String::new();
            let mut chars = l.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            out
        })
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next();
            matches!(words.next(), Some("WARN" | "ERROR")) || l.contains("panicked")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_delivers_to_the_example_receiver() {
    let blocks = quick_start();
    assert!(
        blocks.len() >= 2,
        "two sh blocks in Quick start: {blocks:?}"
    );
    let commands = &blocks[0];
    let run = commands
        .iter()
        .find(|(label, _)| label.starts_with("run:"))
        .map(|(_, c)| c.clone())
        .expect("a `# run:` command");
    let test = commands
        .iter()
        .find(|(label, _)| label.starts_with("test:"))
        .map(|(_, c)| c.clone())
        .expect("a `# test:` command");
    // CI runs the README's test command.
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == test),
        "`.ci/run` must run the README's test command `{test}`"
    );
    for port in [9000, 9464] {
        assert!(
            port_free(port),
            "port {port} is taken: the quick start needs it (stop your own dispatcher or receiver)"
        );
    }

    let scope = Scope::new().await;
    let logs = std::env::temp_dir().join(format!("{}-quickstart", scope.prefix));
    std::fs::create_dir_all(&logs).expect("log dir");
    let _remove_logs = RemoveOnDrop(logs.clone());
    let local = std::fs::read_to_string(root().join("deploy/local.toml")).expect("local.toml");
    let config = common::Config::from_toml_str(
        &local,
        "deploy/local.toml".as_ref(),
        &[("HOOKPOST_AMQP_PREFIX".to_owned(), scope.prefix.clone())],
    )
    .expect("local.toml is valid");
    scope.track_config(&config);
    assert!(
        !config.endpoints.is_empty(),
        "deploy/local.toml delivers to the example receiver"
    );

    // The run command, in the background, until it is ready.
    let mut dispatcher = Spawned::start(&run, &scope.prefix, logs.join("dispatcher.log"));
    let client = tests::http_client();
    eventually(
        BUILD_WAIT,
        "the dispatcher of the run command ready",
        || {
            let client = client.clone();
            // A run command that ended (a failed set-up, a taken port) fails at once.
            if let Ok(Some(status)) = dispatcher.child.try_wait() {
                panic!(
                    "the run command exited ({status}):\n{}",
                    dispatcher.output()
                );
            }
            async move {
                let r = client
                    .get("http://127.0.0.1:9464/readyz")
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;

    // The second block: receiver in the background, then the publish.
    let mut background = Vec::new();
    let mut published = None;
    for (i, (_, command)) in blocks[1].iter().enumerate() {
        if let Some(command) = command.strip_suffix('&') {
            let spawned = Spawned::start(
                command.trim(),
                &scope.prefix,
                logs.join(format!("bg{i}.log")),
            );
            eventually(WAIT, "the receiver listening on 9000", || async {
                tokio::net::TcpStream::connect("127.0.0.1:9000").await.ok()
            })
            .await;
            background.push(spawned);
            continue;
        }
        // A command that does not end (a hung install or build) is killed
        // and fails the test.
        let out = tokio::time::timeout(
            COMMAND_LIMIT,
            tokio::process::Command::new("bash")
                .arg("-c")
                .arg(command)
                .current_dir(root())
                .env("HOOKPOST_AMQP_PREFIX", &scope.prefix)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("`{command}` did not end within {COMMAND_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "`{command}` failed:\n{stderr}");
        assert!(
            warnings(&stderr).is_empty(),
            "`{command}` logged warnings: {stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(id) = stdout.lines().find(|l| l.starts_with("evt_")) {
            published = Some(id.trim().to_owned());
        }
    }
    let id = published.expect("the publish command printed an event id");
    let receiver = background.first().expect("a receiver in the background");
    eventually(WAIT, "the receiver verified the event", || async {
        receiver
            .output()
            .contains(&format!("verified {id}"))
            .then_some(())
    })
    .await;

    // SIGTERM: a clean exit, and not one warning from start to stop.
    dispatcher.signal("-TERM");
    let status = eventually(WAIT, "the dispatcher exits on SIGTERM", || {
        let status = dispatcher.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    let log = dispatcher.output();
    assert!(status.success(), "dispatcher exit {status}:\n{log}");
    assert!(log.contains("Dispatcher stopped."), "{log}");
    let bad = warnings(&log);
    assert!(bad.is_empty(), "WARN/ERROR lines:\n{}", bad.join("\n"));
    drop(background);
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn comments_are_stripped_outside_quotes_only() {
    assert_eq!(strip_comment("a &   # port 9000"), "a &");
    assert_eq!(strip_comment("a '#x' \"#y\""), "a '#x' \"#y\"");
    assert_eq!(strip_comment("a#b"), "a#b");
    assert_eq!(
        warnings("2026-12-02T13:36:46Z \u{1b}[31mERROR\u{1b}[0m x\n2026-12-02T13:36:46Z  INFO y"),
        vec!["2026-12-02T13:36:46Z ERROR x"]
    );
}
