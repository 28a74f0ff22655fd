//! Invalidating the web app's Redis cache after a job changed what it shows.
//!
//! Single keys (`shift:{id}`, `active_shifts:{user_id}`) are unlinked directly; key families
//! (`calendar_shifts:*`, ...) are found with `SCAN` (never `KEYS`, which blocks Redis for the
//! whole keyspace walk) and unlinked in batches. `UNLINK` frees memory off the main thread.
//!
//! Invalidation runs after the database commit. If Redis fails there, the change stands and the
//! cache entries age out by their TTL (at most 10 minutes, spec section 5): jobs report the failure
//! in their `errors` instead of failing, because a retry would find nothing left to invalidate.

use std::collections::BTreeSet;

use redis::aio::ConnectionManager;

use crate::Context;

/// Keys asked for per `SCAN` step and unlinked per `UNLINK`.
pub const BATCH: usize = 1000;

/// A set of keys and key patterns to drop, collected while a job runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invalidation {
    keys: BTreeSet<String>,
    patterns: BTreeSet<&'static str>,
}

impl Invalidation {
    /// Nothing to drop yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drop this key (name without the context's prefix).
    pub fn key(&mut self, key: String) -> &mut Self {
        self.keys.insert(key);
        self
    }

    /// Drop every key matching this `SCAN MATCH` pattern (without the context's prefix).
    pub fn pattern(&mut self, pattern: &'static str) -> &mut Self {
        self.patterns.insert(pattern);
        self
    }

    /// Whether there is anything to drop.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty()
    }

    /// Drops everything collected; returns how many keys existed and were unlinked.
    pub async fn run(&self, ctx: &Context) -> Result<u64, redis::RedisError> {
        let mut conn = ctx.redis();
        let keys: Vec<String> = self.keys.iter().map(|k| ctx.redis_key(k)).collect();
        let mut deleted = unlink(&mut conn, &keys).await?;
        for pattern in &self.patterns {
            deleted += delete_matching(&mut conn, &ctx.redis_key(pattern)).await?;
        }
        Ok(deleted)
    }
}

/// Unlinks `keys` (full names) in batches; returns how many existed.
pub async fn unlink(
    conn: &mut ConnectionManager,
    keys: &[String],
) -> Result<u64, redis::RedisError> {
    let mut deleted = 0;
    for chunk in keys.chunks(BATCH) {
        let n: u64 = redis::cmd("UNLINK").arg(chunk).query_async(conn).await?;
        deleted += n;
    }
    Ok(deleted)
}

/// Unlinks every key matching `pattern` (a full `SCAN MATCH` pattern), batch by batch as `SCAN`
/// returns them; returns how many were unlinked.
pub async fn delete_matching(
    conn: &mut ConnectionManager,
    pattern: &str,
) -> Result<u64, redis::RedisError> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        deleted += unlink(conn, &keys).await?;
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
