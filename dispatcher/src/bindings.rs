//! Removing bindings an older config made. AMQP cannot list a queue's
//! bindings, so the dispatcher records the binding keys it applied
//! ([`common::routing::binding_keys`]: event patterns, and scoped keys, the
//! ones with `=`, on the scoped exchange), per endpoint,
//! as the one message of `<prefix>.state.bindings`; at start it unbinds what
//! that record has and the running config no longer wants, then records the
//! running config. Replicas on the same config agree, so the record is stable.

use common::Config;
use common::topology::Topology;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::BTreeMap;

/// Endpoint id → the keys its queue is bound with.
pub type Bindings = BTreeMap<String, Vec<String>>;

/// The bindings `config` wants.
pub fn wanted(config: &Config) -> Bindings {
    config
        .endpoints
        .iter()
        .map(|e| (e.id.clone(), e.binding_keys()))
        .collect()
}

/// What `recorded` has and `wanted` does not: `(endpoint id, pattern)` pairs.
pub fn stale(recorded: &Bindings, wanted: &Bindings) -> Vec<(String, String)> {
    recorded
        .iter()
        .flat_map(|(id, patterns)| {
            let keep = wanted.get(id).map(Vec::as_slice).unwrap_or(&[]);
            patterns
                .iter()
                .filter(|p| !keep.contains(p))
                .map(|p| (id.clone(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Unbinds what the last record has and neither `config` nor `held` wants,
/// then records the bindings of both.
///
/// # Errors
/// A broker error; the record is then left as it was.
pub async fn sync(
    conn: &Connection,
    topology: &Topology,
    config: &Config,
    held: &Bindings,
) -> Result<(), lapin::Error> {
    let channel = &common::amqp::open_channel(conn).await?;
    topology
        .declare_bindings_state(channel)
        .await
        .map_err(|e| match e {
            common::topology::TopologyError::Conflict { source, .. }
            | common::topology::TopologyError::Broker { source, .. } => source,
        })?;
    let queue = topology.bindings_state();
    let previous = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await?;
    let recorded: Bindings = previous
        .as_ref()
        .and_then(|m| serde_json::from_slice(&m.delivery.data).ok())
        .unwrap_or_default();
    let mut wanted = wanted(config);
    // Endpoints this process cannot load keep their bindings: their events
    // wait in their queues for a process that can.
    for (id, patterns) in held {
        wanted.entry(id.clone()).or_insert_with(|| patterns.clone());
    }
    for (id, pattern) in stale(&recorded, &wanted) {
        // Its own channel: a queue an operator deleted makes the unbind fail
        // and closes the channel, which must not stop the rest.
        let result = match common::amqp::open_channel(conn).await {
            Ok(ch) => {
                let r = unbind(&ch, topology, &id, &pattern).await;
                let _ = ch.close(200, "unbound".into()).await;
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(endpoint = %id, pattern = %pattern, "Removed a binding the config no longer has.")
            }
            Err(e) => {
                tracing::warn!(endpoint = %id, pattern = %pattern, error = %e, "Could not remove a stale binding.")
            }
        }
    }
    // Always write the record before acking the old one: acking without a
    // new record would leave none.
    {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let body = serde_json::to_vec(&wanted).unwrap_or_default();
        let stored = common::amqp::publish_confirmed(
            channel,
            "",
            &queue,
            &body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await;
        if let Err(e) = stored {
            tracing::warn!(
                error = %e,
                "The bindings record was not stored; stale bindings may remain after the next config change."
            );
        }
    }
    if let Some(previous) = previous {
        previous
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;
    }
    let _ = channel.close(200, "synced".into()).await;
    Ok(())
}

async fn unbind(
    ch: &Channel,
    topology: &Topology,
    id: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    ch.queue_unbind(
        topology.endpoint_queue(id).as_str().into(),
        topology.exchange_of_key(key).as_str().into(),
        key.into(),
        FieldTable::default(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_is_what_the_record_has_and_the_config_lacks() {
        let recorded: Bindings = [
            ("a".into(), vec!["x.*".into(), "y".into()]),
            ("gone".into(), vec!["#".into()]),
        ]
        .into();
        let wanted: Bindings = [
            ("a".into(), vec!["y".into(), "z".into()]),
            ("new".into(), vec!["#".into()]),
        ]
        .into();
        assert_eq!(
            stale(&recorded, &wanted),
            [("a".into(), "x.*".into()), ("gone".into(), "#".into())]
        );
        assert!(stale(&wanted, &wanted).is_empty());
    }
}
