//! Which endpoints run and what the broker must hold for them: the file's
//! endpoints plus the registry's, their declarations, and which reloads can
//! apply without a restart.

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

/// Endpoint declarations in flight at once: each is a queue declare and a
/// few binds, pipelined on one channel (one round trip at a time would make
/// 10,000 endpoints take minutes).
const DECLARES_IN_FLIGHT: usize = 64;

/// Declares everything `config` needs: base objects, wait tiers, endpoint
/// queues and bindings. With `previous` (the config running until now),
/// only the endpoints that are new or changed are declared again.
pub(crate) async fn declare(
    conn: &Connection,
    config: &Config,
    previous: Option<&Config>,
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
    // Passive first, on its own channels: see `control::ensure`.
    control::ensure(conn, topology)
        .await
        .map_err(|source| TopologyError::Broker {
            object: topology.control(),
            source,
        })?;
    for tier in config.wait_tiers() {
        topology.declare_wait_tier(&channel, tier).await?;
    }
    let todo: Vec<&common::config::Endpoint> = config
        .endpoints
        .iter()
        .filter(|e| previous.is_none_or(|p| !p.endpoints.contains(e)))
        .collect();
    for chunk in todo.chunks(DECLARES_IN_FLIGHT) {
        let declared = futures_util::future::join_all(
            chunk
                .iter()
                .map(|e| topology.declare_endpoint(&channel, &e.id, &e.events)),
        )
        .await;
        first_error(declared)?;
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
pub(super) fn forget_changed_pauses(
    paused: &std::sync::Mutex<HashMap<String, url::Url>>,
    new: &Config,
) {
    let mut paused = paused
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    paused.retain(|id, url| new.endpoint(id).is_some_and(|e| e.url == *url));
}
