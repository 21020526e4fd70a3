//! The broker's refusals: the AMQP 0-9-1 reply codes hookpost acts on
//! (the specification's constants), read from the error's kind; and
//! whether a queue exists (a 404 to a passive declare).

/// The credentials may not do this (soft, channel closed).
pub const ACCESS_REFUSED: u16 = 403;
/// No such queue or exchange (soft, channel closed).
pub const NOT_FOUND: u16 = 404;
/// An exclusive queue in use by another connection (soft).
pub const RESOURCE_LOCKED: u16 = 405;
/// An existing object with other arguments, or a failed precondition (soft).
pub const PRECONDITION_FAILED: u16 = 406;

/// The reply code of the broker's refusal in `e` (one of this module's constants), or `None`
/// when `e` is not an answer from the broker (I/O, a closed channel or
/// connection, a client-side error). Classify broker errors with this, never
/// with their text.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Whether queue `name` exists: a passive declare on a channel of its own
/// (a missing queue is a 404 refusal, which closes the channel it was
/// asked on).
///
/// # Errors
/// A refusal other than 404, or a broker error.
pub async fn queue_exists(conn: &lapin::Connection, name: &str) -> Result<bool, lapin::Error> {
    Ok(queue_counts(conn, name).await?.is_some())
}

/// `(ready messages, consumers)` of queue `name`, by a passive declare on a
/// channel of its own; `None` when it does not exist.
///
/// # Errors
/// A refusal other than 404, or a broker error.
pub async fn queue_counts(
    conn: &lapin::Connection,
    name: &str,
) -> Result<Option<(u32, u32)>, lapin::Error> {
    let ch = crate::amqp::open_channel(conn).await?;
    let found = ch
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..lapin::options::QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    match found {
        Ok(q) => {
            let _ = ch.close(200, "checked".into()).await;
            Ok(Some((q.message_count(), q.consumer_count())))
        }
        Err(e) if reply_code(&e) == Some(NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_come_from_the_error_kind_not_its_text() {
        use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let broker = |kind, text: &str| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
                kind,
                text.into(),
            )))
        };
        for (soft, code) in [
            (AMQPSoftError::NOTFOUND, NOT_FOUND),
            (AMQPSoftError::PRECONDITIONFAILED, PRECONDITION_FAILED),
            (AMQPSoftError::RESOURCELOCKED, RESOURCE_LOCKED),
            (AMQPSoftError::ACCESSREFUSED, ACCESS_REFUSED),
        ] {
            // The text says something else: only the code counts.
            let e = broker(AMQPErrorKind::Soft(soft), "NOT_FOUND - inequivalent arg");
            assert_eq!(reply_code(&e), Some(code));
        }
        let hard = broker(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "PRECONDITION_FAILED",
        );
        assert_eq!(reply_code(&hard), Some(530));
        let io = lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::other("PRECONDITION_FAILED - inequivalent arg"),
        )));
        assert_eq!(reply_code(&io), None);
        assert_eq!(reply_code(&lapin::ErrorKind::FutureCompleted.into()), None);
    }
}
