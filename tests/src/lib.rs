//! Helpers for hookpost's end-to-end tests: a per-test broker scope (own
//! prefix, everything deleted afterwards), a TCP proxy in front of the broker
//! that a test can take down, bring back or stall, a throw-away RabbitMQ node
//! for tests that need a real alarm, and polling with a deadline.
//!
//! Tests talk to the broker at `AMQP_URL` (default the local one).
#![forbid(unsafe_code)]

pub mod api;
pub mod browser;
pub mod cluster;
pub mod dispatcher_harness;
pub mod fixtures;
pub mod node;
pub mod proxy;
pub mod receiver;

use common::Config;
use common::topology::Topology;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// The event archive of `config`'s prefix from `since` to its end: for each
/// stream message, the ids of the events whose copies it holds. Each read
/// is bounded (30 s).
///
/// # Panics
/// When the broker cannot be reached or the archive read fails.
pub async fn archived(config: &Config, since: time::OffsetDateTime) -> Vec<Vec<String>> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let topology = Topology::new(&config.amqp);
    let mut cursor =
        common::history::Cursor::open(&conn, &topology.archive(), since, None, "the archive")
            .await
            .expect("read the archive");
    let mut messages = Vec::new();
    while let Some(common::history::Step::Message(delivery)) =
        tokio::time::timeout(Duration::from_secs(30), cursor.next())
            .await
            .expect("the read ends")
            .expect("read")
    {
        let copies = common::archive::Archived::read(&delivery.properties, &delivery.data);
        messages.push(copies.into_iter().map(|a| a.event.id).collect());
    }
    cursor.close().await;
    let _ = conn.close(200, "done".into()).await;
    messages
}

/// The broker tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| common::config::raw::DEFAULT_AMQP_URL.to_owned())
}

/// Shows the logs of the hookpost code a test runs in-process (dispatcher,
/// publisher, API) on standard error when `HOOKPOST_LOG` is set (for
/// example `HOOKPOST_LOG=info cargo test -p tests --test cluster -- --nocapture`),
/// filtered as the binaries filter it; does nothing otherwise, or when a
/// subscriber is already installed.
pub fn log_if_asked() {
    if std::env::var_os("HOOKPOST_LOG").is_some() {
        common::logging::init("off");
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` (end-to-end tests wait for outcomes, never for fixed times).
/// A check that does not return (a request nobody answers) is cut off a
/// minute past the deadline plus `timeout` again (room for checks that
/// wait on their own): the test fails instead of hanging. Blocking code
/// inside a check cannot be cut off.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let cut_off = deadline + timeout + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(cut_off, check()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => {
                panic!("timed out after {timeout:?} waiting for {what} (a check did not return)")
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client for tests: a request left unanswered for a minute fails
/// (a server under test that hangs fails the test instead of hanging it).
///
/// # Panics
/// When the client cannot be built.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("client")
}

/// [`http_client`]'s builder, for tests that set more (redirects).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(Duration::from_secs(60))
}

/// Longest one request of a [`Scope`] to the broker may take.
const BROKER_STEP: Duration = Duration::from_secs(30);

/// Awaits a [`Scope`]'s request to the broker, panicking with `what` after
/// [`BROKER_STEP`] (a broker that stopped answering fails the test).
async fn bounded<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(BROKER_STEP, step)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer from the broker within {BROKER_STEP:?}"))
}

/// One test's corner of the broker: a unique prefix, a channel, and cleanup
/// of every exchange and queue under the prefix when dropped (even on panic).
#[derive(Debug)]
pub struct Scope {
    /// The unique prefix (`hpt-<pid>-<random>`: the test process's id lets
    /// `deploy/setup-local.sh leftovers` tell a killed run's queues from a
    /// running one's).
    pub prefix: String,
    /// A connection for the test's own checks.
    pub connection: Connection,
    /// A channel on it.
    pub channel: Channel,
    /// The broker's AMQP URL.
    url: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
    files: Mutex<Vec<std::path::PathBuf>>,
}

impl Scope {
    /// Connects to the tests' broker ([`amqp_url`]) and picks a fresh prefix.
    ///
    /// # Panics
    /// When the broker is unreachable: start it (README, "Troubleshooting").
    pub async fn new() -> Self {
        Self::at(&amqp_url()).await
    }

    /// [`Scope::new`] on the broker at `url` (a throw-away node's).
    ///
    /// # Panics
    /// When the broker is unreachable.
    pub async fn at(url: &str) -> Self {
        let prefix = format!(
            "hpt-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let connection = bounded(
            "connecting",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ at {url} is unreachable ({e}); start it with `rabbitmq-server -detached`"
            )
        });
        let channel = bounded("opening a channel", connection.create_channel())
            .await
            .expect("channel");
        Self {
            prefix,
            connection,
            channel,
            url: url.to_owned(),
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
            files: Mutex::new(Vec::new()),
        }
    }

    /// A config for this scope: `toml` plus `[amqp] url` and `prefix`.
    /// `toml` must not have an `[amqp]` table of its own (use `amqp_extra`).
    pub fn config(&self, toml: &str) -> Config {
        self.config_with(toml, "", &self.url)
    }

    /// Like [`Scope::config`], with extra `[amqp]` keys and another broker URL.
    pub fn config_with(&self, toml: &str, amqp_extra: &str, url: &str) -> Config {
        let text = format!(
            "[amqp]\nurl = \"{url}\"\nprefix = \"{}\"\n{amqp_extra}\n{toml}",
            self.prefix
        );
        let config =
            Config::from_toml_str(&text, "test.toml".as_ref(), &[]).expect("test config is valid");
        self.track_config(&config);
        config
    }

    /// Writes a config file for this scope (`[amqp]` url and prefix, then
    /// `amqp_extra` inside `[amqp]`, then `toml`), registers it for cleanup and
    /// returns its path. The file is removed when the scope drops.
    pub fn write_config(&self, name: &str, amqp_extra: &str, toml: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{}-{name}.toml", self.prefix));
        let text = format!(
            "[amqp]\nurl = \"{}\"\nprefix = \"{}\"\n{amqp_extra}\n{toml}",
            self.url, self.prefix
        );
        std::fs::write(&path, &text).expect("write config");
        let config = Config::from_toml_str(&text, &path, &[]).expect("test config is valid");
        self.track_config(&config);
        self.files.lock().expect("lock").push(path.clone());
        path
    }

    /// Registers the queues of an endpoint created at runtime (registry) for
    /// cleanup: its queue, and the wait tiers of `config`'s defaults.
    pub fn track_endpoint(&self, config: &Config, id: &str) {
        let t = Topology::new(&config.amqp);
        let mut queues = self.queues.lock().expect("lock");
        let mut exchanges = self.exchanges.lock().expect("lock");
        queues.push(t.endpoint_queue(id));
        let defaults = common::retry::RetryPolicy {
            max_retries: config.defaults.max_retries,
            retry_delay_ms: config.defaults.retry_delay_ms.get(),
            max_retry_delay_ms: config.defaults.max_retry_delay_ms.get(),
        };
        for tier in defaults.tiers_ms() {
            queues.push(t.wait_queue(tier));
            exchanges.push(t.retry_exchange(tier));
        }
    }

    /// Registers the wait tier of `delay_ms` (its queue and exchange) for
    /// cleanup: one an endpoint's own retry policy made.
    pub fn track_tier(&self, config: &Config, delay_ms: u64) {
        let t = Topology::new(&config.amqp);
        self.queues
            .lock()
            .expect("lock")
            .push(t.wait_queue(delay_ms));
        self.exchanges
            .lock()
            .expect("lock")
            .push(t.retry_exchange(delay_ms));
    }

    /// Registers everything `config` declares for cleanup.
    pub fn track_config(&self, config: &Config) {
        let t = Topology::new(&config.amqp);
        let mut queues = self.queues.lock().expect("lock");
        let mut exchanges = self.exchanges.lock().expect("lock");
        queues.extend([
            t.unrouted(),
            t.unrouted_scoped(),
            t.dead(),
            t.bindings_state(),
            t.control(),
            t.control_snapshot(),
            t.log(),
            t.archive(),
        ]);
        exchanges.extend([
            t.events_exchange(),
            t.scoped_exchange(),
            t.unrouted(),
            t.unrouted_scoped(),
            t.endpoints_exchange(),
            t.dead(),
        ]);
        for ep in &config.endpoints {
            queues.push(t.endpoint_queue(&ep.id));
            for tier in ep.retry.tiers_ms() {
                queues.push(t.wait_queue(tier));
                exchanges.push(t.retry_exchange(tier));
            }
        }
    }

    /// Declares a queue of the test's own (deleted at the end) bound to
    /// `exchange` with `key`, and returns its name.
    pub async fn observe(&self, exchange: &str, key: &str) -> String {
        let name = format!("{}.observe.{}", self.prefix, uuid::Uuid::new_v4().simple());
        bounded(
            "declaring an observer queue",
            self.channel.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare observer queue");
        self.queues.lock().expect("lock").push(name.clone());
        bounded(
            "binding an observer queue",
            self.channel.queue_bind(
                name.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("bind observer queue");
        name
    }

    /// Declares a durable topic exchange `exchange` and a quorum queue bound
    /// to it with `#` (both deleted at the end); returns the queue's name.
    pub async fn quorum_queue_behind(&self, exchange: &str) -> String {
        self.quorum_queue_with_args_behind(exchange, FieldTable::default())
            .await
    }

    /// [`Scope::quorum_queue_behind`], the queue declared with `extra`
    /// arguments as well.
    pub async fn quorum_queue_with_args_behind(&self, exchange: &str, extra: FieldTable) -> String {
        bounded(
            "declaring an exchange",
            self.channel.exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare exchange");
        self.exchanges
            .lock()
            .expect("lock")
            .push(exchange.to_owned());
        let queue = format!("{exchange}.q");
        let mut args = extra;
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        bounded(
            "declaring a queue",
            self.channel.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            ),
        )
        .await
        .expect("declare queue");
        self.queues.lock().expect("lock").push(queue.clone());
        bounded(
            "binding a queue",
            self.channel.queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("bind");
        queue
    }

    /// Takes every message now in `queue` (acking them), oldest first.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(msg) = bounded(
            "basic_get",
            self.channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic_get")
        {
            out.push(msg);
        }
        out
    }

    /// Waits until `queue` holds `n` messages, then takes them.
    pub async fn take(&self, queue: &str, n: usize) -> Vec<lapin::message::BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.drain(queue).await);
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} messages in {queue}; got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got
    }

    /// Waits until the queue of endpoint `endpoint` exists with at least
    /// `consumers` consumers (dispatchers declared it and consume it).
    ///
    /// # Panics
    /// After 30 s.
    pub async fn wait_consumers(&self, endpoint: &str, consumers: u32) {
        self.wait_queue_consumers(&format!("{}.ep.{endpoint}", self.prefix), consumers)
            .await;
    }

    /// Waits until `queue` exists with at least `consumers` consumers.
    ///
    /// # Panics
    /// After 30 s.
    pub async fn wait_queue_consumers(&self, queue: &str, consumers: u32) {
        eventually(
            Duration::from_secs(30),
            &format!("{consumers} consumers on {queue}"),
            || async {
                // Its own channel: a passive declare of a missing queue closes it.
                let ch = self.connection.create_channel().await.ok()?;
                let q = ch
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .ok()?;
                (q.consumer_count() >= consumers).then_some(())
            },
        )
        .await;
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        bounded(
            "a passive declare",
            self.channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for file in self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = std::fs::remove_file(file);
        }
        let queues = std::mem::take(
            &mut *self
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let exchanges = std::mem::take(
            &mut *self
                .exchanges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let url = self.url.clone();
        // Drop cannot await: clean up from a thread with its own runtime,
        // for at most a minute (a broker that stopped answering does not
        // hang the test).
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let cleanup = async {
                let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await
                else {
                    return;
                };
                for queue in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for exchange in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                let _ = conn.close(200, "test done".into()).await;
            };
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(60), cleanup).await;
            });
        });
        let _ = cleanup.join();
    }
}
