//! [`Publisher`]: publish events to `<prefix>.events` and return only once the
//! broker has confirmed them.
//!
//! Every publish is `mandatory` and persistent, on a channel in confirm mode.
//! Publishes are pipelined (up to [`WINDOW`] unconfirmed at once). A nack or a
//! returned message is an error, never a success. When the connection drops,
//! the unconfirmed events are published again on a new connection until the
//! configured `publish_timeout_ms` runs out; so an event may reach the broker
//! twice (at-least-once), and none is reported confirmed without a confirm.
//!
//! While the broker blocks the connection (`connection.blocked`: a memory or
//! disk alarm), publishing fails at once with [`PublishError::Blocked`]
//! instead of waiting out the timeout: an alarm lasts until an operator or
//! the consumers free the resource, far longer than a publish should wait.

use common::Event;
use common::amqp::{AmqpClient, AmqpError};
use common::config::Config;
use common::metrics::ProducerMetrics;
use common::topology::{Topology, TopologyError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use lapin::{Confirmation, PublisherConfirm};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most publishes awaiting their confirm at once.
pub const WINDOW: usize = 1000;

/// Why events were not (or not surely) stored by the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker connection within the publish timeout. Nothing was confirmed
    /// from the unconfirmed events; publishing them again is safe.
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] AmqpError),
    /// The broker refused to store an event (for example the unrouted queue is full).
    #[error("event {id}: the broker refused it (nack)")]
    Nacked {
        /// The event id.
        id: String,
    },
    /// The broker could not route an event even to the unrouted queue.
    #[error("event {id}: unroutable ({reply}); is the topology declared?")]
    Unroutable {
        /// The event id.
        id: String,
        /// The broker's reply text.
        reply: String,
    },
    /// No confirm arrived in time (broker overloaded or blocked): the event may
    /// or may not be stored.
    #[error("event {id}: not confirmed within {timeout:?}; it may or may not have been stored")]
    Timeout {
        /// The event id.
        id: String,
        /// The publish timeout.
        timeout: Duration,
    },
    /// The broker blocks publishing on this connection (a memory or disk
    /// alarm, `reason` as the broker gives it). Events not confirmed before
    /// the block may or may not be stored; publishing them again later is safe.
    #[error("the broker is blocking publishes ({reason}); not confirmed, retry later")]
    Blocked {
        /// The broker's reason, such as "low on memory".
        reason: String,
    },
    /// The event is larger than `amqp.max_message_bytes`; nothing was published.
    #[error("event {id}: {size} bytes, over amqp.max_message_bytes ({max})")]
    TooLarge {
        /// The event id.
        id: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Declaring the exchanges failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A channel could not be opened or set up.
    #[error("broker channel: {0}")]
    Channel(#[source] lapin::Error),
}

impl PublishError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Unroutable { .. }
                | Self::TooLarge { .. }
                | Self::Topology(TopologyError::Conflict { .. })
        )
    }
}

/// A connection to the broker for publishing events. Cheap to share behind an
/// `Arc`; concurrent publishes share one channel.
#[derive(Debug)]
pub struct Publisher {
    client: AmqpClient,
    topology: Topology,
    timeout: Duration,
    channel: Mutex<Option<Channel>>,
    /// The current channel, readable without waiting for `channel`'s lock.
    current: std::sync::Mutex<Option<Channel>>,
    metrics: Option<ProducerMetrics>,
    never: CancellationToken,
    events_exchange: String,
    max_bytes: usize,
}

/// An event with its serialized body.
struct Outgoing<'e> {
    event: &'e Event,
    body: Vec<u8>,
}

impl Publisher {
    /// A publisher for the broker and prefix in `config`. Connects lazily, on
    /// the first publish (see [`Publisher::connect`] to fail fast).
    pub fn new(config: &Config) -> Self {
        Self {
            client: AmqpClient::new(
                config.amqp.url.clone(),
                "hookpost-producer",
                config.amqp.max_reconnect_delay,
            ),
            topology: Topology::new(&config.amqp),
            timeout: config.amqp.publish_timeout,
            channel: Mutex::new(None),
            current: std::sync::Mutex::new(None),
            metrics: None,
            never: CancellationToken::new(),
            events_exchange: Topology::new(&config.amqp).events_exchange(),
            max_bytes: config.amqp.max_message_bytes,
        }
    }

    /// Connects and declares the exchanges now.
    ///
    /// # Errors
    /// [`PublishError::Unavailable`] when the broker cannot be reached within
    /// the publish timeout, [`PublishError::Topology`] when it refuses a declaration.
    pub async fn connect(config: &Config) -> Result<Self, PublishError> {
        let publisher = Self::new(config);
        publisher
            .channel(Instant::now() + publisher.timeout)
            .await?;
        Ok(publisher)
    }

    /// Counts publishes in these metrics.
    #[must_use]
    pub fn with_metrics(mut self, metrics: ProducerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The underlying connection supervisor (for readiness checks).
    pub fn client(&self) -> &AmqpClient {
        &self.client
    }

    /// Whether a confirm-mode channel with the exchanges declared is open now.
    pub fn is_ready(&self) -> bool {
        self.client.is_connected()
            && self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|c| c.status().connected())
    }

    /// Publishes one event; returns once the broker confirmed it.
    ///
    /// # Errors
    /// See [`PublishError`].
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.publish_many(std::slice::from_ref(event)).await
    }

    /// Publishes events pipelined; returns once the broker confirmed all of
    /// them. On error, some may have been stored: publishing them again is
    /// safe (receivers dedupe on `webhook-id`).
    ///
    /// # Errors
    /// See [`PublishError`].
    pub async fn publish_many(&self, events: &[Event]) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.publish_until(events, started + self.timeout).await;
        if let Some(m) = &self.metrics {
            let outcome = if result.is_ok() {
                "confirmed"
            } else {
                "failed"
            };
            m.events_published
                .with_label_values(&[outcome])
                .inc_by(events.len() as u64);
            m.publish_duration.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn publish_until(&self, events: &[Event], deadline: Instant) -> Result<(), PublishError> {
        if let Some(reason) = self.client.blocked() {
            return Err(PublishError::Blocked { reason });
        }
        // Serialize once: retries after a reconnect send the same bytes.
        let outgoing = events
            .iter()
            .map(|event| {
                let body = event.to_vec();
                if body.len() > self.max_bytes {
                    return Err(PublishError::TooLarge {
                        id: event.id.clone(),
                        size: body.len(),
                        max: self.max_bytes,
                    });
                }
                Ok(Outgoing { event, body })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut pending: Vec<&Outgoing<'_>> = outgoing.iter().collect();
        while !pending.is_empty() {
            let channel = self.channel(deadline).await?;
            let retry = self.publish_window(&channel, pending, deadline).await?;
            if let Some(first) = retry.first() {
                if Instant::now() >= deadline {
                    return Err(PublishError::Timeout {
                        id: first.event.id.clone(),
                        timeout: self.timeout,
                    });
                }
                tracing::warn!(
                    unconfirmed = retry.len(),
                    "Broker channel lost while publishing; publishing again."
                );
                self.forget_channel(&channel).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pending = retry;
        }
        Ok(())
    }

    /// Publishes `events` on `channel`; returns those to publish again because
    /// the channel failed before their confirm.
    async fn publish_window<'a, 'e>(
        &self,
        channel: &Channel,
        events: Vec<&'a Outgoing<'e>>,
        deadline: Instant,
    ) -> Result<Vec<&'a Outgoing<'e>>, PublishError> {
        let mut in_flight: VecDeque<(&Outgoing<'e>, PublisherConfirm)> =
            VecDeque::with_capacity(WINDOW.min(events.len()));
        let mut to_send = events.into_iter();
        let mut retry = Vec::new();
        let mut broken = false;
        loop {
            while !broken && in_flight.len() < WINDOW {
                let Some(event) = to_send.next() else { break };
                // Sending is bounded too: a broker that blocked the connection
                // (memory or disk alarm) stops reading frames.
                match self
                    .wait(deadline, &event.event.id, self.send(channel, event))
                    .await?
                {
                    Ok(confirm) => in_flight.push_back((event, confirm)),
                    Err(_) => {
                        broken = true;
                        retry.push(event);
                    }
                }
            }
            let Some((event, confirm)) = in_flight.pop_front() else {
                break;
            };
            match self.wait(deadline, &event.event.id, confirm).await? {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(PublishError::Unroutable {
                        id: event.event.id.clone(),
                        reply: returned.reply_text.to_string(),
                    });
                }
                Ok(Confirmation::Nack(_)) => {
                    return Err(PublishError::Nacked {
                        id: event.event.id.clone(),
                    });
                }
                Err(_) => {
                    broken = true;
                    retry.push(event);
                }
            }
        }
        retry.extend(to_send);
        Ok(retry)
    }

    /// Waits for `step` of publishing event `id` until `deadline`, or until
    /// the broker blocks the connection, whichever comes first.
    async fn wait<T>(
        &self,
        deadline: Instant,
        id: &str,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, PublishError> {
        let mut blocked = self.client.watch_blocked();
        tokio::select! {
            done = tokio::time::timeout_at(deadline, step) => done.map_err(|_| PublishError::Timeout {
                id: id.to_owned(),
                timeout: self.timeout,
            }),
            Ok(reason) = blocked.wait_for(Option::is_some) => Err(PublishError::Blocked {
                reason: reason.clone().unwrap_or_default(),
            }),
        }
    }

    async fn send(
        &self,
        channel: &Channel,
        outgoing: &Outgoing<'_>,
    ) -> Result<PublisherConfirm, lapin::Error> {
        let event = outgoing.event;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            // 2 = persistent: written to disk before the confirm.
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(event.id.as_str()))
            .with_timestamp(u64::try_from(event.timestamp.unix_timestamp()).unwrap_or(0))
            .with_type(ShortString::from(event.event_type.as_str()))
            .with_app_id("hookpost".into());
        channel
            .basic_publish(
                self.events_exchange.as_str().into(),
                event.event_type.as_str().into(),
                // mandatory: an event no queue takes comes back as an error
                // instead of vanishing (the alternate exchange normally takes it).
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &outgoing.body,
                properties,
            )
            .await
    }

    /// The publishing channel, opening (and declaring the exchanges) if needed.
    async fn channel(&self, deadline: Instant) -> Result<Channel, PublishError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = slot.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        loop {
            let connection = self.client.connection(Some(deadline), &self.never).await?;
            let opened = async {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(PublishError::Channel)?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(PublishError::Channel)?;
                self.topology.declare_base(&channel).await?;
                Ok::<_, PublishError>(channel)
            };
            match tokio::time::timeout_at(deadline, opened).await {
                Ok(Ok(channel)) => {
                    *slot = Some(channel.clone());
                    *self
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(channel.clone());
                    return Ok(channel);
                }
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                // The connection died between connect and setup: try again.
                Ok(Err(e)) if Instant::now() < deadline && !connection.status().connected() => {
                    tracing::warn!(error = %e, "Broker channel setup failed; reconnecting.");
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(PublishError::Unavailable(AmqpError::Unavailable {
                        url: "broker".into(),
                        waited: self.timeout,
                        last_error: "channel setup timed out".into(),
                    }));
                }
            }
        }
    }

    async fn forget_channel(&self, broken: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.id() == broken.id() && !c.status().connected())
        {
            *slot = None;
        }
    }

    /// Keeps a channel open until `shutdown`: connects (retrying without
    /// deadline) and declares the exchanges, then checks every second and
    /// reconnects when the broker went away, so readiness recovers even when
    /// no publish comes. Used by servers that start while the broker is down.
    ///
    /// # Errors
    /// [`PublishError::Topology`] on a conflicting declaration.
    pub async fn keep_connected(&self, shutdown: &CancellationToken) -> Result<(), PublishError> {
        while !shutdown.is_cancelled() {
            if !self.is_ready() {
                match self.client.connection(None, shutdown).await {
                    Err(AmqpError::Shutdown) => break,
                    Err(e) => tracing::warn!(error = %e, "Broker connection failed."),
                    Ok(_) => match self.channel(Instant::now() + self.timeout).await {
                        Ok(_) => {}
                        Err(e) if !e.is_retryable() => {
                            tracing::error!(error = %e, "Broker refused the topology.");
                            return Err(e);
                        }
                        Err(e) => tracing::warn!(error = %e, "Broker channel setup failed."),
                    },
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    /// Why the broker blocks this publisher's connection, if it does (see
    /// [`PublishError::Blocked`]).
    pub fn blocked(&self) -> Option<String> {
        self.client.blocked()
    }

    /// Closes the connection, within [`common::amqp::CLOSE_TIMEOUT`] even
    /// when the broker blocks it.
    pub async fn close(&self) {
        self.client.close().await;
    }
}
