//! Reading and writing `celery-task-meta-<id>`.
//!
//! A write is one Lua script: read the key, refuse to replace a SUCCESS (Celery never overwrites
//! one; a redelivered message must not turn a success into STARTED again), refuse to replace any
//! final state (SUCCESS, FAILURE, REVOKED) with a STARTED or RETRY, then `SETEX` and `PUBLISH`
//! the same JSON. The second rule is what lets the executor send STARTED without waiting for it:
//! a STARTED (or a late RETRY) that reaches Redis after the task's outcome changes nothing. Celery uses `MULTI SETEX PUBLISH EXEC`; a MULTI cannot make the
//! write depend on the current value, a script can, and both run atomically. The PUBLISH is not
//! optional: Python's `.get()` waits on the key's channel and never re-reads the key.

use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use futures::StreamExt;
use redis::{AsyncCommands, Script};

use crate::adapters::redis_conn::{self, RedisConnectError, StoreError};
use crate::wire::ResultMeta;

/// KEYS[1] the result key; ARGV[1] the document, ARGV[2] its expiry in seconds, ARGV[3] "1" when
/// the document is an intermediate state (STARTED, RETRY). Returns 1 written, 0 kept a SUCCESS,
/// 2 kept another final state. The stored document's own `status` field decides (decoded with
/// cjson): a substring search would also match the text in a task's stored arguments. A value
/// that is not a result document is replaced. Public so the benchmarks time exactly this script.
pub const STORE_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  local status = ok and type(doc) == 'table' and doc['status'] or nil
  if status == 'SUCCESS' then
    return 0
  end
  if ARGV[3] == '1' and (status == 'FAILURE' or status == 'REVOKED') then
    return 2
  end
end
redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// Errors of the result backend.
pub type ResultError = StoreError;

/// What a store call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Written,
    /// A SUCCESS was already there and was kept.
    KeptSuccess,
    /// An intermediate state arrived after a FAILURE or REVOKED, which was kept.
    KeptFinal,
}

/// Handle on the result keys; cheap to clone.
#[derive(Clone)]
pub struct ResultStore {
    conn: RedisConn,
    prefix: String,
    expires: u64,
    script: Script,
}

impl ResultStore {
    /// Connect to the Redis at `url` (three attempts) for results under `prefix`.
    pub async fn connect(url: &str, prefix: &str, expires: u64) -> Result<Self, RedisConnectError> {
        let conn = redis_conn::connect(&redis_conn::RedisTarget::plain(url), Some(3)).await?;
        Ok(Self::new(conn, prefix, expires))
    }

    pub fn new(conn: RedisConn, prefix: &str, expires: u64) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            expires,
            script: Script::new(STORE_SCRIPT),
        }
    }

    /// The key (and PUBLISH channel) of a task's result.
    pub fn key(&self, task_id: &str) -> String {
        format!("{}celery-task-meta-{task_id}", self.prefix)
    }

    /// Celery's `global_keyprefix` (`RESULT_KEY_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Seconds a result is kept (`RESULT_EXPIRES`).
    pub fn expires(&self) -> u64 {
        self.expires
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    pub async fn store(&self, meta: &ResultMeta) -> Result<StoreOutcome, ResultError> {
        let json = serde_json::to_string(meta).map_err(|source| StoreError::Corrupt {
            key: meta.task_id.clone(),
            source,
        })?;
        let mut conn = self.conn.clone();
        let written: i64 = self
            .script
            .key(self.key(&meta.task_id))
            .arg(json)
            .arg(self.expires)
            .arg(if meta.status.is_ready() { "0" } else { "1" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match written {
            1 => StoreOutcome::Written,
            0 => StoreOutcome::KeptSuccess,
            _ => StoreOutcome::KeptFinal,
        })
    }

    /// The stored document, or None while the task is PENDING (or its result expired).
    pub async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, ResultError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(self.key(task_id)).await?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|source| StoreError::Corrupt {
                key: task_id.to_owned(),
                source,
            })
        })
        .transpose()
    }

    /// The stored document as raw JSON, exactly as written (for HTTP and `--json`).
    pub async fn get_raw(&self, task_id: &str) -> Result<Option<serde_json::Value>, ResultError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = conn.get(self.key(task_id)).await?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|source| StoreError::Corrupt {
                key: task_id.to_owned(),
                source,
            })
        })
        .transpose()
    }

    /// Wait until the task is ready (SUCCESS, FAILURE, REVOKED) or `timeout` passes; returns the
    /// last state seen. Subscribes before reading, as Celery's client does, so no PUBLISH is missed.
    pub async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<ResultMeta>, ResultError> {
        let mut pubsub = self.conn.client().get_async_pubsub().await?;
        pubsub.subscribe(self.key(task_id)).await?;
        let mut last = self.get(task_id).await?;
        if last.as_ref().is_some_and(|m| m.status.is_ready()) {
            return Ok(last);
        }
        // A timeout too far to add to the clock waits for ever, which is what it asked for.
        let deadline = tokio::time::Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| {
                tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400)
            });
        let mut messages = pubsub.on_message();
        // The periodic re-read covers a Redis reconnect that would drop the subscription.
        let mut reread = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(last),
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(last) };
                    let payload: String = msg.get_payload()?;
                    if let Ok(meta) = serde_json::from_str::<ResultMeta>(&payload) {
                        let ready = meta.status.is_ready();
                        last = Some(meta);
                        if ready { return Ok(last); }
                    }
                }
                _ = reread.tick() => {
                    if let Some(meta) = self.get(task_id).await? {
                        let ready = meta.status.is_ready();
                        last = Some(meta);
                        if ready { return Ok(last); }
                    }
                }
            }
        }
    }
}
