//! The hookpost dispatcher: delivers every event to every endpoint subscribed
//! to it (ARCHITECTURE.md). [`run`] supervises the broker connection, declares the
//! topology, runs one [`worker`] pipeline per endpoint, applies config
//! reloads, and serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Delivery is at-least-once: a message leaves its queue only once it was
//! delivered (2xx) or replaced by a confirmed retry or dead letter.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bindings;
pub mod delivery;
pub mod poll;

use delivery::transform as sandbox;
use delivery::{breaker, classify, send, worker};

use common::Config;
use common::amqp::{AmqpClient, AmqpError};
use common::control;
use common::metrics::{DispatcherMetrics, ProcessMetrics};
use common::topology::{Topology, TopologyError};
use lapin::Connection;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Checks what the dispatcher needs beyond [`Config`]'s own validation:
/// endpoints given as literal IP addresses must be globally reachable or
/// allowed by `http.allowed_networks` ([`guard`]).
///
/// # Errors
/// A message naming the file and the endpoint's key.
pub fn validate(config: &Config) -> anyhow::Result<()> {
    for (i, ep) in config.endpoints.iter().enumerate() {
        if let Err(why) = config.check_address(&ep.url) {
            anyhow::bail!(
                "{}: key `endpoints[{i}].url`: (endpoint {:?}) {why}",
                config.origin.display(),
                ep.id
            );
        }
    }
    Ok(())
}

/// Runs the dispatcher until `shutdown` fires: stops consuming, lets
/// in-flight requests finish (each within its endpoint's timeout), and
/// returns. New configs sent on `reloads` replace the running one.
///
/// # Errors
/// Invalid config, metrics registration, or a topology conflict the broker
/// reports (an existing queue with other arguments), which needs an operator.
pub async fn run(
    config: Config,
    metrics_listener: TcpListener,
    mut reloads: mpsc::Receiver<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    validate(&config)?;
    let registry = prometheus::Registry::new();
    let process = ProcessMetrics::register(&registry, "dispatcher")?;
    let metrics = DispatcherMetrics::register(&registry)?;
    let client = AmqpClient::new(
        config.amqp.url.clone(),
        "hookpost-dispatcher",
        config.amqp.max_reconnect_delay,
    );
    // While blocked, retry and dead-letter publishes wait (route::BROKER_TIMEOUT)
    // and the delivery stays unacked: the broker redelivers it, nothing is lost.
    client.report_blocked_to(process.broker_blocked.clone());
    let consuming = Arc::new(AtomicBool::new(false));
    // The endpoints this dispatcher should consume now.
    let expected: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let ready: common::server::Readiness = {
        let (client, consuming, expected, metrics) = (
            client.clone(),
            consuming.clone(),
            expected.clone(),
            metrics.clone(),
        );
        Arc::new(move || {
            let connected = client.is_connected();
            process.broker_connected.set(i64::from(connected));
            let expected = expected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            connected
                && consuming.load(Ordering::SeqCst)
                && expected.iter().all(|id| endpoint_settled(&metrics, id))
        })
    };
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(common::server::serve_metrics(
        metrics_listener,
        config.metrics_limits,
        registry,
        ready,
        server_stop.clone(),
    ));
    let paused = Arc::default();
    let channel_failures = Arc::new(std::sync::Mutex::new(common::logging::Throttle::new(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(300),
    )));
    let sandbox = sandbox::Sandbox::new(
        sandbox::Sandbox::locate(config.transforms.worker_path.as_ref()),
        config.transforms.clone(),
        config.amqp.max_message_bytes,
    );
    if config.endpoints.iter().any(|e| e.transform.is_some()) {
        sandbox.check().await?;
    }
    // Operator holds and registered endpoints, from the control stream; kept across reconnects.
    let (holds_tx, holds) = tokio::sync::watch::channel(control::Holds::default());
    let mut config = config;
    let result = loop {
        let conn = match client.connection(None, &shutdown).await {
            Ok(conn) => conn,
            Err(AmqpError::Shutdown) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        let shared = worker::Shared {
            topology: Topology::new(&config.amqp),
            sender: send::Sender::new(&config.http)?,
            metrics: metrics.clone(),
            max_retry_after: config.http.max_retry_after,
            prefetch: config.amqp.prefetch,
            max_message_bytes: config.amqp.max_message_bytes,
            paused: Arc::clone(&paused),
            holds: holds.clone(),
            sandbox: sandbox.clone(),
            channel_failures: channel_failures.clone(),
        };
        let generation = shutdown.child_token();
        let tracker = TaskTracker::new();
        if let Err(e) =
            follow_control(&conn, &shared.topology, &holds_tx, &generation, &tracker).await
        {
            tracing::warn!(error = %e, "Reading the control stream failed; reconnecting.");
            generation.cancel();
            tracker.close();
            tracker.wait().await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let mut state = holds.clone();
        let (mut effective, mut held) =
            effective_config(&config, &state.borrow_and_update(), &mut Warned::default());
        let mut warned = Warned::default();
        let declared = tokio::time::timeout(
            BROKER_WAIT,
            declare(&conn, &effective, &shared.topology, &held),
        )
        .await;
        if !matches!(declared, Ok(Ok(()))) {
            generation.cancel();
            tracker.close();
            tracker.wait().await;
            match declared {
                Ok(Err(e)) if matches!(e, TopologyError::Conflict { .. }) => break Err(e.into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Declaring the topology failed; reconnecting.");
                }
                _ => tracing::warn!("Declaring the topology timed out; reconnecting."),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let (lost_tx, mut lost_rx) = mpsc::channel::<(String, String)>(64);
        let mut workers = Workers::default();
        workers.start_missing(
            &effective.endpoints,
            &shared,
            &conn,
            &generation,
            &lost_tx,
            &tracker,
        );
        let mut poller = spawn_poller(&conn, &effective, &metrics, &generation, &tracker);
        set_expected(&expected, &effective);
        consuming.store(true, Ordering::SeqCst);
        tracing::info!(endpoints = effective.endpoints.len(), "Dispatcher running.");
        // What ends this connection's run: `None` shutdown, `Some(())` reconnect.
        let next = loop {
            tokio::select! {
                () = shutdown.cancelled() => break None,
                Some((endpoint, why)) = lost_rx.recv() => {
                    tracing::warn!(endpoint = %endpoint, error = %why, "Broker channel lost; restarting the workers.");
                    break Some(());
                }
                Some(new) = reloads.recv() => match check_reload(&config, &new) {
                    Ok(()) => {
                        forget_changed_pauses(&paused, &new);
                        config = new;
                        tracing::info!(endpoints = config.endpoints.len(), "Config reloaded.");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Applying the new config failed; keeping the old one.");
                        continue;
                    }
                },
                r = state.changed() => if r.is_err() { break Some(()) },
            }
            let (next, next_held) =
                effective_config(&config, &state.borrow_and_update(), &mut warned);
            if next.endpoints == effective.endpoints && next_held == held {
                continue;
            }
            // Stop what changed first, so nothing is consumed under the old
            // settings once the new bindings apply.
            workers.stop_stale(&next.endpoints).await;
            match tokio::time::timeout(
                BROKER_WAIT,
                declare(&conn, &next, &shared.topology, &next_held),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Declaring the changed endpoints failed; reconnecting.");
                    break Some(());
                }
                Err(_) => {
                    tracing::warn!("Declaring the changed endpoints timed out; reconnecting.");
                    break Some(());
                }
            }
            workers.start_missing(
                &next.endpoints,
                &shared,
                &conn,
                &generation,
                &lost_tx,
                &tracker,
            );
            poller.cancel();
            poller = spawn_poller(&conn, &next, &metrics, &generation, &tracker);
            effective = next;
            held = next_held;
            set_expected(&expected, &effective);
            tracing::info!(endpoints = effective.endpoints.len(), "Endpoints changed.");
        };
        consuming.store(false, Ordering::SeqCst);
        generation.cancel();
        tracker.close();
        // In-flight requests finish within their endpoint's timeout.
        let grace = effective
            .endpoints
            .iter()
            .map(|e| e.timeout)
            .max()
            .unwrap_or_default()
            + BROKER_WAIT;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("Some workers did not stop in time; going on without them.");
        }
        if next.is_none() {
            break Ok(());
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.close()).await;
    server_stop.cancel();
    let _ = server.await;
    tracing::info!("Dispatcher stopped.");
    result
}

/// Whether an endpoint is as it should be for readiness: consumed, or
/// deliberately not (paused by an operator or after a 410, or suspended by
/// its circuit breaker).
fn endpoint_settled(metrics: &DispatcherMetrics, id: &str) -> bool {
    metrics.consuming.with_label_values(&[id]).get() == 1
        || metrics.paused.with_label_values(&[id]).get() == 1
        || metrics.breaker_state.with_label_values(&[id]).get() != 0
}

fn set_expected(expected: &std::sync::Mutex<Vec<String>>, config: &Config) {
    *expected
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        config.endpoints.iter().map(|e| e.id.clone()).collect();
}

/// Longest wait for the broker while (re)declaring or stopping, before the
/// dispatcher gives up on the connection and rebuilds.
const BROKER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Registered endpoints already reported as unloadable (id, version).
pub(crate) type Warned = std::collections::HashSet<(String, u64)>;

/// The config with the registry's endpoints added after the file's (an id
/// the file defines stays the file's). A registered endpoint that cannot be
/// loaded (its secrets sealed with another key, say) is left out and logged
/// once per version: its events wait in its queue.
pub(crate) fn effective_config(
    config: &Config,
    state: &control::State,
    warned: &mut Warned,
) -> (Config, bindings::Bindings) {
    let mut out = config.clone();
    let mut held = bindings::Bindings::new();
    let now = time::OffsetDateTime::now_utc();
    for stored in state.endpoints.values() {
        if config.is_file_endpoint(&stored.id) {
            continue;
        }
        match common::registry::to_endpoint(
            stored,
            config,
            config.registry.secrets_key.as_ref(),
            now,
        ) {
            Ok(endpoint) => out.endpoints.push(endpoint),
            Err(e) => {
                let patterns = stored.events();
                held.insert(stored.id.clone(), patterns);
                if warned.insert((stored.id.clone(), stored.version)) {
                    tracing::error!(endpoint = %stored.id, version = stored.version, error = %e, "Cannot load a registered endpoint; its events wait in its queue.");
                }
            }
        }
    }
    (out, held)
}

/// The running endpoint workers, by id.
#[derive(Default)]
struct Workers {
    running: HashMap<
        String,
        (
            Arc<common::config::Endpoint>,
            CancellationToken,
            tokio::task::JoinHandle<()>,
        ),
    >,
}

impl Workers {
    /// Stops the workers of endpoints gone or changed.
    async fn stop_stale(&mut self, endpoints: &[common::config::Endpoint]) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, (ep, _, _))| !endpoints.iter().any(|e| e.id == **id && e == ep.as_ref()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some((endpoint, stop, mut handle)) = self.running.remove(&id) {
                stop.cancel();
                // In-flight requests finish within the endpoint's timeout; a
                // worker stuck on the broker beyond that is abandoned.
                let grace = endpoint.timeout + BROKER_WAIT;
                if tokio::time::timeout(grace, &mut handle).await.is_err() {
                    tracing::warn!(endpoint = %id, "The endpoint's worker did not stop in time; abandoning it.");
                    handle.abort();
                }
            }
        }
    }

    /// Starts the workers of endpoints not running yet.
    fn start_missing(
        &mut self,
        endpoints: &[common::config::Endpoint],
        shared: &worker::Shared,
        conn: &Arc<Connection>,
        generation: &CancellationToken,
        lost_tx: &mpsc::Sender<(String, String)>,
        tracker: &TaskTracker,
    ) {
        for endpoint in endpoints {
            if self.running.contains_key(&endpoint.id) {
                continue;
            }
            let endpoint = Arc::new(endpoint.clone());
            let stop = generation.child_token();
            let handle = tracker.spawn(supervise(
                endpoint.clone(),
                shared.clone(),
                conn.clone(),
                stop.clone(),
                lost_tx.clone(),
            ));
            self.running
                .insert(endpoint.id.clone(), (endpoint, stop, handle));
        }
    }
}

/// Runs one endpoint's worker until `stop`: restarts it with backoff after a
/// channel failure, waits out holds and breaker cooldowns. A dead connection
/// is reported on `lost_tx` (everything is rebuilt).
async fn supervise(
    endpoint: Arc<common::config::Endpoint>,
    shared: worker::Shared,
    conn: Arc<Connection>,
    stop: CancellationToken,
    lost_tx: mpsc::Sender<(String, String)>,
) {
    let reasons = classify::Reason::ALL.map(classify::Reason::as_str);
    shared
        .metrics
        .init_endpoint(&endpoint.id, &reasons, &endpoint.retry.tiers_ms());
    let mut delays = common::amqp::backoff(std::time::Duration::from_secs(10));
    let breaker = Arc::new(breaker::Breaker::new(endpoint.breaker));
    loop {
        let exit = worker::run(
            endpoint.clone(),
            shared.clone(),
            conn.clone(),
            stop.clone(),
            breaker.clone(),
        )
        .await;
        let why = match exit {
            worker::Exit::Stopped => break,
            worker::Exit::Suspended => {
                delivery::availability::wait_released(&shared, &endpoint, &stop).await;
                delivery::availability::cool_down(&shared, &endpoint, &breaker, &stop).await;
                if stop.is_cancelled() {
                    break;
                }
                continue;
            }
            worker::Exit::Lost(why) => why,
        };
        if !conn.status().connected() {
            // The run loop tears everything down on the first report; the
            // others must not wait for room in the channel.
            tokio::select! {
                _ = lost_tx.send((endpoint.id.clone(), why)) => {}
                () = stop.cancelled() => {}
            }
            break;
        }
        let delay = delays.next().unwrap_or(std::time::Duration::from_secs(10));
        let logged = shared
            .channel_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hit();
        if let Some(failures) = logged {
            tracing::warn!(endpoint = %endpoint.id, error = %why, failures, retry_in_ms = delay.as_millis() as u64, "Endpoint channels failing; restarting their workers (logged with backoff; `failures` counts all endpoints since the last line).");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
    }
}

fn spawn_poller(
    conn: &Arc<Connection>,
    config: &Config,
    metrics: &DispatcherMetrics,
    generation: &CancellationToken,
    tracker: &TaskTracker,
) -> CancellationToken {
    let stop = generation.child_token();
    tracker.spawn(poll::run(
        conn.clone(),
        Arc::new(config.clone()),
        metrics.clone(),
        stop.clone(),
    ));
    stop
}

/// Starts following the control stream on `tracker` and waits until it has
/// caught up, so no held endpoint is consumed at start.
async fn follow_control(
    conn: &Arc<Connection>,
    topology: &Topology,
    holds_tx: &tokio::sync::watch::Sender<control::Holds>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let mut caught_up = holds_tx.subscribe();
    caught_up.mark_unchanged();
    let (conn, topology, tx, stop) = (
        conn.clone(),
        topology.clone(),
        holds_tx.clone(),
        stop.clone(),
    );
    let first_done = CancellationToken::new();
    let first_failed = first_done.clone();
    tracker.spawn(async move {
        // Follows until the generation ends; a failed reader starts over
        // (replaying from the start) after a pause.
        loop {
            let result = control::follow(&conn, &topology, tx.clone(), stop.clone()).await;
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = &result {
                tracing::warn!(error = %e, "Following the control stream failed; starting over.");
            }
            first_failed.cancel();
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    });
    tokio::select! {
        r = caught_up.changed() => r.map_err(anyhow::Error::from),
        () = first_done.cancelled() => Err(anyhow::anyhow!("the control stream could not be read")),
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => Err(anyhow::anyhow!("timed out replaying the control stream")),
    }
}

/// Declares everything `config` needs: base objects, wait tiers, endpoint queues and bindings.
pub(crate) async fn declare(
    conn: &Connection,
    config: &Config,
    topology: &Topology,
    held: &bindings::Bindings,
) -> Result<(), TopologyError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|source| TopologyError::Broker {
            object: "channel".into(),
            source,
        })?;
    topology.declare_base(&channel).await?;
    control::declare(&channel, topology)
        .await
        .map_err(|source| TopologyError::Broker {
            object: topology.control(),
            source,
        })?;
    let tiers: BTreeSet<u64> = config
        .endpoints
        .iter()
        .flat_map(|e| e.retry.tiers_ms())
        .collect();
    for tier in tiers {
        topology.declare_wait_tier(&channel, tier).await?;
    }
    for endpoint in &config.endpoints {
        topology
            .declare_endpoint(&channel, &endpoint.id, &endpoint.events)
            .await?;
    }
    bindings::sync(conn, topology, config, held)
        .await
        .map_err(|source| TopologyError::Broker {
            object: topology.bindings_state(),
            source,
        })?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Checks that `new` can replace `old` without a restart, and logs what a
/// removed endpoint leaves behind. Bindings are synced when the workers
/// restart ([`bindings::sync`]).
fn check_reload(old: &Config, new: &Config) -> anyhow::Result<()> {
    validate(new)?;
    anyhow::ensure!(
        old.amqp.url == new.amqp.url
            && old.amqp.prefix == new.amqp.prefix
            && old.amqp.queue_type == new.amqp.queue_type,
        "amqp.url, amqp.prefix and amqp.queue_type cannot change on reload; restart instead"
    );
    let topology = Topology::new(&old.amqp);
    for endpoint in old
        .endpoints
        .iter()
        .filter(|e| new.endpoint(&e.id).is_none())
    {
        tracing::warn!(endpoint = %endpoint.id, queue = %topology.endpoint_queue(&endpoint.id), "Endpoint removed; its queue is kept with whatever it holds, and gets no new events.");
    }
    Ok(())
}

/// A paused endpoint resumes when its URL changes (or it is removed).
fn forget_changed_pauses(paused: &std::sync::Mutex<HashMap<String, url::Url>>, new: &Config) {
    let mut paused = paused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    paused.retain(|id, url| new.endpoint(id).is_some_and(|e| e.url == *url));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(allowed: &str, url: &str) -> anyhow::Result<()> {
        let text = format!(
            "[http]\nallowed_networks = [{allowed}]\n[[endpoints]]\nid = \"ep\"\nurl = \"{url}\"\nevents = [\"#\"]\n"
        );
        let config = Config::from_toml_str(&text, Path::new("/etc/hookpost.toml"), &[])?;
        validate(&config)
    }

    /// Config load refuses literal endpoints in non-global ranges, naming
    /// the key; nothing is sent anywhere.
    #[test]
    fn validate_refuses_non_global_literal_endpoints() {
        for host in [
            "[64:ff9b::a9fe:a9fe]",
            "[2002:a9fe:a9fe::1]",
            "198.18.0.1",
            "[fec0::1]",
            "[::a9fe:a9fe]",
            "[2001::a9fe:a9fe]",
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "127.0.0.1",
        ] {
            let err = load("", &format!("http://{host}/hook"))
                .expect_err(host)
                .to_string();
            assert!(err.contains("key `endpoints[0].url`"), "{err}");
            assert!(err.contains("/etc/hookpost.toml"), "{err}");
            assert!(err.contains("http.allowed_networks"), "{err}");
        }
        for ok in ["http://8.8.8.8/hook", "https://[2606:4700::1111]/hook"] {
            load("", ok).unwrap();
        }
        load("\"127.0.0.0/8\"", "http://127.0.0.1:9/hook").unwrap();
        load("\"127.0.0.0/8\"", "http://[::ffff:127.0.0.1]:9/hook").unwrap();
        load("\"::1/128\"", "http://[::1]:9/hook").unwrap();
    }
}
