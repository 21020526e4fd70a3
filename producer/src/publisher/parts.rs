//! A long call sent part by part over the lanes (`send_in_parts`), the
//! earliest failing part reported.

use super::{Inner, PART, PublishError};
use common::Event;
use futures_util::future::{AbortHandle, Abortable, Aborted};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

impl Inner {
    /// A long call (checked), part by part: each part of [`PART`] events is
    /// serialized, with its archive copies, while the broker takes the parts
    /// before it, and goes on the next lane in turn, so one call keeps every
    /// lane busy. Each part is a job of its own, with its own watchdog (a
    /// part waiting its turn hears of its channel's progress). A failing
    /// part stops the parts after it at once (what is not yet sent of them
    /// never is) and the call reports the earliest part that failed.
    pub(super) async fn send_in_parts(
        &self,
        events: &[Event],
        now: time::OffsetDateTime,
    ) -> Result<(), PublishError> {
        let mut parts = events.chunks(PART).enumerate();
        let mut sending = FuturesUnordered::new();
        let mut stops: Vec<AbortHandle> = Vec::new();
        let mut failed: Option<(usize, PublishError)> = None;
        loop {
            if failed.is_none()
                && let Some((n, part)) = parts.next()
            {
                let (stop, stoppable) = AbortHandle::new_pair();
                stops.push(stop);
                let items = self.prepare(part, true, now)?;
                sending.push(async move { (n, Abortable::new(self.send(items), stoppable).await) });
                // Polled once without waiting: the new part's send hands its
                // job to the lane, and a part already answered is taken.
                // Then the lane's task may run before the next part is
                // serialized.
                while let Some(Some(sent)) = sending.next().now_or_never() {
                    settle_part(sent, &stops, &mut failed);
                }
                tokio::task::yield_now().await;
                continue;
            }
            match sending.next().await {
                Some(sent) => settle_part(sent, &stops, &mut failed),
                None => break,
            }
        }
        failed.map_or(Ok(()), |(_, e)| Err(e))
    }
}

/// One part of a long call answered (`send_in_parts`): a failure stops the
/// parts after it (their events not yet sent are not sent) and is kept if
/// no earlier part failed, so the call reports its earliest failing part
/// (the events before the one it names were confirmed).
fn settle_part(
    (n, sent): (usize, Result<Result<(), PublishError>, Aborted>),
    stops: &[AbortHandle],
    failed: &mut Option<(usize, PublishError)>,
) {
    let Ok(Err(e)) = sent else {
        return;
    };
    if failed.as_ref().is_none_or(|(first, _)| n < *first) {
        for stop in stops.iter().skip(n + 1) {
            stop.abort();
        }
        *failed = Some((n, e));
    }
}
