//! The Redis side of the delayed store: `{prefix}delayed` (due messages, score = due time in
//! milliseconds) and `{prefix}delayed:inflight` (claimed, score = lease expiry).

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::adapters::redis_conn::StoreError;
use crate::wire::amqp_value::{json_to_table, table_to_json};
use crate::wire::{OutgoingMessage, Properties};

/// A message waiting for its time, with everything needed to publish it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DelayedMessage {
    /// Makes identical messages distinct members of the sorted set.
    pub token: String,
    pub queue: String,
    pub task_id: Option<String>,
    pub due: DateTime<Utc>,
    pub body: String,
    pub headers: Map<String, Value>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub priority: Option<u8>,
}

impl DelayedMessage {
    /// A delivery parked until `due`: its body and properties, as they came.
    pub(crate) fn parked(
        queue: &str,
        task_id: &str,
        due: DateTime<Utc>,
        body: &[u8],
        properties: &Properties,
    ) -> Self {
        Self {
            token: uuid::Uuid::new_v4().to_string(),
            queue: queue.to_owned(),
            task_id: Some(task_id.to_owned()),
            due,
            // Parked messages decoded, so their bodies are UTF-8.
            body: String::from_utf8_lossy(body).into_owned(),
            headers: table_to_json(&properties.headers),
            content_type: properties.content_type.clone(),
            content_encoding: properties.content_encoding.clone(),
            correlation_id: properties.correlation_id.clone(),
            reply_to: properties.reply_to.clone(),
            priority: properties.priority,
        }
    }

    /// The message to publish when it is due: back to its queue, as it came.
    pub(crate) fn outgoing(&self) -> OutgoingMessage {
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

const CLAIM: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZADD', KEYS[2], ARGV[2], m)
end
return due
"#;

const RECOVER: &str = r#"
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, m in ipairs(stale) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZADD', KEYS[1], ARGV[1], m)
end
return #stale
"#;

#[derive(Clone)]
pub(crate) struct DelayedStore {
    conn: ConnectionManager,
    due_key: String,
    inflight_key: String,
}

impl DelayedStore {
    pub(crate) fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            due_key: format!("{prefix}delayed"),
            inflight_key: format!("{prefix}delayed:inflight"),
        }
    }

    /// Keep `message` until `message.due`.
    pub(crate) async fn put(&self, message: &DelayedMessage) -> Result<(), StoreError> {
        let member = encode(message)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .zadd(&self.due_key, member, message.due.timestamp_millis())
            .await?;
        Ok(())
    }

    /// Claim up to `limit` messages due by `now`, leasing them for `lease`.
    pub(crate) async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: usize,
    ) -> Result<Vec<(String, DelayedMessage)>, StoreError> {
        let mut conn = self.conn.clone();
        let members: Vec<String> = Script::new(CLAIM)
            .key(&self.due_key)
            .key(&self.inflight_key)
            .arg(now.timestamp_millis())
            .arg((now + lease).timestamp_millis())
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|m| {
                let parsed = serde_json::from_str(&m).ok();
                if parsed.is_none() {
                    tracing::error!(member = %m, "unreadable delayed message left in the in-flight set");
                }
                parsed.map(|d| (m, d))
            })
            .collect())
    }

    /// The claimed message was published: forget it.
    pub(crate) async fn complete(&self, member: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(&self.inflight_key, member).await?;
        Ok(())
    }

    /// Publishing failed: make the message due again right away.
    pub(crate) async fn release(&self, member: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .zrem(&self.inflight_key, member)
            .ignore()
            .zadd(&self.due_key, member, now.timestamp_millis())
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Leases that expired (their replica died mid-publish) become due again.
    pub(crate) async fn recover_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let n: usize = Script::new(RECOVER)
            .key(&self.due_key)
            .key(&self.inflight_key)
            .arg(now.timestamp_millis())
            .invoke_async(&mut conn)
            .await?;
        Ok(n)
    }
}

fn encode(message: &DelayedMessage) -> Result<String, StoreError> {
    serde_json::to_string(message).map_err(|source| StoreError::Corrupt {
        key: message.task_id.clone().unwrap_or_default(),
        source,
    })
}
