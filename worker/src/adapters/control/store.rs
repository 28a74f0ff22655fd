//! Revoked ids in Redis, so that they outlive a replica's restart and reach replicas that
//! start later: one sorted set `{prefix}revoked`, member = task id, score = when it is forgotten
//! (Unix milliseconds).
//!
//! The bounds are the in-memory ones (`app::control::revoked`): each id lives
//! [`REVOKE_EXPIRES`] (three hours) and the set keeps the [`MAX_REVOKED`] (50,000) latest; every
//! write trims expired and surplus members and sets the key's own expiry, so an idle key goes
//! away by itself. A Redis whose eviction policy drops the key (the seed's `allkeys-lru`) loses
//! the durability, not the revokes the running replicas hold in memory.

use crate::adapters::redis_conn::RedisConn;
use chrono::{DateTime, TimeZone, Utc};

use crate::adapters::redis_conn::StoreError;
use crate::app::control::revoked::{MAX_REVOKED, REVOKE_EXPIRES};

#[derive(Clone)]
pub(crate) struct RevokedStore {
    conn: RedisConn,
    key: String,
}

impl RevokedStore {
    pub(crate) fn new(conn: RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            key: format!("{prefix}revoked"),
        }
    }

    /// Keep `ids` until `until`, trimming what has expired or is beyond the bound.
    pub(crate) async fn add(
        &self,
        ids: &[String],
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let score = until.timestamp_millis();
        let members: Vec<(i64, &str)> = ids.iter().map(|id| (score, id.as_str())).collect();
        let keep = i64::try_from(MAX_REVOKED).unwrap_or(i64::MAX);
        let ttl_ms = i64::try_from(REVOKE_EXPIRES.as_millis()).unwrap_or(i64::MAX);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .zadd_multiple(&self.key, &members)
            .ignore()
            .zrembyscore(&self.key, "-inf", now.timestamp_millis())
            .ignore()
            .zremrangebyrank(&self.key, 0, -(keep + 1) as isize)
            .ignore()
            .pexpire(&self.key, ttl_ms)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The ids still revoked at `now`, with when each is forgotten (at most [`MAX_REVOKED`]).
    pub(crate) async fn load(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.key)
            .arg(format!("({}", now.timestamp_millis()))
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_REVOKED)
            .query_async(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, ms)| Utc.timestamp_millis_opt(ms).single().map(|t| (id, t)))
            .collect())
    }
}
