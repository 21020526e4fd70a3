//! One endpoint's per-event failure lines (retrying, dropped,
//! dead-lettered), each kind logged with backoff.

use common::logging::Throttle;
use std::sync::Mutex;
use std::time::Duration;

/// One endpoint's per-event failure lines, each kind logged with backoff:
/// an endpoint that is down fails every event, and a line per event would
/// flood the log. Each line says how many it stands for.
#[derive(Debug)]
pub struct FailureLines {
    retrying: Mutex<Throttle>,
    dropped: Mutex<Throttle>,
    dead_lettered: Mutex<Throttle>,
}

impl Default for FailureLines {
    fn default() -> Self {
        Self::new()
    }
}

impl FailureLines {
    /// Fresh throttles (one line per second at first, then less often, up to one a minute).
    pub fn new() -> Self {
        let throttle = || {
            Mutex::new(Throttle::new(
                Duration::from_secs(1),
                Duration::from_secs(60),
            ))
        };
        Self {
            retrying: throttle(),
            dropped: throttle(),
            dead_lettered: throttle(),
        }
    }

    pub(super) fn retrying(&self) -> Option<u64> {
        hit(&self.retrying)
    }

    pub(super) fn dropped(&self) -> Option<u64> {
        hit(&self.dropped)
    }

    pub(super) fn dead_lettered(&self) -> Option<u64> {
        hit(&self.dead_lettered)
    }
}

fn hit(throttle: &Mutex<Throttle>) -> Option<u64> {
    throttle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .hit()
}
