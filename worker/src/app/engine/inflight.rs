//! The tasks this worker holds right now, and the handle that cancels each one.
//!
//! The executor enters every decoded task here ([`Inflight::enter`]) and the returned
//! [`InflightGuard`] leaves when the delivery is done, whatever path it took. In between the
//! task is *reserved* (received, not running), *scheduled* (its eta is waited for in memory)
//! or *active* (running). Remote control reads this for `active`, `reserved`, `scheduled`,
//! `query_task` and `stats`, and `revoke(terminate=True)` cancels a task through its
//! [`CancellationToken`]: the executor's run of that task ends at once (the job's future is
//! dropped, so a job waiting on I/O or a timer stops there) and the task is stored REVOKED.
//!
//! Entries are as many as deliveries in flight (bounded by the prefetch); each holds the
//! decoded message behind an `Arc`, so entering copies nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::wire::TaskMessage;

/// Where a held task is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    Reserved,
    Scheduled {
        eta: DateTime<Utc>,
    },
    /// Running since this Unix time (seconds), Celery's `time_start`.
    Active {
        since: f64,
    },
}

/// One held task, as the control commands see it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub message: Arc<TaskMessage>,
    pub queue: String,
    pub redelivered: bool,
    pub priority: Option<u8>,
    pub phase: Phase,
}

struct Entry {
    held: Held,
    abort: CancellationToken,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Tasks started since the process began, by name (Celery's `stats()["total"]`); the names
    /// are registered ones only, so the map is bounded by the registry.
    total: HashMap<String, u64>,
}

/// The registry of held tasks; one per worker, shared by the executor and remote control.
#[derive(Default)]
pub(crate) struct Inflight {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

impl Inflight {
    /// Hold `message` (received from `queue`) until the guard is dropped.
    pub(crate) fn enter(
        self: &Arc<Self>,
        message: &Arc<TaskMessage>,
        queue: &str,
        redelivered: bool,
        priority: Option<u8>,
    ) -> InflightGuard {
        let slot = self.next.fetch_add(1, Ordering::Relaxed);
        let abort = CancellationToken::new();
        let held = Held {
            message: Arc::clone(message),
            queue: queue.to_owned(),
            redelivered,
            priority,
            phase: Phase::Reserved,
        };
        self.lock().entries.insert(
            slot,
            Entry {
                held,
                abort: abort.clone(),
            },
        );
        InflightGuard {
            registry: Arc::clone(self),
            slot,
            abort,
        }
    }

    /// Every held task (at most the prefetch).
    pub(crate) fn snapshot(&self) -> Vec<Held> {
        self.lock()
            .entries
            .values()
            .map(|e| e.held.clone())
            .collect()
    }

    /// Cancel every held run of `task_id`; returns whether one was held.
    pub(crate) fn terminate(&self, task_id: &str) -> bool {
        let inner = self.lock();
        let mut found = false;
        for e in inner
            .entries
            .values()
            .filter(|e| e.held.message.id == task_id)
        {
            e.abort.cancel();
            found = true;
        }
        found
    }

    /// Whether `task_id` is running here now.
    pub(crate) fn is_active(&self, task_id: &str) -> bool {
        self.lock()
            .entries
            .values()
            .any(|e| e.held.message.id == task_id && matches!(e.held.phase, Phase::Active { .. }))
    }

    /// Tasks started since the process began, by name.
    pub(crate) fn totals(&self) -> HashMap<String, u64> {
        self.lock().total.clone()
    }

    fn set_phase(&self, slot: u64, phase: Phase) {
        let mut inner = self.lock();
        let Inner { entries, total } = &mut *inner;
        if let Some(e) = entries.get_mut(&slot) {
            if matches!(phase, Phase::Active { .. }) {
                let n = total.entry(e.held.message.task.clone()).or_default();
                *n = n.saturating_add(1);
            }
            e.held.phase = phase;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned map is still a consistent map.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A task's place in the registry; leaving it (drop) removes the task.
pub(crate) struct InflightGuard {
    registry: Arc<Inflight>,
    slot: u64,
    abort: CancellationToken,
}

impl InflightGuard {
    pub(crate) fn scheduled(&self, eta: DateTime<Utc>) {
        self.registry.set_phase(self.slot, Phase::Scheduled { eta });
    }

    pub(crate) fn active(&self) {
        let since = Utc::now().timestamp_micros() as f64 / 1e6;
        self.registry.set_phase(self.slot, Phase::Active { since });
    }

    /// Cancelled by `revoke(terminate=True)`.
    pub(crate) fn abort(&self) -> &CancellationToken {
        &self.abort
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.registry.lock().entries.remove(&self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_held_while_their_guard_lives_and_can_be_cancelled() {
        let inflight = Arc::new(Inflight::default());
        let m = Arc::new(TaskMessage::minimal("t1", Some("worker.sleep")));
        let guard = inflight.enter(&m, "q", false, None);
        assert!(!inflight.is_active("t1"));
        guard.active();
        assert!(inflight.is_active("t1"));
        assert!(!inflight.terminate("other"));
        assert!(inflight.terminate("t1"));
        assert!(guard.abort().is_cancelled());
        assert_eq!(inflight.totals().get("worker.sleep"), Some(&1));
        drop(guard);
        assert!(inflight.snapshot().is_empty());
    }
}
