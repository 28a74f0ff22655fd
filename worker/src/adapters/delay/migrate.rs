//! The upgrade from the Redis delayed store: on startup, every entry left in the old
//! `{prefix}delayed` set (and `{prefix}delayed:inflight`, claimed by a replica that stopped) is
//! published into the delay topology — straight to its queue when it is due within a second —
//! and removed from Redis only after RabbitMQ confirmed it. A failure leaves the entry where it
//! is and the migration is tried again later, so an upgrade loses nothing; two replicas
//! upgrading at the same moment may both publish an entry (at-least-once, as before).

use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{error, info, warn};

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::publisher::{Declare, Publisher};
use crate::adapters::redis_conn::StoreError;
use crate::metrics::METRICS;
use crate::settings::DelayQueueType;
use crate::shutdown::{Phase, Shutdown};
use crate::wire::amqp_value::json_to_table;
use crate::wire::{OutgoingMessage, Properties};

/// Entries read per Redis call.
const BATCH: isize = 200;
/// How long to wait before trying again after Redis or RabbitMQ failed.
const RETRY: Duration = Duration::from_secs(10);
/// The longest member read; the old store wrote bodies of at most a few MiB.
const MAX_MEMBER_BYTES: usize = 64 * 1024 * 1024;

/// An entry of the old store, as the previous release wrote it (JSON).
#[derive(Debug, Deserialize)]
struct LegacyDelayed {
    queue: String,
    task_id: Option<String>,
    due: DateTime<Utc>,
    body: String,
    #[serde(default)]
    headers: Map<String, Value>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    priority: Option<u8>,
}

impl LegacyDelayed {
    /// The message as it came to the old store, addressed to its queue.
    fn original(&self) -> OutgoingMessage {
        let properties = Properties {
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            headers: json_to_table(&self.headers),
            delivery_mode: Some(crate::wire::properties::PERSISTENT),
            priority: self.priority,
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.clone(),
            ..Properties::default()
        };
        OutgoingMessage::republish(&self.queue, self.body.clone().into_bytes(), properties)
    }
}

#[derive(Debug, thiserror::Error)]
enum MigrateError {
    #[error(transparent)]
    Redis(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<redis::RedisError> for MigrateError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(StoreError::from(e))
    }
}

/// Move the old store's entries into RabbitMQ, retrying until done or the worker stops.
pub(crate) async fn run(
    conn: RedisConn,
    prefix: String,
    publisher: std::sync::Arc<Publisher>,
    queue_type: DelayQueueType,
    shutdown: Shutdown,
) {
    let keys = [
        format!("{prefix}delayed:inflight"),
        format!("{prefix}delayed"),
    ];
    loop {
        let mut done = true;
        for key in &keys {
            match migrate_key(&conn, key, &publisher, queue_type).await {
                Ok(0) => {}
                Ok(n) => {
                    info!(key = %key, count = n, "moved entries of the old Redis delayed store into RabbitMQ's delay topology")
                }
                Err(e) => {
                    warn!(key = %key, error = %e, "could not migrate the old Redis delayed store yet; trying again");
                    done = false;
                }
            }
        }
        if done {
            return;
        }
        tokio::select! {
            _ = shutdown.reached(Phase::StopBackground) => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Publish and remove every readable entry of `key`; returns how many moved. Unreadable
/// entries stay (logged), so nothing is deleted that was not published.
async fn migrate_key(
    conn: &RedisConn,
    key: &str,
    publisher: &Publisher,
    queue_type: DelayQueueType,
) -> Result<usize, MigrateError> {
    let mut conn = conn.clone();
    let mut moved = 0usize;
    // Entries skipped as unreadable: the next read starts after them.
    let mut skipped: isize = 0;
    loop {
        let members: Vec<Vec<u8>> = conn
            .zrange(key, skipped, skipped.saturating_add(BATCH - 1))
            .await?;
        if members.is_empty() {
            return Ok(moved);
        }
        for member in members {
            // An entry without a queue would be published nowhere and deleted: not readable.
            let parsed = (member.len() <= MAX_MEMBER_BYTES)
                .then(|| serde_json::from_slice::<LegacyDelayed>(&member).ok())
                .flatten()
                .filter(|e| !e.queue.is_empty());
            let Some(entry) = parsed else {
                error!(
                    key,
                    bytes = member.len(),
                    "an entry of the old delayed store cannot be read; it is left in Redis"
                );
                skipped = skipped.saturating_add(1);
                continue;
            };
            publish(publisher, &entry, queue_type).await?;
            let _: i64 = conn.zrem(key, &member).await?;
            moved += 1;
        }
    }
}

async fn publish(
    publisher: &Publisher,
    entry: &LegacyDelayed,
    queue_type: DelayQueueType,
) -> Result<(), BrokerError> {
    let original = entry.original();
    let wait = (entry.due - Utc::now()).num_seconds();
    // Due within a second (or overdue): to its queue; the consumer waits for the rest.
    match u64::try_from(wait)
        .ok()
        .filter(|w| *w >= 1)
        .and_then(|w| OutgoingMessage::delayed(original.clone(), w).ok())
    {
        Some(delayed) => {
            publisher
                .publish(&delayed, Declare::Delayed(queue_type))
                .await?;
            METRICS
                .messages_delayed
                .with_label_values(&[entry.queue.as_str()])
                .inc();
        }
        None => publisher.publish(&original, Declare::CeleryQueue).await?,
    }
    tracing::debug!(task_id = ?entry.task_id, queue = %entry.queue, "migrated an old delayed entry");
    Ok(())
}
