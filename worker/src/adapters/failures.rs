//! The recent failures and retries, kept in Redis so that the status page (`/failures`,
//! `/api/failures`) and `worker failures` still show them after a restart — what Flower loses.
//!
//! One sorted set `{key_prefix}failures`, scored by the time in milliseconds, one JSON entry per
//! member. Bounded three ways: at most [`MAX_ENTRIES`] members (the oldest dropped on each
//! write), nothing older than [`WINDOW`] (trimmed on each write, and the key's TTL is the window
//! so an idle deployment forgets by itself), and each entry's fields cut to a few KiB — the
//! exception text comes from the job and, through its arguments, from whoever sent the message.
//!
//! Writing is fire-and-forget from the executor's failure and retry paths: a slow or absent Redis
//! must never hold up a task's settlement, so each write runs on its own task with a timeout and
//! only logs when it fails.

use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::wire::exception::TaskError;

/// The most entries kept.
pub(crate) const MAX_ENTRIES: isize = 1000;
/// How long an entry is kept.
pub(crate) const WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest exception text kept (bytes; cut at a character boundary).
const MAX_TEXT: usize = 4096;
/// The longest name (task, queue, exception type, worker) kept.
const MAX_NAME: usize = 256;
/// A write that takes longer is abandoned.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What happened to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Failure,
    Retry,
}

/// One failure or retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub at: DateTime<Utc>,
    pub kind: Kind,
    pub task_id: String,
    pub task: String,
    pub queue: String,
    pub worker: String,
    pub retries: u32,
    pub exc_type: String,
    pub exception: String,
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", &text[..end])
}

impl Entry {
    pub(crate) fn new(
        kind: Kind,
        task_id: &str,
        task: &str,
        queue: &str,
        worker: &str,
        retries: u32,
        err: &TaskError,
    ) -> Self {
        let exc_type = if err.exc_module.is_empty() || err.exc_module == "builtins" {
            err.exc_type.clone()
        } else {
            format!("{}.{}", err.exc_module, err.exc_type)
        };
        Self {
            at: Utc::now(),
            kind,
            task_id: cut(task_id, MAX_NAME),
            task: cut(task, MAX_NAME),
            queue: cut(queue, MAX_NAME),
            worker: cut(worker, MAX_NAME),
            retries,
            exc_type: cut(&exc_type, MAX_NAME),
            exception: cut(&err.message, MAX_TEXT),
        }
    }
}

/// The failure log of one deployment (one key prefix).
#[derive(Clone)]
pub(crate) struct FailureLog {
    redis: RedisConn,
    key: String,
}

impl FailureLog {
    pub(crate) fn new(redis: RedisConn, key_prefix: &str) -> Self {
        Self {
            redis,
            key: format!("{key_prefix}failures"),
        }
    }

    /// Record `entry` in the background (see the module doc: never waited for).
    pub(crate) fn note(&self, entry: Entry) {
        let log = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(WRITE_TIMEOUT, log.write(&entry)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "cannot record the failure in Redis"),
                Err(_) => debug!("recording the failure in Redis timed out"),
            }
        });
    }

    /// Record `entry` now: add, trim to the window and the cap, renew the TTL, in one MULTI.
    pub(crate) async fn write(&self, entry: &Entry) -> redis::RedisResult<()> {
        let member = serde_json::to_string(entry).unwrap_or_default();
        let now = entry.at.timestamp_millis();
        let oldest = now.saturating_sub(i64::try_from(WINDOW.as_millis()).unwrap_or(i64::MAX));
        let mut redis = self.redis.clone();
        redis::pipe()
            .atomic()
            .zadd(&self.key, member, now)
            .ignore()
            .zrembyscore(&self.key, "-inf", format!("({oldest}"))
            .ignore()
            .zremrangebyrank(&self.key, 0, -(MAX_ENTRIES + 1))
            .ignore()
            .expire(&self.key, WINDOW.as_secs() as i64)
            .ignore()
            .query_async(&mut redis)
            .await
    }

    /// The entries since `since`, newest first, at most `limit`. Entries that do not parse
    /// (another version's, or written by hand) are skipped.
    pub(crate) async fn since(
        &self,
        since: DateTime<Utc>,
        limit: usize,
    ) -> redis::RedisResult<Vec<Entry>> {
        let limit = isize::try_from(limit.min(MAX_ENTRIES as usize)).unwrap_or(MAX_ENTRIES);
        let mut redis = self.redis.clone();
        let members: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&self.key)
            .arg("+inf")
            .arg(since.timestamp_millis())
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut redis)
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(5000);
        let cut = cut(&text, MAX_TEXT);
        assert!(cut.len() <= MAX_TEXT + "…".len());
        assert!(cut.ends_with('…'));
        assert_eq!(super::cut("short", 10), "short");
    }
}
