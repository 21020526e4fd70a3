//! Opening a channel on a long-lived connection, around a flaw of lapin
//! 4.12: when the broker closes a channel (a 404 to a passive declare, a
//! 406 to a declaration with other arguments), lapin keeps that channel's
//! error under its id. Channel ids wrap at the connection's `channel_max`
//! (2,047 with RabbitMQ), and the next channel opened on that id fails at
//! once with the old error, after which lapin keeps the id taken for the
//! connection's life. In the management API, which opens a few channels per
//! write, one write in about 300 failed with a stale
//! `NOT_FOUND - no queue '<prefix>.control'` (a 503) for a stream that
//! existed. A refusal of `channel.open` itself is never a soft error (the
//! broker answers a bad open by closing the connection), so a soft error
//! here is such a stale one: open the next id instead.
//!
//! What remains of the flaw: each id skipped this way stays taken for the
//! connection's life (measured: after 50 refusals and the ids wrapping,
//! 1,997 of 2,047 channels could be held open at once). A connection loses
//! one channel for every channel the broker refused on it, once the ids
//! have wrapped; hookpost's refusals are rare outside a start (a missing
//! queue's passive declare, a declaration with other arguments), so this
//! is far below what a process needs, but a process that met thousands of
//! refusals on one connection would run out of channels until it
//! reconnects.

use lapin::protocol::AMQPErrorKind;
use lapin::{Channel, Connection, ErrorKind};

/// How many stale ids in a row are skipped before the error is returned.
const STALE_IDS: usize = 64;

/// Opens a channel on `conn`, skipping ids that carry an old channel's
/// error (see the module's docs). Use it for every channel.
///
/// # Errors
/// The connection's error, or the last stale error after [`STALE_IDS`] ids.
pub async fn open_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let mut skipped = 0;
    loop {
        match conn.create_channel().await {
            Err(e) if is_stale(&e) && skipped < STALE_IDS => {
                skipped += 1;
                tracing::debug!(error = %e, skipped, "A channel id came round with an old channel's error; opening the next one.");
            }
            opened => return opened,
        }
    }
}

/// Whether `e`, from opening a channel, is an earlier channel's refusal.
fn is_stale(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)))
}
