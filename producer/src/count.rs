//! `hookpost-producer publish --count N`: many events from one draft,
//! published a thousand per call with a few calls in flight.

use crate::Publisher;
use anyhow::Context;
use common::EventDraft;

/// Events per `publish_many` call of `publish --count`.
const CHUNK: usize = 1000;
/// Calls in flight at once: the next chunk is built while the broker
/// confirms the ones before it.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Publishes `count` events made from `draft`, [`CHUNK`] per call, and prints
/// each chunk's ids in order once the broker confirmed it. Memory stays
/// bounded by the chunks in flight, whatever `count` is. On a failure the ids
/// printed are those confirmed before it.
///
/// # Errors
/// An invalid event, a failed publish, or standard output closed.
pub async fn publish_count(
    publisher: &Publisher,
    draft: &EventDraft,
    count: usize,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::io::Write;
    let sizes = (0..count)
        .step_by(CHUNK)
        .map(move |start| (count - start).min(CHUNK));
    let mut confirmed = futures_util::stream::iter(sizes)
        .map(|n| async move {
            let events = (0..n)
                .map(|_| draft.clone().into_event())
                .collect::<Result<Vec<_>, _>>()
                .context("invalid event")?;
            publisher.publish_many(&events).await?;
            anyhow::Ok(events)
        })
        .buffered(CHUNKS_IN_FLIGHT);
    while let Some(events) = confirmed.next().await {
        let events = events?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for event in &events {
            writeln!(out, "{}", event.id)?;
        }
        out.flush()?;
    }
    Ok(())
}
