//! A throw-away three-node RabbitMQ cluster on this machine (issue 17), for
//! tests that kill, restart and partition broker nodes for real without
//! touching the shared broker at `AMQP_URL`. Needs root (network namespaces).
//!
//! # Layout
//!
//! A cluster takes a free number `X` in 1..=250 (the first whose directory
//! `$TMPDIR/hookpost-cluster-X` could be created; that directory is the lock)
//! and the network `10.231.X.0/24`:
//!
//! ```text
//!  root namespace (the test process)        namespace hpcX-hub
//!   hpcX  10.231.X.1/24  <── veth ──>  uplink ─┐
//!                                          br0 (bridge, no address)
//!                                      p1 ─┼─ veth ─> hpcX-n1: eth0 10.231.X.11  node hpc1@10.231.X.11
//!                                      p2 ─┼─ veth ─> hpcX-n2: eth0 10.231.X.12  node hpc2@10.231.X.12
//!                                      p3 ─┘─ veth ─> hpcX-n3: eth0 10.231.X.13  node hpc3@10.231.X.13
//! ```
//!
//! The root namespace gains one interface (`hpcX`) and its connected route
//! for `10.231.X.0/24`; nothing else of the machine's network is touched.
//! Each node namespace has its own stack, so every node uses the standard
//! ports there: AMQP 5672, distribution 25672, and its own epmd on 4369
//! (bound to the namespace's loopback and address). Nodes use long names
//! (`RABBITMQ_USE_LONGNAME`), a cookie of the cluster's own, their own
//! data and log directories under `$TMPDIR/hookpost-cluster-X/nI`, and a
//! config with `cluster_partition_handling = pause_minority`,
//! `loopback_users = none` (guest may log in over the bridge) and
//! `net_ticktime = 10` (a cut is noticed in 10-20 s instead of 60-75 s).
//! The nodes run as the `rabbitmq` user (`setpriv`), like [`crate::node`].
//! `/etc/rabbitmq/rabbitmq-env.conf` is not read (it pins epmd and the
//! distribution to 127.0.0.1): `RABBITMQ_CONF_ENV_FILE` points at an empty
//! file of ours.
//!
//! Nodes are numbered 1, 2, 3 in every method. `rabbitmqctl` runs inside the
//! node's namespace ([`Cluster::ctl`]), so it works while the node is cut.
//! Commands that gather from every node (`list_queues`, `list_connections`)
//! time out: the other nodes answer the CLI node directly and resolve its
//! host name (`localhost.localdomain`) to their own loopback. Use `--local`
//! on each node (`list_queues --local` lists the quorum queues a node
//! leads), `rabbitmq-queues quorum_status` ([`Cluster::cli`]) or
//! [`Cluster::quorum_leader_and_members`]. (From the root namespace,
//! single-node commands work too: `rabbitmqctl --longnames -n hpc1@10.231.X.11`
//! with the cluster's `HOME` for the cookie.)
//! The three boot at once as single nodes, then 2 and 3 join node 1
//! (`stop_app`, `join_cluster`, `start_app`); a node restarted later rejoins
//! by itself.
//!
//! [`Cluster::cut`] partitions a node from the other two nodes only
//! (blackhole routes in the three namespaces, both directions): the test
//! process still reaches it, so a test can see a paused minority refuse
//! AMQP. [`Cluster::unplug`] takes its link down instead, cutting it off from
//! the test process too.
//!
//! Dropping the [`Cluster`] kills every process in its namespaces, deletes
//! the namespaces (which deletes their veths and the bridge) and the
//! directory, also when the test panics. [`Cluster::start`] first removes
//! what a killed run left behind: `hpcN-*` namespaces and `hpcN` links whose
//! owner process (pid in `hookpost-cluster-N/owner`) is gone.
//!
//! Set `HOOKPOST_SKIP_NODE_TESTS=1` where `rabbitmq-server` is not installed:
//! [`Cluster::start`] then returns `None`.

use crate::node::{is_root, server_binary, user_exists};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a node to boot or rejoin.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Longest a RabbitMQ CLI command may run ([`Cluster::cli`]); a graceful
/// `stop` of a node takes well under it.
pub const CLI_LIMIT: Duration = Duration::from_secs(120);

/// Number of nodes.
pub const NODES: usize = 3;

const NET: &str = "10.231";
const CONF: &str = "\
loopback_users = none
cluster_partition_handling = pause_minority
net_ticktime = 10
listeners.tcp.default = 5672
";

/// A running three-node cluster; stopped and deleted when dropped.
#[derive(Debug)]
pub struct Cluster {
    x: u8,
    dir: PathBuf,
    server: PathBuf,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)")
}

/// Runs `ip args`, panicking with its error when it fails.
fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether process `pid` exists and is not a zombie waiting to be reaped.
fn pid_alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) else {
        return false;
    };
    // "pid (comm) state ...": the state follows the last ')'.
    !pid.is_empty()
        && stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

fn namespace_pids(ns: &str) -> Vec<String> {
    String::from_utf8_lossy(&ip(&["netns", "pids", ns]).stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Kills every process in `ns` and waits (up to 10 s) until they are gone.
fn kill_namespace(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = namespace_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        let _ = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_plain(queue: &str) {
    assert!(
        queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "queue names here are plain: {queue}"
    );
}

fn cluster_dir(x: u8) -> PathBuf {
    std::env::temp_dir().join(format!("hookpost-cluster-{x}"))
}

/// Namespaces of cluster `x`: the hub first, then nodes 1..=3.
fn namespaces(x: u8) -> Vec<String> {
    std::iter::once(format!("hpc{x}-hub"))
        .chain((1..=NODES).map(|i| format!("hpc{x}-n{i}")))
        .collect()
}

fn teardown(x: u8) {
    let all = namespaces(x);
    for ns in all.iter().skip(1) {
        kill_namespace(ns);
    }
    for ns in all.iter().rev() {
        let _ = ip(&["netns", "del", ns]);
    }
    // Gone with the hub already; this covers a run killed half-way.
    let _ = ip(&["link", "del", &format!("hpc{x}")]);
    let _ = std::fs::remove_dir_all(cluster_dir(x));
}

/// Removes namespaces, links and directories of clusters whose test process
/// is gone (a run killed before its `Drop`). Clusters of live processes are
/// left alone.
pub fn remove_leftovers() {
    let owner_alive = |x: u8| {
        let dir = cluster_dir(x);
        match std::fs::read_to_string(dir.join("owner")) {
            Ok(pid) => pid_alive(pid.trim()),
            // Claimed a moment ago, its owner file not written yet (another
            // process's `start`): only a stale directory is a leftover.
            Err(_) => std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60)),
        }
    };
    let mut dead = std::collections::BTreeSet::new();
    let listed = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).into_owned();
    let links = String::from_utf8_lossy(&ip(&["-o", "link", "show"]).stdout).into_owned();
    let names = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| {
            n.strip_prefix("hpc")?
                .split_once('-')
                .map(|(x, _)| x.to_owned())
        })
        .chain(links.lines().filter_map(|l| {
            let name = l.split(':').nth(1)?.trim().split('@').next()?;
            let x = name.strip_prefix("hpc")?;
            Some(x.to_owned())
        }));
    for x in names {
        if let Ok(x) = x.parse::<u8>()
            && !owner_alive(x)
        {
            dead.insert(x);
        }
    }
    for x in 1..=250u8 {
        if cluster_dir(x).exists() && !owner_alive(x) {
            dead.insert(x);
        }
    }
    for x in dead {
        eprintln!("cluster: removing leftovers of cluster {x}");
        teardown(x);
    }
}

impl Cluster {
    /// Builds the network, boots node 1, joins nodes 2 and 3 to it and waits
    /// until all three run. Returns `None` only when
    /// `HOOKPOST_SKIP_NODE_TESTS` is set and `rabbitmq-server` is missing.
    /// `name` is only used in messages.
    ///
    /// # Panics
    /// When not root, when the network cannot be built, or when a node does
    /// not start within [`START_TIMEOUT`] (its log is in the message).
    pub fn start(name: &str) -> Option<Self> {
        let Some(server) = server_binary() else {
            assert!(
                std::env::var_os("HOOKPOST_SKIP_NODE_TESTS").is_some(),
                "rabbitmq-server is not installed; install it or set HOOKPOST_SKIP_NODE_TESTS=1"
            );
            eprintln!("rabbitmq-server missing and HOOKPOST_SKIP_NODE_TESTS set: skipped");
            return None;
        };
        assert!(
            is_root() && user_exists("rabbitmq"),
            "the cluster harness needs root (network namespaces) and the rabbitmq user"
        );
        // Clusters of this process start in parallel (tests run on threads):
        // one at a time removes leftovers and claims a number, so none takes
        // another's directory, claimed but without its owner file yet, for a
        // leftover.
        static CLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let claim = CLAIM
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        remove_leftovers();
        let began = Instant::now();
        // The directory is the lock on X: create_dir fails if it exists.
        let x = (1..=250u8)
            .find(|&x| std::fs::create_dir(cluster_dir(x)).is_ok())
            .expect("a free cluster number");
        let cluster = Self {
            x,
            dir: cluster_dir(x),
            server,
        };
        // From here on, a panic drops `cluster`, which removes everything.
        std::fs::write(cluster.dir.join("owner"), std::process::id().to_string())
            .expect("owner file");
        drop(claim);
        cluster.build_network();
        cluster.write_files();
        let network = began.elapsed();
        for i in 1..=NODES {
            cluster.launch(i);
        }
        for i in 1..=NODES {
            cluster.await_startup(i);
        }
        let booted = began.elapsed();
        for i in 2..=NODES {
            cluster.ctl(i, &["stop_app"]);
            cluster.ctl(i, &["join_cluster", &cluster.node(1)]);
            cluster.ctl(i, &["start_app"]);
        }
        cluster.wait_running(NODES, START_TIMEOUT);
        eprintln!(
            "cluster {name}: {NODES} nodes on {NET}.{x}.0/24 running in {:?} \
             (network {network:?}, boot {:?}, joins {:?})",
            began.elapsed(),
            booted - network,
            began.elapsed() - booted
        );
        Some(cluster)
    }

    fn build_network(&self) {
        let x = self.x;
        let mut all = namespaces(x);
        let nodes = all.split_off(1);
        let hub = all.remove(0);
        let root_link = format!("hpc{x}");
        ip_ok(&["netns", "add", &hub]);
        ip_ok(&["-n", &hub, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", &hub, "link", "set", "br0", "up"]);
        ip_ok(&[
            "link", "add", &root_link, "type", "veth", "peer", "name", "uplink", "netns", &hub,
        ]);
        ip_ok(&[
            "-n", &hub, "link", "set", "dev", "uplink", "master", "br0", "up",
        ]);
        ip_ok(&["addr", "add", &format!("{NET}.{x}.1/24"), "dev", &root_link]);
        ip_ok(&["link", "set", &root_link, "up"]);
        for (i, ns) in (1..=NODES).zip(nodes) {
            let port = format!("p{i}");
            ip_ok(&["netns", "add", &ns]);
            ip_ok(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip_ok(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip_ok(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(i)),
                "dev",
                "eth0",
            ]);
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    fn write_files(&self) {
        let home = self.dir.join("home");
        std::fs::create_dir_all(&home).expect("home directory");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("cookie");
        std::fs::write(self.dir.join("rabbitmq.conf"), CONF).expect("config");
        std::fs::write(self.dir.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(self.dir.join("plugins"), "[].\n").expect("plugins file");
        for i in 1..=NODES {
            for sub in ["mnesia", "log"] {
                std::fs::create_dir_all(self.node_dir(i).join(sub)).expect("node directory");
            }
        }
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&self.dir)
            .status()
            .expect("run chown");
        assert!(chown.success(), "chown {}", self.dir.display());
        // Erlang refuses a cookie file others can read.
        let chmod = Command::new("chmod")
            .arg("400")
            .arg(&cookie)
            .status()
            .expect("chmod");
        assert!(chmod.success(), "chmod the cookie");
    }

    /// `ip netns exec <node i's namespace> setpriv <as rabbitmq> program`,
    /// with the cluster's home (cookie) and env file; killed after `limit`
    /// when one is given (coreutils' `timeout`).
    fn in_namespace(&self, i: usize, program: &Path, limit: Option<Duration>) -> Command {
        let mut c = match limit {
            Some(limit) => {
                let mut c = Command::new("timeout");
                c.args(["--kill-after=5", &limit.as_secs().to_string(), "ip"]);
                c
            }
            None => Command::new("ip"),
        };
        c.args(["netns", "exec", &self.namespace(i)])
            .args([
                "setpriv",
                "--reuid",
                "rabbitmq",
                "--regid",
                "rabbitmq",
                "--init-groups",
            ])
            .arg(program)
            // The rabbitmq user may not be able to enter the test's working
            // directory (a checkout under a 0700 temporary directory): the
            // node and its tools then fail to start. Run them from the
            // cluster's own directory.
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env_remove("ERL_FLAGS")
            .env_remove("RABBITMQ_NODENAME");
        c
    }

    fn launch(&self, i: usize) {
        let dir = self.node_dir(i);
        let status = self
            .in_namespace(i, &self.server, None)
            .arg("-detached")
            .env("RABBITMQ_USE_LONGNAME", "true")
            .env("RABBITMQ_NODENAME", self.node(i))
            .env("ERL_EPMD_ADDRESS", format!("127.0.0.1,{}", self.ip(i)))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .stdout(Stdio::null())
            .status()
            .expect("run rabbitmq-server");
        assert!(
            status.success(),
            "rabbitmq-server -detached for node {i}: {status}"
        );
    }

    fn await_startup(&self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = self.rabbitmqctl(i, &["await_startup", "--timeout", "5"]);
            if up.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start within {START_TIMEOUT:?}: {}\n{}",
                self.node(i),
                String::from_utf8_lossy(&up.stderr),
                self.log_tail(i)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Node `i`'s Erlang node name, `hpcI@10.231.X.1I`.
    pub fn node(&self, i: usize) -> String {
        format!("hpc{i}@{}", self.ip(i))
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        assert!((1..=NODES).contains(&i), "nodes are numbered 1..={NODES}");
        format!("{NET}.{}.1{i}", self.x)
    }

    /// Node `i`'s network namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("hpc{}-n{i}", self.x)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}"))
    }

    /// Node `i`'s AMQP URL.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@{}:5672/%2f", self.ip(i))
    }

    /// The AMQP URLs of nodes 1, 2, 3 (in that order).
    pub fn urls(&self) -> Vec<String> {
        (1..=NODES).map(|i| self.url(i)).collect()
    }

    /// Runs `rabbitmqctl -q --longnames -n <node i> args...` inside node
    /// `i`'s namespace.
    ///
    /// # Panics
    /// When rabbitmqctl cannot be run at all.
    pub fn rabbitmqctl(&self, i: usize, args: &[&str]) -> Output {
        self.cli(i, "rabbitmqctl", args)
    }

    /// Runs RabbitMQ CLI tool `tool` (`rabbitmq-queues`,
    /// `rabbitmq-diagnostics`, ...) like [`Cluster::rabbitmqctl`]; e.g.
    /// `cli(1, "rabbitmq-queues", &["quorum_status", "q", "--formatter", "json"])`.
    /// A run longer than [`CLI_LIMIT`] is killed and fails (exit status
    /// 124): the tools wait without limit for some answers, and a test
    /// that polls retries instead of hanging.
    ///
    /// # Panics
    /// When the tool cannot be run at all.
    pub fn cli(&self, i: usize, tool: &str, args: &[&str]) -> Output {
        self.in_namespace(
            i,
            &Path::new("/usr/lib/rabbitmq/bin").join(tool),
            Some(CLI_LIMIT),
        )
        .args(["-q", "--longnames", "-n", &self.node(i)])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    /// Like [`Cluster::rabbitmqctl`], panicking with its output when it
    /// fails; returns its standard output.
    ///
    /// # Panics
    /// When the command fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let out = self.rabbitmqctl(i, args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}{}",
            self.node(i),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The nodes node `i` reports running (`cluster_status`), or `None` when
    /// it does not answer.
    pub fn running_nodes(&self, i: usize) -> Option<Vec<String>> {
        let out = self.rabbitmqctl(i, &["cluster_status", "--formatter", "json"]);
        if !out.status.success() {
            return None;
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let nodes = status.get("running_nodes")?.as_array()?;
        Some(
            nodes
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// Whether the RabbitMQ application runs on node `i` (false while it is
    /// paused as a minority, stopped or booting; false when it is down).
    pub fn is_running(&self, i: usize) -> bool {
        let out = self.rabbitmqctl(i, &["eval", "rabbit:is_running()."]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// Waits until a node that itself runs reports `n` running nodes
    /// (`cluster_status`), and returns how long that took.
    ///
    /// # Panics
    /// After `timeout`.
    pub fn wait_running(&self, n: usize, timeout: Duration) -> Duration {
        let began = Instant::now();
        loop {
            let mut seen = Vec::new();
            for i in 1..=NODES {
                if let Some(nodes) = self.running_nodes(i) {
                    if nodes.len() == n && self.is_running(i) {
                        return began.elapsed();
                    }
                    seen.push((i, nodes));
                }
            }
            assert!(
                began.elapsed() < timeout,
                "{n} running nodes not reached within {timeout:?}; last seen: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Quorum queue `queue`'s (vhost `/`) leader and members, as node
    /// names, as node `via` has them in its metadata store.
    ///
    /// (Not `list_queues`: commands that gather from every node have the
    /// other nodes answer the CLI directly, and they cannot resolve the
    /// CLI's host name to the right namespace; they time out.)
    ///
    /// # Panics
    /// When `via` does not answer or has no such quorum queue.
    pub fn quorum_leader_and_members(&self, via: usize, queue: &str) -> (String, Vec<String>) {
        assert_plain(queue);
        let expr = format!(
            "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>)), \
             {{_, Leader}} = amqqueue:get_pid(Q), \
             #{{nodes := Nodes}} = amqqueue:get_type_state(Q), \
             io:format(\"~s ~s~n\", [Leader, lists:join(\",\", [atom_to_list(N) || N <- Nodes])])."
        );
        let out = self.ctl(via, &["eval", &expr]);
        let line = out.lines().next().unwrap_or_default();
        let (leader, members) = line.split_once(' ').unwrap_or((line, ""));
        (
            leader.to_owned(),
            members
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The member nodes of `queue` (a quorum queue or a stream), asked
    /// through node `via`.
    ///
    /// # Panics
    /// When the node cannot answer or the queue does not exist.
    pub fn members(&self, via: usize, queue: &str) -> Vec<String> {
        assert_plain(queue);
        let expr = format!(
            "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>)), \
             #{{nodes := Nodes}} = amqqueue:get_type_state(Q), \
             io:format(\"~s~n\", [lists:join(\",\", [atom_to_list(N) || N <- Nodes])])."
        );
        let out = self.ctl(via, &["eval", &expr]);
        out.lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn pid(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.node_dir(i).join("pid"))
            .ok()
            .map(|p| p.trim().to_owned())
            .filter(|p| pid_alive(p))
    }

    /// Sends SIGKILL to node `i`'s Erlang VM and waits until it is gone.
    /// Its epmd stays up, as it would on a real machine. Returns the instant
    /// the signal was sent.
    ///
    /// # Panics
    /// When the node is not running or survives 10 s.
    pub fn kill9(&self, i: usize) -> Instant {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("node {i} is not running"));
        let sent = Instant::now();
        let _ = Command::new("kill").args(["-9", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(&pid) {
            assert!(
                Instant::now() < deadline,
                "node {i} (pid {pid}) survived kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.node_dir(i).join("pid"));
        sent
    }

    /// Starts node `i` again after [`Cluster::kill9`] or
    /// [`Cluster::stop_node`] and waits until it has booted (it rejoins the
    /// cluster by itself). Returns how long that took.
    ///
    /// # Panics
    /// When it does not boot within [`START_TIMEOUT`].
    pub fn start_node(&self, i: usize) -> Duration {
        let began = Instant::now();
        self.launch(i);
        self.await_startup(i);
        began.elapsed()
    }

    /// Stops node `i` gracefully (`rabbitmqctl stop`, which returns once
    /// the VM has exited). Returns how long that took.
    ///
    /// # Panics
    /// When the stop fails.
    pub fn stop_node(&self, i: usize) -> Duration {
        let began = Instant::now();
        let pid_file = self.node_dir(i).join("pid");
        self.ctl(i, &["stop", &pid_file.to_string_lossy()]);
        began.elapsed()
    }

    /// [`Cluster::stop_node`] then [`Cluster::start_node`] (one step of a
    /// rolling restart). Returns how long both took.
    pub fn restart_node(&self, i: usize) -> Duration {
        self.stop_node(i) + self.start_node(i)
    }

    fn routes(&self, i: usize, verb: &str) {
        for j in (1..=NODES).filter(|&j| j != i) {
            for (ns, to) in [
                (self.namespace(i), self.ip(j)),
                (self.namespace(j), self.ip(i)),
            ] {
                let out = ip(&["-n", &ns, "route", verb, "blackhole", &format!("{to}/32")]);
                assert!(
                    out.status.success() || verb == "del",
                    "ip -n {ns} route {verb} blackhole {to}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// Partitions node `i` from the other two nodes (both directions; the
    /// test process still reaches all three). With `pause_minority`, node
    /// `i` pauses once it notices (about `net_ticktime`, 10-20 s).
    pub fn cut(&self, i: usize) {
        self.routes(i, "add");
    }

    /// Undoes [`Cluster::cut`].
    pub fn heal(&self, i: usize) {
        self.routes(i, "del");
    }

    /// Takes node `i`'s link to the bridge down: it loses the other nodes
    /// and the test process alike.
    pub fn unplug(&self, i: usize) {
        ip_ok(&[
            "-n",
            &format!("hpc{}-hub", self.x),
            "link",
            "set",
            &format!("p{i}"),
            "down",
        ]);
    }

    /// Undoes [`Cluster::unplug`].
    pub fn plug(&self, i: usize) {
        ip_ok(&[
            "-n",
            &format!("hpc{}-hub", self.x),
            "link",
            "set",
            &format!("p{i}"),
            "up",
        ]);
    }

    /// The last 4,000 bytes of node `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let log = self
            .node_dir(i)
            .join("log")
            .join(format!("{}.log", self.node(i)));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The data goes too, so there is nothing to stop gracefully for.
        teardown(self.x);
    }
}
