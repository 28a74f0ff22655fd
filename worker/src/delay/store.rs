//! The Redis side of the delayed store: `{prefix}delayed` (due messages, score = due time in
//! milliseconds) and `{prefix}delayed:inflight` (claimed, score = lease expiry).

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::results::ResultError;

/// A message waiting for its time, with everything needed to publish it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelayedMessage {
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
pub struct DelayedStore {
    conn: ConnectionManager,
    due_key: String,
    inflight_key: String,
}

impl DelayedStore {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            due_key: format!("{prefix}delayed"),
            inflight_key: format!("{prefix}delayed:inflight"),
        }
    }

    /// Keep `message` until `message.due`.
    pub async fn put(&self, message: &DelayedMessage) -> Result<(), ResultError> {
        let member = encode(message)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .zadd(&self.due_key, member, message.due.timestamp_millis())
            .await?;
        Ok(())
    }

    /// Claim up to `limit` messages due by `now`, leasing them for `lease`.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: usize,
    ) -> Result<Vec<(String, DelayedMessage)>, ResultError> {
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
    pub async fn complete(&self, member: &str) -> Result<(), ResultError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(&self.inflight_key, member).await?;
        Ok(())
    }

    /// Publishing failed: make the message due again right away.
    pub async fn release(&self, member: &str, now: DateTime<Utc>) -> Result<(), ResultError> {
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
    pub async fn recover_expired(&self, now: DateTime<Utc>) -> Result<usize, ResultError> {
        let mut conn = self.conn.clone();
        let n: usize = Script::new(RECOVER)
            .key(&self.due_key)
            .key(&self.inflight_key)
            .arg(now.timestamp_millis())
            .invoke_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// How many messages wait (due later or in flight).
    pub async fn len(&self) -> Result<(u64, u64), ResultError> {
        let mut conn = self.conn.clone();
        let waiting: u64 = conn.zcard(&self.due_key).await?;
        let inflight: u64 = conn.zcard(&self.inflight_key).await?;
        Ok((waiting, inflight))
    }
}

fn encode(message: &DelayedMessage) -> Result<String, ResultError> {
    serde_json::to_string(message).map_err(|source| ResultError::Corrupt {
        id: message.task_id.clone().unwrap_or_default(),
        source,
    })
}
