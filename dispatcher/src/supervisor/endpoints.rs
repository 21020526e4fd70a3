//! Which endpoints run and what the broker must hold for them: the file's
//! endpoints plus the registry's, their declarations, and which reloads can
//! apply without a restart.

use super::BROKER_WAIT;
use crate::{bindings, validate};
use common::Config;
use common::registry::control;
use common::topology::{Topology, TopologyError};
use lapin::Connection;
use std::collections::HashMap;

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
            Ok(endpoint) => out.endpoints.extend(endpoint.into_runtime()),
            Err(e) => {
                held.extend(stored.runtime_bindings());
                if warned.insert((stored.id.clone(), stored.version)) {
                    tracing::error!(endpoint = %stored.id, version = stored.version, error = %e, "Cannot load a registered endpoint; its events wait in its queue.");
                }
            }
        }
    }
    (out, held)
}

/// Runs a stream's declaration within [`BROKER_WAIT`]; a failure is a
/// warning (`then` says who tries again), never an error: nothing in the
/// delivery path waits on the log or the archive.
async fn declare_stream(
    stream: &str,
    declared: impl std::future::Future<Output = Result<(), lapin::Error>>,
    then: &'static str,
) {
    let result = tokio::time::timeout(BROKER_WAIT, declared)
        .await
        .map_err(|_| "no answer".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = result {
        tracing::warn!(stream, error = %e, "{then}");
    }
}

/// Channels endpoint declarations are spread over. The broker runs the
/// methods of one channel one after another (each queue declare waits for
/// the queue's process, each bind for its table write), so pipelining on a
/// single channel saves only the round trips; several channels let the
/// broker work on several declarations at once.
const DECLARE_CHANNELS: usize = 8;

/// Declarations pipelined on each of those channels at once.
const DECLARES_IN_FLIGHT: usize = 16;

/// Why declaring failed.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The broker refused or failed a declaration.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The broker answered nothing for [`BROKER_WAIT`] (declarations that
    /// make progress may take as long as they need in total).
    #[error("the broker did not answer within {}s while declaring {what}", BROKER_WAIT.as_secs())]
    Stalled {
        /// What was being declared.
        what: String,
    },
}

impl DeclareError {
    /// An object exists with other settings: reconnecting cannot fix it.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Topology(TopologyError::Conflict { .. }))
    }
}

/// One step of declaring, bounded by [`BROKER_WAIT`].
async fn step<T, E>(
    what: impl FnOnce() -> String,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DeclareError>
where
    DeclareError: From<E>,
{
    match tokio::time::timeout(BROKER_WAIT, f).await {
        Ok(r) => r.map_err(DeclareError::from),
        Err(_) => Err(DeclareError::Stalled { what: what() }),
    }
}

fn broker(object: String) -> impl FnOnce(lapin::Error) -> TopologyError {
    move |source| TopologyError::Broker { object, source }
}

/// Declares everything `config` needs: base objects, wait tiers, endpoint
/// queues and bindings. With `previous` (the config running until now),
/// only the endpoints that are new or changed are declared again. Each step
/// is bounded by [`BROKER_WAIT`], not the whole: 10,000 endpoints take
/// longer than that.
pub(crate) async fn declare(
    conn: &Connection,
    config: &Config,
    previous: Option<&Config>,
    topology: &Topology,
    held: &bindings::Bindings,
) -> Result<(), DeclareError> {
    let channel = step(|| "a channel".into(), async {
        common::amqp::open_channel(conn)
            .await
            .map_err(broker("channel".into()))
    })
    .await?;
    step(
        || "the base exchanges and queues".into(),
        topology.declare_base(conn, &channel),
    )
    .await?;
    // Passive first, on its own channels: see `control::ensure`.
    step(|| topology.control(), async {
        control::ensure(conn, topology)
            .await
            .map_err(broker(topology.control()))
    })
    .await?;
    // The attempt log, so that it can be read before the first attempt. Its
    // writer declares it again when it is missing: a failure here only
    // delays it, never a delivery.
    if config.log.enabled {
        declare_stream(
            &topology.log(),
            common::history::ensure(conn, topology, &config.log),
            "Declaring the attempt log failed; its writer tries again with the first record.",
        )
        .await;
    }
    // The event archive, so that replays can read it before the first
    // publish; publishers declare it too.
    if config.archive.enabled {
        declare_stream(
            &topology.archive(),
            common::archive::ensure(conn, topology, &config.archive),
            "Declaring the event archive failed; publishers declare it again when they connect.",
        )
        .await;
    }
    for tier in config.wait_tiers() {
        step(
            || topology.wait_queue(tier),
            topology.declare_wait_tier(&channel, tier),
        )
        .await?;
    }
    let todo: Vec<&common::config::Endpoint> = config
        .endpoints
        .iter()
        .filter(|e| previous.is_none_or(|p| !p.endpoints.contains(e)))
        .collect();
    let lanes = DECLARE_CHANNELS.min(todo.len().div_ceil(DECLARES_IN_FLIGHT));
    let mut channels = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        channels.push(
            step(|| "a channel".into(), async {
                common::amqp::open_channel(conn)
                    .await
                    .map_err(broker("channel".into()))
            })
            .await?,
        );
    }
    // Endpoint i on channel i % lanes, DECLARES_IN_FLIGHT at a time on each.
    let declared = futures_util::future::join_all(channels.iter().enumerate().map(|(lane, ch)| {
        let mine: Vec<&common::config::Endpoint> =
            todo.iter().skip(lane).step_by(lanes).copied().collect();
        async move {
            for chunk in mine.chunks(DECLARES_IN_FLIGHT) {
                let results = step(|| format!("the queue of endpoint {}", chunk[0].id), async {
                    Ok::<_, TopologyError>(
                        futures_util::future::join_all(chunk.iter().map(|e| async move {
                            topology
                                .declare_endpoint(ch, &e.id, &e.binding_keys())
                                .await
                        }))
                        .await,
                    )
                })
                .await?;
                first_error(results)?;
            }
            Ok::<(), DeclareError>(())
        }
    }))
    .await;
    for ch in &channels {
        let _ = ch.close(200, "declared".into()).await;
    }
    first_declare_error(declared)?;
    step(|| topology.bindings_state(), async {
        bindings::sync(conn, topology, config, held)
            .await
            .map_err(broker(topology.bindings_state()))
    })
    .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Of the channels' results, the error that explains the others (see
/// [`first_error`]); a stall otherwise.
fn first_declare_error(results: Vec<Result<(), DeclareError>>) -> Result<(), DeclareError> {
    let mut stalled = None;
    let mut topology = Vec::new();
    for r in results {
        match r {
            Ok(()) => {}
            Err(DeclareError::Topology(e)) => topology.push(Err(e)),
            Err(e) => stalled = stalled.or(Some(e)),
        }
    }
    first_error(topology)?;
    stalled.map_or(Ok(()), Err)
}

/// The error that explains the others: a refusal closes the channel, and
/// every declaration pipelined behind it then fails with "channel closed".
fn first_error(results: Vec<Result<(), TopologyError>>) -> Result<(), TopologyError> {
    let mut errors: Vec<TopologyError> = results.into_iter().filter_map(Result::err).collect();
    match errors
        .iter()
        .position(|e| matches!(e, TopologyError::Conflict { .. }))
        .or_else(|| {
            errors.iter().position(|e| {
                matches!(e, TopologyError::Broker { source, .. } if common::amqp::reply_code(source).is_some())
            })
        }) {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

/// Checks that `new` can replace `old` without a restart, and logs what a
/// removed endpoint leaves behind. Bindings are synced when the workers
/// restart ([`bindings::sync`]).
pub(super) fn check_reload(old: &Config, new: &Config) -> anyhow::Result<()> {
    validate(new)?;
    anyhow::ensure!(
        old.amqp.urls == new.amqp.urls
            && old.amqp.prefix == new.amqp.prefix
            && old.amqp.queue_type == new.amqp.queue_type,
        "amqp.url(s), amqp.prefix and amqp.queue_type cannot change on reload; restart instead"
    );
    anyhow::ensure!(
        old.amqp.delivery_limit == new.amqp.delivery_limit
            && old.amqp.unrouted_max_length == new.amqp.unrouted_max_length,
        "amqp.delivery_limit and amqp.unrouted_max_length are arguments of queues that exist; they cannot change on reload"
    );
    anyhow::ensure!(
        old.log == new.log,
        "[log] cannot change on reload; restart instead"
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

/// The keys a reload changed that the running dispatcher reads only at
/// start (its connection, its consumers, the metrics listener): they apply
/// at the next restart. (`[http]` is applied at once; endpoints, defaults
/// and the registry's key with the endpoints.)
pub(super) fn restart_only_settings(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.amqp, &new.amqp);
    [
        ("amqp.prefetch", a.prefetch != b.prefetch),
        (
            "amqp.consume_channels",
            a.consume_channels != b.consume_channels,
        ),
        (
            "amqp.publish_channels",
            a.publish_channels != b.publish_channels,
        ),
        (
            "amqp.max_message_bytes",
            a.max_message_bytes != b.max_message_bytes,
        ),
        (
            "amqp.max_reconnect_delay_ms",
            a.max_reconnect_delay != b.max_reconnect_delay,
        ),
        (
            "amqp.publish_timeout_ms",
            a.publish_timeout != b.publish_timeout,
        ),
        (
            "amqp.quorum_replicas",
            a.quorum_replicas != b.quorum_replicas,
        ),
        ("metrics.listen", old.metrics_listen != new.metrics_listen),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// A paused endpoint resumes when its URL changes (or it is removed).
pub(super) fn forget_changed_pauses(
    paused: &std::sync::Mutex<HashMap<String, url::Url>>,
    new: &Config,
) {
    let mut paused = paused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    paused.retain(|id, url| new.endpoint(id).is_some_and(|e| e.url == *url));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(extra, "t.toml".as_ref(), &[]).expect("config")
    }

    #[test]
    fn the_keys_read_only_at_start_are_named_and_queue_arguments_refused() {
        let base = config("");
        assert!(restart_only_settings(&base, &config("")).is_empty());
        assert_eq!(
            restart_only_settings(
                &base,
                &config("[amqp]\nprefetch = 7\nconsume_channels = 3\n")
            ),
            ["amqp.prefetch", "amqp.consume_channels"]
        );
        // [http] and [defaults] apply at once: not named.
        assert!(
            restart_only_settings(
                &base,
                &config("[http]\nmax_response_body_bytes = 1024\n[defaults]\nmax_retries = 2\n")
            )
            .is_empty()
        );
        assert_eq!(
            restart_only_settings(&base, &config("[amqp]\nquorum_replicas = 1\n")),
            ["amqp.quorum_replicas"]
        );
        for changed in [
            "[amqp]\ndelivery_limit = 7\n",
            "[amqp]\nunrouted_max_length = 7\n",
        ] {
            let e = check_reload(&base, &config(changed))
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot change on reload"), "{changed}: {e}");
        }
        check_reload(&base, &config("[http]\nmax_response_body_bytes = 1024\n"))
            .expect("[http] reloads");
    }
}
