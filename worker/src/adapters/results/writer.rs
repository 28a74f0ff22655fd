//! Final results never wait in memory alone.
//!
//! A final result goes to Redis; when Redis does not take it within [`WRITE_DEADLINE`] (down,
//! full, failing over), it is published, with a publisher confirm, to a durable queue of ours —
//! the undelivered-results queue — before the task's message is acked. RabbitMQ then holds it
//! through a worker crash, and every replica's [`undelivered`](super::undelivered) drainer
//! writes it to Redis as soon as Redis answers. If RabbitMQ refuses it too, the task's message
//! is not acked ([`NotWritten`]): it goes back to its queue and the result is produced again
//! later. Nothing is dropped to bound memory, because nothing is kept in memory.
//!
//! A write that Redis does not answer within the deadline counts as failed; one that timed out
//! but did reach Redis is written again by the drainer: the same document, and the store script
//! never overwrites a SUCCESS, so no harm.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{ResultStore, StoreOutcome};
use crate::adapters::broker::publisher::{Declare, Publisher};
use crate::metrics::METRICS;
use crate::wire::{OutgoingMessage, ResultMeta};

/// How long a result write may wait for Redis before the result is queued instead.
pub(crate) const WRITE_DEADLINE: Duration = Duration::from_secs(2);

pub(crate) struct ResultWriter {
    store: ResultStore,
    publisher: Arc<Publisher>,
    /// The undelivered-results queue.
    queue: String,
}

/// What happened to a final result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Stored(StoreOutcome),
    /// In the undelivered-results queue, for a drainer to store.
    Queued,
}

/// Neither Redis nor RabbitMQ took the result: the task's message must not be acked.
#[derive(Debug, thiserror::Error)]
#[error("the result could not be stored (Redis) nor queued for later (RabbitMQ: {broker})")]
pub(crate) struct NotWritten {
    pub broker: String,
}

impl ResultWriter {
    pub(crate) fn new(store: ResultStore, publisher: Arc<Publisher>, queue: &str) -> Arc<Self> {
        Arc::new(Self {
            store,
            publisher,
            queue: queue.to_owned(),
        })
    }

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

    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Write a final result to Redis, or queue it in RabbitMQ if Redis does not take it now.
    pub(crate) async fn write(&self, meta: ResultMeta) -> Result<Written, NotWritten> {
        match tokio::time::timeout(WRITE_DEADLINE, self.store.store(&meta)).await {
            Ok(Ok(outcome)) => return Ok(Written::Stored(outcome)),
            Ok(Err(e)) => {
                warn!(error = %e, task_id = %meta.task_id, queue = %self.queue, "Redis did not take the result; queueing it in RabbitMQ")
            }
            Err(_) => {
                warn!(task_id = %meta.task_id, deadline = ?WRITE_DEADLINE, queue = %self.queue, "Redis did not answer in time; queueing the result in RabbitMQ")
            }
        }
        let message =
            OutgoingMessage::undelivered_result(&self.queue, &meta).map_err(|e| NotWritten {
                broker: format!("the result is not JSON: {e}"),
            })?;
        match self.publisher.publish(&message, Declare::OwnQueue).await {
            Ok(()) => {
                METRICS.results_queued.inc();
                Ok(Written::Queued)
            }
            Err(e) => Err(NotWritten {
                broker: e.to_string(),
            }),
        }
    }

    /// A STARTED or RETRY state: useful, not essential; never queued. The store script keeps
    /// final states, so one that lands after the outcome changes nothing.
    pub(crate) async fn write_transient_state(&self, meta: &ResultMeta) {
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
}
