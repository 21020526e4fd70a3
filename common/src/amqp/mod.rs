//! A supervised AMQP connection: connects on demand, reconnects with capped
//! exponential backoff (computed by `backon`) and reports its state.
//!
//! hookpost rebuilds its channels, consumers and topology itself after a
//! reconnect rather than relying on lapin's automatic topology recovery:
//! delivery tags of a lost channel are void, and redeclaring from config is
//! idempotent, so a fresh start is the simplest state to reason about. lapin's
//! own retries are bounded; this loop is not (it stops only on shutdown or a
//! caller's deadline).
//!
//! The client also follows the broker's `connection.blocked` and
//! `connection.unblocked` notifications (a memory or disk alarm; lapin
//! announces the `connection.blocked` capability, so RabbitMQ sends them):
//! [`AmqpClient::blocked`] says why while it lasts, so publishers can fail at
//! once instead of waiting out their timeout. While blocked, lapin writes
//! nothing on the connection (not even `connection.close`), so every wait on
//! the broker needs its own bound; [`AmqpClient::close`] has one.

mod channel;
mod publish;
pub mod reply;

pub use channel::{open_channel, while_alive};
pub use publish::{CONFIRM_TIMEOUT, event_properties, publish_confirmed, republished_properties};
pub use reply::{queue_counts, queue_exists, reply_code};

use crate::secret::{Redacted, redact_url};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};
use prometheus::{IntGauge, IntGaugeVec};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the supervisor is doing, for readiness and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// No connection yet, or trying to reconnect.
    Connecting,
    /// A connection is open.
    Connected,
    /// The last attempt failed; waiting before the next.
    Disconnected,
}

/// Why no connection could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AmqpError {
    /// The deadline passed before the broker accepted a connection.
    #[error("broker {url} unreachable for {waited:?}: {last_error}")]
    Unavailable {
        /// The broker URL, credentials redacted.
        url: String,
        /// How long it was tried.
        waited: Duration,
        /// The last connection error.
        last_error: String,
    },
    /// Shutdown was requested while connecting.
    #[error("shutting down")]
    Shutdown,
}

/// One broker connection shared by a process, re-established when it drops.
#[derive(Debug, Clone)]
pub struct AmqpClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The nodes to try, in order; never empty.
    urls: Vec<Redacted>,
    /// The index in `urls` of the node last connected to (tried first).
    preferred: std::sync::atomic::AtomicUsize,
    node_gauge: OnceLock<IntGaugeVec>,
    name: String,
    max_delay: Duration,
    current: Mutex<Option<Arc<Connection>>>,
    state: watch::Sender<ConnState>,
    /// Why the broker blocks the current connection; `None` when it does not.
    blocked: watch::Sender<Option<String>>,
    /// Bumped on each new connection, so a watcher of an old one stops
    /// reporting (see [`follow_blocked`]).
    generation: AtomicU64,
    blocked_gauge: OnceLock<IntGauge>,
}

/// Longest wait for the broker's `connection.close-ok` on close. A blocked
/// connection never sends the close (lapin holds every frame back), so
/// without this bound closing one would hang forever.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl AmqpClient {
    /// A client for the broker at `urls` (one node, or the nodes of a
    /// cluster: it connects to the first that answers, starting with the one
    /// it was last connected to), shown as `name` in the broker's connection
    /// list. Nothing connects until [`AmqpClient::connection`] is called.
    ///
    /// # Panics
    /// When `urls` is empty (the config never makes it so).
    pub fn new(urls: Vec<Redacted>, name: &str, max_delay: Duration) -> Self {
        assert!(!urls.is_empty(), "AmqpClient needs at least one URL");
        Self {
            inner: Arc::new(Inner {
                urls,
                preferred: std::sync::atomic::AtomicUsize::new(0),
                node_gauge: OnceLock::new(),
                name: name.to_owned(),
                max_delay,
                current: Mutex::new(None),
                state: watch::Sender::new(ConnState::Connecting),
                blocked: watch::Sender::new(None),
                generation: AtomicU64::new(0),
                blocked_gauge: OnceLock::new(),
            }),
        }
    }

    /// Keeps `gauge` (`hookpost_broker_blocked`) at 1 while the broker blocks
    /// this client's connection, else 0. Only the first gauge given is used.
    pub fn report_blocked_to(&self, gauge: IntGauge) {
        gauge.set(i64::from(self.inner.blocked.borrow().is_some()));
        let _ = self.inner.blocked_gauge.set(gauge);
    }

    /// Keeps `gauge` (`hookpost_broker_node{node}`) at 1 for the node this
    /// client is connected to and 0 for its other nodes (`node` = host:port,
    /// never credentials). Only the first gauge given is used.
    pub fn report_node_to(&self, gauge: IntGaugeVec) {
        for url in &self.inner.urls {
            gauge.with_label_values(&[&node_label(url.expose())]).set(0);
        }
        let _ = self.inner.node_gauge.set(gauge);
    }

    /// Why the broker blocks the current connection (for example
    /// "low on memory"), or `None` when it does not. A blocked connection
    /// takes no publish (nor anything else) until the broker unblocks it.
    pub fn blocked(&self) -> Option<String> {
        self.inner.blocked.borrow().clone()
    }

    /// Watches [`AmqpClient::blocked`].
    pub fn watch_blocked(&self) -> watch::Receiver<Option<String>> {
        self.inner.blocked.subscribe()
    }

    /// Watches the connection state.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.inner.state.subscribe()
    }

    /// Whether the current connection is open right now.
    pub fn is_connected(&self) -> bool {
        let connected = self
            .inner
            .current
            .try_lock()
            .map(|c| c.as_ref().is_some_and(|c| c.status().connected()))
            // Someone is reconnecting: not connected yet.
            .unwrap_or(false);
        if !connected && *self.inner.state.borrow() == ConnState::Connected {
            self.inner.state.send_replace(ConnState::Disconnected);
        }
        connected
    }

    /// The open connection, (re)connecting with backoff if there is none.
    /// Gives up at `deadline` (if any) or when `shutdown` fires.
    ///
    /// # Errors
    /// [`AmqpError::Unavailable`] at the deadline, [`AmqpError::Shutdown`].
    pub async fn connection(
        &self,
        deadline: Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Connection>, AmqpError> {
        let mut current = self.inner.current.lock().await;
        if let Some(conn) = current.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        if shutdown.is_cancelled() {
            return Err(AmqpError::Shutdown);
        }
        if let Some(old) = current.take() {
            // Best effort: free the broker side of a half-dead connection.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.close(320, "reconnecting".into()),
            )
            .await;
        }
        self.inner.state.send_replace(ConnState::Connecting);
        self.set_node(None);
        let started = Instant::now();
        let urls = &self.inner.urls;
        let mut delays = backoff(self.inner.max_delay);
        // Each round tries every node once, starting with the one last
        // connected to; a backoff delay separates the rounds.
        let mut first = self.inner.preferred.load(Ordering::Relaxed) % urls.len();
        loop {
            let mut errors = Vec::with_capacity(urls.len());
            for i in (0..urls.len()).map(|k| (first + k) % urls.len()) {
                let url = redact_url(urls[i].expose());
                let attempt = Connection::connect(
                    urls[i].expose(),
                    ConnectionProperties::default()
                        .with_connection_name(self.inner.name.as_str().into()),
                );
                let result = match deadline {
                    Some(d) => tokio::select! {
                        r = tokio::time::timeout_at(d, attempt) => r
                            .map_err(|_| "connection attempt timed out".to_owned())
                            .and_then(|r| r.map_err(|e| e.to_string())),
                        () = shutdown.cancelled() => return Err(AmqpError::Shutdown),
                    },
                    None => tokio::select! {
                        r = attempt => r.map_err(|e| e.to_string()),
                        () = shutdown.cancelled() => return Err(AmqpError::Shutdown),
                    },
                };
                match result {
                    Ok(conn) => {
                        let conn = Arc::new(conn);
                        follow_blocked(&self.inner, &conn);
                        *current = Some(conn.clone());
                        self.inner.preferred.store(i, Ordering::Relaxed);
                        self.set_node(Some(i));
                        self.inner.state.send_replace(ConnState::Connected);
                        tracing::info!(url = %url, name = %self.inner.name, "Connected to the broker.");
                        return Ok(conn);
                    }
                    Err(e) => errors.push(if urls.len() > 1 {
                        format!("{url}: {e}")
                    } else {
                        e
                    }),
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            let last_error = errors.join("; ");
            let url = if urls.len() == 1 {
                redact_url(urls[0].expose())
            } else {
                format!("{} nodes", urls.len())
            };
            self.inner.state.send_replace(ConnState::Disconnected);
            let delay = delays.next().unwrap_or(self.inner.max_delay);
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return Err(AmqpError::Unavailable {
                    url,
                    waited: started.elapsed(),
                    last_error,
                });
            }
            tracing::warn!(url = %url, error = %last_error, retry_in_ms = delay.as_millis() as u64, "Broker connection failed; retrying.");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Err(AmqpError::Shutdown),
            }
            first = 0;
        }
    }

    fn set_node(&self, connected: Option<usize>) {
        if let Some(gauge) = self.inner.node_gauge.get() {
            for (i, url) in self.inner.urls.iter().enumerate() {
                gauge
                    .with_label_values(&[&node_label(url.expose())])
                    .set(i64::from(connected == Some(i)));
            }
        }
    }

    /// Closes the current connection (on shutdown), waiting at most
    /// [`CLOSE_TIMEOUT`] for the broker. A blocked connection is not closed
    /// politely (lapin would never send the close): it is dropped, and its
    /// socket goes with the process or when the broker unblocks it.
    pub async fn close(&self) {
        // A connect loop may hold the lock while the broker is away: the
        // close does not wait for it beyond its own bound.
        let Ok(mut current) = tokio::time::timeout(CLOSE_TIMEOUT, self.inner.current.lock()).await
        else {
            return;
        };
        let Some(conn) = current.take() else {
            return;
        };
        drop(current);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let blocked = conn.status().blocked();
        set_blocked(&self.inner, None, Change::Closed);
        if blocked {
            tracing::debug!("Broker connection is blocked; dropping it without a close.");
            return;
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "shutdown".into()))
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                "Broker did not answer the close in time; dropping the connection."
            );
        }
    }
}

/// Follows `conn`'s blocked/unblocked notifications into `inner.blocked`
/// (and the gauge, and the log: one line per change, not per publish) until
/// the connection closes or a newer one replaces it.
fn follow_blocked(inner: &Arc<Inner>, conn: &Arc<Connection>) {
    let generation = inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
    set_blocked(inner, None, Change::Closed);
    // lapin only queues events while someone listens: subscribe now.
    let mut events = Box::pin(conn.events_listener());
    let (inner, conn) = (Arc::downgrade(inner), Arc::downgrade(conn));
    tokio::spawn(async move {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
            let (Some(inner), Some(conn)) = (inner.upgrade(), conn.upgrade()) else {
                return;
            };
            if inner.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if !conn.status().connected() {
                set_blocked(&inner, None, Change::Closed);
                return;
            }
            match next {
                Ok(Some(lapin::Event::ConnectionBlocked(reason))) => {
                    set_blocked(&inner, Some(reason), Change::Notified);
                }
                Ok(Some(lapin::Event::ConnectionUnblocked)) => {
                    set_blocked(&inner, None, Change::Notified);
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    set_blocked(&inner, None, Change::Closed);
                    return;
                }
                // Quiet second: the status is the truth (covers a notice
                // that came before the listener).
                Err(_) => {
                    if conn.status().blocked() != inner.blocked.borrow().is_some() {
                        let reason = conn.status().blocked().then(|| "unknown".to_owned());
                        set_blocked(&inner, reason, Change::Notified);
                    }
                }
            }
        }
    });
}

/// What ended (or started) a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The broker said so.
    Notified,
    /// The connection closed or was replaced: a new one starts unblocked.
    Closed,
}

/// Records a blocked-state change; logs and sets the gauge only on a change.
fn set_blocked(inner: &Inner, reason: Option<String>, change: Change) {
    let now_blocked = reason.is_some();
    let log_reason = reason.clone();
    let changed = inner.blocked.send_if_modified(|current| {
        let changed = current.is_some() != now_blocked;
        *current = reason;
        changed
    });
    if !changed {
        return;
    }
    if let Some(gauge) = inner.blocked_gauge.get() {
        gauge.set(i64::from(now_blocked));
    }
    match log_reason {
        Some(reason) => tracing::warn!(
            name = %inner.name,
            reason = %reason,
            "Broker blocked this connection (resource alarm); publishes fail until it unblocks."
        ),
        None if change == Change::Closed => {
            tracing::info!(name = %inner.name, "Blocked broker connection closed.");
        }
        None => tracing::info!(name = %inner.name, "Broker unblocked this connection."),
    }
}

/// The `node` label of a broker URL: `host:port` (no user, password or vhost).
pub fn node_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        let port = if url.starts_with("amqps://") {
            5671
        } else {
            5672
        };
        format!("{host}:{port}")
    }
}

/// Reconnect delays: 100 ms doubling to `max`, with jitter, without end.
pub fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_never_hold_credentials() {
        assert_eq!(node_label("amqp://u:p@10.0.0.1:5673/%2f"), "10.0.0.1:5673");
        assert_eq!(
            node_label("amqps://u:p@rabbit.example/vh"),
            "rabbit.example:5671"
        );
        assert_eq!(node_label("amqp://rabbit"), "rabbit:5672");
        assert_eq!(node_label("amqp://u:p@w@[::1]:5672"), "[::1]:5672");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let delays: Vec<Duration> = backoff(Duration::from_secs(2)).take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "{delays:?}"
        );
        assert!(delays[11] >= Duration::from_secs(2), "{delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_broker_fails_at_the_deadline() {
        // Port 1 on loopback refuses at once; the paused clock skips the waits.
        let client = AmqpClient::new(
            vec![Redacted::new("amqp://u:secretpw@127.0.0.1:1/%2f")],
            "test",
            Duration::from_secs(1),
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        let err = client
            .connection(Some(deadline), &CancellationToken::new())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unreachable") && !text.contains("secretpw"),
            "{text}"
        );
        assert_eq!(*client.state().borrow(), ConnState::Disconnected);
        assert!(!client.is_connected());
    }
}
