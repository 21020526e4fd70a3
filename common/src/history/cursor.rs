//! Reading a stream by time: attach at the offset of a timestamp (never the
//! beginning), append an end marker, and hand out its messages until the
//! marker comes back ("caught up"), then, for a live tail, on past it.
//! The attempt log's queries and the archive's replays read through it.

use super::MARKER_HEADER;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::time::Duration;
use time::OffsetDateTime;

/// How far before `since` a read attaches: a record is appended after its
/// attempt ends (up to an endpoint's timeout after it began) and the
/// broker seeks by chunk.
pub const ATTACH_MARGIN: Duration = Duration::from_secs(60);

/// Longest a read waits for the broker before it has caught up: to open
/// (attach, append its marker) and, after that, for each next message. A
/// broker that stops answering ends the read with an error instead of
/// holding it (and `hookpost-admin log`) for good. Past the marker, a live
/// tail waits as long as it is asked to.
pub const STALL: Duration = Duration::from_secs(30);

/// What the next step of a read is.
#[derive(Debug)]
pub enum Step {
    /// A message of the stream (never a marker).
    Message(Box<Delivery>),
    /// The read reached the end marker it appended: every message appended
    /// before the read began has been handed out.
    CaughtUp,
}

/// An open read of one stream.
#[derive(Debug)]
pub struct Cursor {
    channel: Channel,
    consumer: Consumer,
    stream: String,
    token: String,
    /// Messages appended after this (Unix seconds) end a read early.
    stop_after: Option<u64>,
    caught_up: bool,
    unacked: u32,
    /// [`STALL`], or less in tests.
    stall: Duration,
}

impl Cursor {
    /// Attaches to `stream` at `since` − [`ATTACH_MARGIN`] and appends the
    /// end marker. Before the marker, a message appended more than the
    /// margin after `until` ends the read.
    ///
    /// # Errors
    /// The stream does not exist (`missing` says what creates it), or a
    /// broker error.
    pub async fn open(
        conn: &Connection,
        stream: &str,
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
        missing: &str,
    ) -> anyhow::Result<Self> {
        tokio::time::timeout(
            STALL,
            Self::open_unbounded(conn, stream, since, until, missing),
        )
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "reading {stream}: the broker did not answer within {}s",
                STALL.as_secs()
            ))
        })
    }

    async fn open_unbounded(
        conn: &Connection,
        stream: &str,
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
        missing: &str,
    ) -> anyhow::Result<Self> {
        let channel = crate::amqp::open_channel(conn).await?;
        channel.basic_qos(1000, BasicQosOptions::default()).await?;
        let attach = since - ATTACH_MARGIN;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::Timestamp(u64::try_from(attach.unix_timestamp()).unwrap_or(0)),
        );
        let consumer = channel
            .basic_consume(
                stream.into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| anyhow::anyhow!("reading {stream}: {e} ({missing})"))?;
        // Attached first: the marker is appended after the attach point.
        let token = uuid::Uuid::new_v4().to_string();
        append_marker(conn, stream, &token, missing).await?;
        Ok(Self {
            channel,
            consumer,
            stream: stream.to_owned(),
            token,
            stop_after: until
                .map(|u| u + ATTACH_MARGIN)
                .and_then(|u| u64::try_from(u.unix_timestamp()).ok()),
            caught_up: false,
            unacked: 0,
            stall: STALL,
        })
    }

    /// The same read, waiting at most `stall` for each message before it
    /// has caught up (tests of a stalled broker).
    #[must_use]
    pub fn stalling_after(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The next step; `None` when a message appended well after `until`
    /// ended the read before it caught up.
    ///
    /// # Errors
    /// A broker error, or the consumer was cancelled (the stream deleted).
    pub async fn next(&mut self) -> anyhow::Result<Option<Step>> {
        loop {
            let next = if self.caught_up {
                self.consumer.next().await
            } else {
                tokio::time::timeout(self.stall, self.consumer.next())
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "reading {}: no message from the broker for {}s before the read caught up",
                            self.stream,
                            self.stall.as_secs_f32()
                        )
                    })?
            };
            let Some(delivery) = next else {
                anyhow::bail!("the consumer of {} was cancelled", self.stream);
            };
            let delivery = delivery?;
            self.unacked += 1;
            if self.unacked >= 200 {
                tokio::time::timeout(self.stall, delivery.ack(BasicAckOptions { multiple: true }))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "reading {}: the broker took no ack for {}s",
                            self.stream,
                            self.stall.as_secs_f32()
                        )
                    })??;
                self.unacked = 0;
            }
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            if let Some(marker) = crate::contract::text(&headers, MARKER_HEADER) {
                if marker == self.token && !self.caught_up {
                    self.caught_up = true;
                    return Ok(Some(Step::CaughtUp));
                }
                continue;
            }
            if !self.caught_up
                && let (Some(stop), Some(appended)) =
                    (self.stop_after, delivery.properties.timestamp())
                && *appended > stop
            {
                return Ok(None);
            }
            return Ok(Some(Step::Message(Box::new(delivery))));
        }
    }

    /// Closes the read's channel.
    pub async fn close(self) {
        let _ = self.channel.close(200, "read".into()).await;
    }
}

/// Appends the end marker `token` (a message with [`MARKER_HEADER`] and
/// nothing else) to `stream` and waits for its confirm.
async fn append_marker(
    conn: &Connection,
    stream: &str,
    token: &str,
    missing: &str,
) -> anyhow::Result<()> {
    let ch = crate::amqp::open_channel(conn).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut headers = FieldTable::default();
    headers.insert(
        MARKER_HEADER.into(),
        AMQPValue::LongString(LongString::from(token)),
    );
    let confirm = ch
        .basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"",
            BasicProperties::default().with_headers(headers),
        )
        .await?
        .await?;
    let _ = ch.close(200, "marked".into()).await;
    match confirm {
        lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => anyhow::bail!("{stream} does not exist ({missing})"),
        lapin::Confirmation::Nack(_) => anyhow::bail!("the broker refused the end marker"),
    }
}
