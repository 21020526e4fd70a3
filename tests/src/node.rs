//! A throw-away RabbitMQ node on this machine, for tests that must make a
//! broker misbehave for real (a memory alarm, later clusters) without
//! touching the shared broker at `AMQP_URL`.
//!
//! [`Node::start`] runs `rabbitmq-server` with its own node name, AMQP port,
//! distribution port and data/log directory (as `BENCHMARKS.md` does by
//! hand); dropping the [`Node`] stops it and deletes the directory, also
//! when the test panics. Starting takes about five seconds, so tests share
//! one node where they can.
//!
//! Set `HOOKPOST_SKIP_NODE_TESTS=1` where `rabbitmq-server` is not installed
//! (a remote `AMQP_URL`): [`Node::start`] then returns `None`. Without it, a
//! missing `rabbitmq-server` fails the test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Longest wait for a node to boot.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running throw-away node; stopped and deleted when dropped.
#[derive(Debug)]
pub struct Node {
    node: String,
    port: u16,
    dir: PathBuf,
    as_rabbitmq: bool,
}

/// A free TCP port on 127.0.0.1 (free when asked; a node binds it soon after).
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

pub(crate) fn server_binary() -> Option<PathBuf> {
    // Debian's /usr/sbin wrapper switches user with `su`, which drops the
    // environment; the script it wraps takes it as given.
    let lib = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if lib.exists() {
        return Some(lib.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("rabbitmq-server"))
            .find(|p| p.exists())
    })
}

impl Node {
    /// Starts node `name@localhost` with AMQP on 127.0.0.1:`port` and waits
    /// until it accepts connections. `name` must be unique on the machine.
    /// Returns `None` only when `HOOKPOST_SKIP_NODE_TESTS` is set and
    /// `rabbitmq-server` is missing.
    ///
    /// # Panics
    /// When the node does not start within [`START_TIMEOUT`] (its log is in
    /// the panic message).
    pub fn start(name: &str, port: u16) -> Option<Self> {
        let Some(server) = server_binary() else {
            assert!(
                std::env::var_os("HOOKPOST_SKIP_NODE_TESTS").is_some(),
                "rabbitmq-server is not installed; install it or set HOOKPOST_SKIP_NODE_TESTS=1"
            );
            eprintln!("rabbitmq-server missing and HOOKPOST_SKIP_NODE_TESTS set: skipped");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("hpt-node-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("node directory");
        }
        std::fs::write(dir.join("plugins"), "[].\n").expect("plugins file");
        // Root runs the node as the rabbitmq user, with that user's Erlang
        // cookie, so the rabbitmqctl wrapper (which also switches to it) can
        // talk to the node. Anyone else runs it as themselves.
        let as_rabbitmq = is_root() && user_exists("rabbitmq");
        let node = Self {
            node: format!("{name}@localhost"),
            port,
            dir,
            as_rabbitmq,
        };
        if as_rabbitmq {
            let _ = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&node.dir)
                .status();
        }
        let dist_port = free_port();
        let mut cmd = if as_rabbitmq {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "rabbitmq",
                "--regid",
                "rabbitmq",
                "--init-groups",
            ])
            .arg(&server);
            c.env("HOME", "/var/lib/rabbitmq");
            c
        } else {
            let mut c = Command::new(&server);
            c.env("HOME", &node.dir);
            c
        };
        cmd.arg("-detached")
            .env("RABBITMQ_NODENAME", &node.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", node.dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("none"));
        let started = cmd.status().expect("run rabbitmq-server");
        assert!(started.success(), "rabbitmq-server -detached: {started}");
        // From here on, a panic drops `node`, which stops it and cleans up.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = node.rabbitmqctl(&["await_startup", "--timeout", "5"]);
            if up.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start within {START_TIMEOUT:?}: {}\n{}",
                node.node,
                String::from_utf8_lossy(&up.stderr),
                node.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Some(node)
    }

    /// The node's AMQP URL (guest may log in from loopback).
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl -n <this node> args...`.
    ///
    /// # Panics
    /// When rabbitmqctl cannot be run at all.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Output {
        // Killed after two minutes: a node that stopped answering fails
        // the test instead of hanging it.
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", "120", "rabbitmqctl"]);
        if !self.as_rabbitmq {
            cmd.env("HOME", &self.dir);
        }
        cmd.arg("-q")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("run rabbitmqctl")
    }

    /// Like [`Node::rabbitmqctl`], panicking with its output when it fails.
    ///
    /// # Panics
    /// When the command fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.rabbitmqctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}{}",
            self.node,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // With the pid file, `stop` returns once the process has exited.
        let pid_file = self.dir.join("pid");
        let stopped = self
            .rabbitmqctl(&["stop", &pid_file.to_string_lossy()])
            .status
            .success();
        if !stopped && let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub(crate) fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}
