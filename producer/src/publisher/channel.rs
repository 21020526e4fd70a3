//! The publisher's channel: opened (with the exchanges declared and the
//! archive stream made sure of) when a publish needs it, replaced when it
//! is suspect, forgotten when it broke, and kept open by servers that must
//! be ready before the first publish.

use super::{PublishError, Publisher, WINDOW};
use crate::publisher::lane::Lane;
use common::amqp::AmqpError;
use lapin::options::ConfirmSelectOptions;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl Publisher {
    /// Keeps a channel open until `shutdown`: connects (retrying without
    /// deadline) and declares the exchanges, then checks every second and
    /// reconnects when the broker went away, so readiness recovers even when
    /// no publish comes. Used by servers that start while the broker is down.
    ///
    /// # Errors
    /// [`PublishError::Topology`] on a conflicting declaration.
    pub async fn keep_connected(&self, shutdown: &CancellationToken) -> Result<(), PublishError> {
        self.inner.keep_connected(shutdown).await
    }
}

impl super::Inner {
    /// The first lane, opening its channel (and declaring the exchanges) if
    /// needed: what [`super::Publisher::connect`] and readiness wait for.
    pub(super) async fn lane(&self, deadline: Instant) -> Result<Arc<Lane>, PublishError> {
        self.lane_at(0, deadline).await
    }

    /// Lane `at` (below [`super::LANES`]), opening its channel if needed.
    /// The first lane opened on a connection declares the exchanges and
    /// makes sure of the archive; a lane opened beside another open on the same
    /// connection only opens its channel (and checks the archive only if the
    /// other did not find it): declaring again would, say, bind again a
    /// queue an operator unbound since.
    pub(super) async fn lane_at(
        &self,
        at: usize,
        deadline: Instant,
    ) -> Result<Arc<Lane>, PublishError> {
        let mut lanes = self.lanes.lock().await;
        if self.closed.is_cancelled() {
            return Err(PublishError::Unavailable(AmqpError::Shutdown));
        }
        if let Some(lane) = lanes[at].as_ref()
            && lane.is_open()
        {
            // Readiness follows an open lane: the one it followed may have
            // been replaced since (after a nack) without a new one opening.
            let mut current = self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !current.as_ref().is_some_and(|c| c.status().connected()) {
                *current = Some(lane.channel().clone());
            }
            return Ok(lane.clone());
        }
        lanes[at] = None;
        loop {
            let connection = self.client.connection(Some(deadline), &self.closed).await?;
            // An open lane on this very connection: the exchanges were
            // declared on it (a lane on a connection since replaced does
            // not count). Its archive check is taken only when it found the
            // archive; otherwise this lane checks again.
            let sibling = lanes
                .iter()
                .flatten()
                .find(|lane| lane.is_open() && lane.is_on(&connection))
                .map(|lane| lane.archive());
            let opened = async {
                let channel = common::amqp::open_channel(&connection)
                    .await
                    .map_err(PublishError::Channel)?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(PublishError::Channel)?;
                if sibling.is_none() {
                    self.topology.declare_base(&connection, &channel).await?;
                }
                let archive = match sibling {
                    Some(true) => true,
                    _ => self.ensure_archive(&connection).await,
                };
                Ok::<_, PublishError>((channel, archive))
            };
            match tokio::time::timeout_at(deadline, opened).await {
                Ok(Ok((channel, archive))) => {
                    *self
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(channel.clone());
                    let lane = Arc::new(Lane::start(
                        channel,
                        &connection,
                        WINDOW,
                        self.timeout,
                        archive,
                        self.copy_counters.clone(),
                    ));
                    lanes[at] = Some(lane.clone());
                    return Ok(lane);
                }
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                // The connection died between connect and setup: try again.
                // Closed on purpose (shutdown) during the setup: not a failure.
                Ok(Err(e)) if self.closed.is_cancelled() => return Err(e),
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

    /// Whether the archive stream is there (declared now if not), when
    /// `[archive]` is enabled. A failure is logged (with backoff: once per
    /// lane) and the lane counts its events' copies lost: the archive never
    /// fails a publish.
    pub(super) async fn ensure_archive(&self, connection: &lapin::Connection) -> bool {
        let Some((archive, stream)) = &self.archive else {
            return false;
        };
        match common::archive::ensure(connection, &self.topology, archive).await {
            Ok(()) => true,
            // Closed on purpose during the setup: nothing is lost.
            Err(_) if self.closed.is_cancelled() => false,
            Err(e) => {
                tracing::warn!(
                    stream = stream.as_str(),
                    error = %e,
                    "Event archive unavailable; events are published without their archive copy."
                );
                false
            }
        }
    }

    /// Closes `suspect` and forgets it: its slot opens a new channel next.
    pub(super) async fn replace_lane(&self, suspect: &Arc<Lane>) {
        let mut lanes = self.lanes.lock().await;
        for slot in lanes.iter_mut() {
            if slot.as_ref().is_some_and(|l| Arc::ptr_eq(l, suspect)) {
                *slot = None;
                suspect.close();
            }
        }
        // Readiness follows another open lane, if it followed this one.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|c| c.id() == suspect.channel().id())
            && let Some(open) = lanes.iter().flatten().find(|l| l.is_open())
        {
            *current = Some(open.channel().clone());
        }
    }

    /// Forgets `broken` if its channel is gone.
    pub(super) async fn forget_lane(&self, broken: &Arc<Lane>) {
        let mut lanes = self.lanes.lock().await;
        for slot in lanes.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(l, broken) && !l.is_open())
            {
                *slot = None;
            }
        }
    }

    /// Lanes with an open channel now.
    pub(super) async fn open_lanes(&self) -> usize {
        let lanes = self.lanes.lock().await;
        lanes.iter().flatten().filter(|l| l.is_open()).count()
    }

    /// See [`Publisher::keep_connected`].
    async fn keep_connected(&self, shutdown: &CancellationToken) -> Result<(), PublishError> {
        while !shutdown.is_cancelled() {
            if !self.is_ready() {
                match self.client.connection(None, shutdown).await {
                    Err(AmqpError::Shutdown) => break,
                    Err(e) => tracing::warn!(error = %e, "Broker connection failed."),
                    Ok(_) => match self.lane(Instant::now() + self.timeout).await {
                        Ok(_) => {}
                        // Shutting down: the close interrupted the setup.
                        Err(_) if shutdown.is_cancelled() || self.closed.is_cancelled() => break,
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
}
