//! Publishing with `mandatory` and waiting for the broker's confirm, and the
//! properties a republished message keeps.

use std::time::Duration;

/// The properties an event is published with (by the publisher, and again
/// by a replay from the archive): JSON, persistent (written to disk before
/// the confirm), `message_id` = the event id (the publisher finds a
/// returned event by it), its timestamp and type, `app_id` hookpost.
pub fn event_properties(event: &crate::Event) -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id.as_str().into())
        .with_timestamp(u64::try_from(event.timestamp.unix_timestamp()).unwrap_or(0))
        .with_type(event.event_type.as_str().into())
        .with_app_id("hookpost".into())
}

/// Longest [`publish_confirmed`] waits for the broker (a broker that blocks
/// publishers, on a memory or disk alarm, never answers).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes with `mandatory` on a channel in confirm mode and waits for the
/// broker's confirm, at most [`CONFIRM_TIMEOUT`]; a nack or a return (no
/// queue bound) is an error.
///
/// # Errors
/// A broker error, a nack, a return, or no confirm in time.
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> anyhow::Result<()> {
    tokio::time::timeout(
        CONFIRM_TIMEOUT,
        publish_confirmed_unbounded(ch, exchange, routing_key, body, properties),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no confirm from the broker within {} s (is it blocking publishers? see hookpost_broker_blocked)",
            CONFIRM_TIMEOUT.as_secs()
        )
    })?
}

async fn publish_confirmed_unbounded(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> anyhow::Result<()> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..lapin::options::BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => Ok(()),
        lapin::Confirmation::Ack(Some(returned)) => {
            anyhow::bail!("the broker returned it ({})", returned.reply_text)
        }
        lapin::Confirmation::Nack(_) => anyhow::bail!("the broker refused it (nack)"),
    }
}

/// The properties of a republished message: the original's, with `headers`,
/// persistent, and without `user_id` (the broker refuses a user id other than
/// the publisher's login) or `expiration` (a parked message must not expire).
pub fn republished_properties(
    original: &lapin::BasicProperties,
    headers: lapin::types::FieldTable,
) -> lapin::BasicProperties {
    let mut p = lapin::BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}
