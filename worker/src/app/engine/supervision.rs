//! A queue's worker that ends while the service runs is fatal, and visible.
//!
//! Each delivery is isolated (see the executor), so an apalis worker should never end before
//! the shutdown. If one does anyway — a panic outside a delivery, an apalis error — its queue
//! would silently stop consuming while the others go on and `/readyz` says ok. Instead the
//! queue is recorded as stopped (so `/readyz` answers 503 naming it), the shutdown begins, and
//! the process exits non-zero, so a supervisor restarts it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing::error;

use crate::shutdown::{Phase, Shutdown};

/// The queues whose worker stopped, with why.
#[derive(Default)]
pub(crate) struct QueueHealth {
    stopped: Mutex<BTreeMap<String, String>>,
}

impl QueueHealth {
    /// Record that `worker` (apalis's name, `queue:<name>`) ended; begins the shutdown if the
    /// service was running.
    pub(crate) fn worker_ended(&self, worker: &str, why: &str, shutdown: &Shutdown) {
        if shutdown.phase() != Phase::Running {
            return;
        }
        let queue = worker.strip_prefix("queue:").unwrap_or(worker).to_owned();
        error!(queue = %queue, reason = %why, "the consumer of queue {queue} stopped; the worker stops and exits non-zero");
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue, why.to_owned());
        shutdown.begin();
    }

    /// Queues whose worker stopped, with the reason.
    pub(crate) fn stopped(&self) -> BTreeMap<String, String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
