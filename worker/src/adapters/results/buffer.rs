//! Results survive a Redis outage: the seed's "graceful degradation".
//!
//! Jobs keep running while Redis is down; a final result that cannot be written goes into a
//! bounded in-memory buffer, in order, and a flusher writes the buffer out as soon as Redis
//! answers again. When the buffer is full the oldest result is dropped and counted, with a
//! warning: memory stays bounded and the newest outcomes win.
//!
//! A write that Redis does not answer within [`WRITE_DEADLINE`] counts as failed. Without the
//! deadline a task would wait out the connection manager's reconnect attempts (many seconds)
//! while holding its slot; with it, jobs keep running through an outage. A result that timed out
//! but did reach Redis is written again from the buffer: the same document, so no harm.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::{ResultStore, StoreOutcome};
use crate::shutdown::{Phase, Shutdown};
use crate::wire::ResultMeta;

/// How long a result write may wait for Redis before the result is buffered instead.
pub(crate) const WRITE_DEADLINE: Duration = Duration::from_secs(2);

pub(crate) struct ResultWriter {
    store: ResultStore,
    buffer: Mutex<VecDeque<ResultMeta>>,
    capacity: usize,
    dropped: AtomicU64,
}

/// What happened to a final result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Stored(StoreOutcome),
    Buffered,
}

impl ResultWriter {
    pub(crate) fn new(store: ResultStore, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            buffer: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        })
    }

    /// Write a final result now, or buffer it if Redis does not answer.
    pub(crate) async fn write(&self, meta: ResultMeta) -> Written {
        // Behind buffered results, a new one waits its turn so that order is kept per task.
        if self.buffered() == 0 {
            match tokio::time::timeout(WRITE_DEADLINE, self.store.store(&meta)).await {
                Ok(Ok(outcome)) => return Written::Stored(outcome),
                Ok(Err(e)) => {
                    warn!(error = %e, task_id = %meta.task_id, "Redis unavailable; buffering the result")
                }
                Err(_) => {
                    warn!(task_id = %meta.task_id, deadline = ?WRITE_DEADLINE, "Redis did not answer in time; buffering the result")
                }
            }
        }
        self.push(meta);
        Written::Buffered
    }

    /// A STARTED or RETRY state: useful, not essential; never buffered.
    pub(crate) async fn write_transient_state(&self, meta: &ResultMeta) {
        if self.buffered() > 0 {
            return;
        }
        match tokio::time::timeout(WRITE_DEADLINE, self.store.store(meta)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, status = meta.status.as_str(), "could not store an intermediate state")
            }
            Err(_) => {
                warn!(status = meta.status.as_str(), deadline = ?WRITE_DEADLINE, "Redis did not answer in time; intermediate state not stored")
            }
        }
    }

    /// The store underneath (for the chord state next to the results).
    pub(crate) fn store(&self) -> &ResultStore {
        &self.store
    }

    /// The stored document as raw JSON (None while PENDING), within [`WRITE_DEADLINE`]; used
    /// only for redelivered messages, so first deliveries pay nothing.
    pub(crate) async fn stored(&self, task_id: &str) -> Result<Option<serde_json::Value>, String> {
        match tokio::time::timeout(WRITE_DEADLINE, self.store.get_raw(task_id)).await {
            Ok(Ok(doc)) => Ok(doc),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("Redis did not answer within {WRITE_DEADLINE:?}")),
        }
    }

    fn push(&self, meta: ResultMeta) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() >= self.capacity
            && let Some(old) = buffer.pop_front()
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(task_id = %old.task_id, dropped_total = dropped, capacity = self.capacity, "result buffer full; dropped the oldest result");
        }
        buffer.push_back(meta);
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffer.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Write out buffered results in order until the buffer is empty or Redis fails again.
    pub(crate) async fn flush(&self) -> usize {
        let mut written = 0;
        loop {
            let next = {
                let buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
                buffer.front().cloned()
            };
            let Some(meta) = next else { return written };
            if self.store.store(&meta).await.is_err() {
                return written;
            }
            let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            if buffer
                .front()
                .is_some_and(|m| m.task_id == meta.task_id && m.status == meta.status)
            {
                buffer.pop_front();
            }
            written += 1;
        }
    }

    /// Flush every second until the background loops stop, then once more.
    pub(crate) async fn run_flusher(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.reached(Phase::StopBackground) => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if self.buffered() > 0 {
                let n = self.flush().await;
                if n > 0 {
                    info!(
                        written = n,
                        still_buffered = self.buffered(),
                        "wrote buffered results to Redis"
                    );
                }
            }
        }
        let n = self.flush().await;
        let left = self.buffered();
        if left > 0 {
            warn!(
                written = n,
                lost = left,
                "Redis still unavailable at exit; buffered results are lost (their tasks ran)"
            );
        }
    }
}
