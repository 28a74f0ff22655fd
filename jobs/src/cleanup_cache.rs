//! cleanup-cache (`core.celery.tasks.analytics_tasks.cleanup_cache`, every 6 h): delete the
//! analytics cache (`analytics:*`) and report the state of Redis — the figures the admin "cache
//! stats" page wants (hit rate, memory, keys by family).
//!
//! Keys are found with `SCAN` and deleted with `UNLINK` in batches, never `KEYS`. The key counts
//! come from one more `SCAN` pass over the (prefixed) keyspace; `SCAN` may return a key twice
//! while Redis rehashes, so they are a close estimate, which is all a dashboard needs.
//!
//! This deletes every `analytics:*` key, including the 30-day monthly metrics cache: the job's
//! definition (and the Python original) is "clear the analytics cache"; the metrics are rebuilt
//! by `calculate_monthly_metrics` on the next request.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cache::{BATCH, delete_matching};
use crate::{Context, JobError};

/// No arguments.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CleanupCacheArgs {}

impl CleanupCacheArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &[];
}

/// `{redis_stats, key_counts, deleted}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanupCacheReport {
    /// From `INFO`.
    pub redis_stats: RedisStats,
    /// Keys by family, after deletion.
    pub key_counts: KeyCounts,
    /// `analytics:*` keys unlinked.
    pub deleted: u64,
}

/// The `INFO` figures the cache page shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedisStats {
    /// Clients connected.
    pub connected_clients: u64,
    /// Bytes used.
    pub used_memory: u64,
    /// The same, for people (`1.5M`).
    pub used_memory_human: String,
    /// Commands since start.
    pub total_commands_processed: u64,
    /// Successful lookups.
    pub keyspace_hits: u64,
    /// Failed lookups.
    pub keyspace_misses: u64,
    /// hits / (hits + misses), in percent with 2 decimals; 0 without lookups.
    pub hit_rate: f64,
    /// Keys evicted by `maxmemory`.
    pub evicted_keys: u64,
    /// `maxmemory-policy` (production: `allkeys-lru`).
    pub maxmemory_policy: String,
}

/// Keys per family of the web app's cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyCounts {
    /// `user:{id}`.
    pub user: u64,
    /// `object:{id}`.
    pub object: u64,
    /// `shift:{id}`.
    pub shift: u64,
    /// `active_shifts:{user_id}`.
    pub active_shifts: u64,
    /// `user_objects:{user_id}`.
    pub user_objects: u64,
    /// `analytics:*`, after deletion.
    pub analytics: u64,
    /// Every key (under the context's prefix).
    pub total: u64,
}

/// Runs cleanup-cache.
pub async fn cleanup_cache(ctx: &Context) -> Result<CleanupCacheReport, JobError> {
    let mut conn = ctx.redis();
    let deleted = delete_matching(&mut conn, &ctx.redis_key("analytics:*")).await?;
    let info: String = redis::cmd("INFO").query_async(&mut conn).await?;
    let redis_stats = parse_info(&info);
    let key_counts = count_keys(ctx).await?;
    tracing::info!(deleted, total_keys = key_counts.total, "cleanup-cache done");
    Ok(CleanupCacheReport {
        redis_stats,
        key_counts,
        deleted,
    })
}

async fn count_keys(ctx: &Context) -> Result<KeyCounts, JobError> {
    let mut conn = ctx.redis();
    let prefix = ctx.redis_key("");
    let pattern = format!("{prefix}*");
    let mut counts = KeyCounts::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await?;
        for key in &keys {
            let name = key.strip_prefix(&prefix).unwrap_or(key);
            counts.total += 1;
            let family = [
                ("active_shifts:", &mut counts.active_shifts),
                ("user_objects:", &mut counts.user_objects),
                ("user:", &mut counts.user),
                ("object:", &mut counts.object),
                ("shift:", &mut counts.shift),
                ("analytics:", &mut counts.analytics),
            ]
            .into_iter()
            .find(|(family, _)| name.starts_with(family));
            if let Some((_, count)) = family {
                *count += 1;
            }
        }
        if next == 0 {
            return Ok(counts);
        }
        cursor = next;
    }
}

/// Reads the fields we report from `INFO`'s `key:value` lines.
fn parse_info(info: &str) -> RedisStats {
    let fields: HashMap<&str, &str> = info
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .collect();
    let number = |name: &str| {
        fields
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let text = |name: &str| {
        fields
            .get(name)
            .map(|v| (*v).to_owned())
            .unwrap_or_default()
    };
    let hits = number("keyspace_hits");
    let misses = number("keyspace_misses");
    let hit_rate = if hits + misses == 0 {
        0.0
    } else {
        (hits as f64 * 10_000.0 / (hits + misses) as f64).round() / 100.0
    };
    RedisStats {
        connected_clients: number("connected_clients"),
        used_memory: number("used_memory"),
        used_memory_human: text("used_memory_human"),
        total_commands_processed: number("total_commands_processed"),
        keyspace_hits: hits,
        keyspace_misses: misses,
        hit_rate,
        evicted_keys: number("evicted_keys"),
        maxmemory_policy: text("maxmemory_policy"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_info;

    #[test]
    fn parses_info_and_rounds_the_hit_rate() {
        let info = "# Clients\r\nconnected_clients:3\r\n# Memory\r\nused_memory:1024\r\n\
                    used_memory_human:1.00K\r\nmaxmemory_policy:allkeys-lru\r\n# Stats\r\n\
                    total_commands_processed:99\r\nkeyspace_hits:2\r\nkeyspace_misses:1\r\n\
                    evicted_keys:0\r\n";
        let stats = parse_info(info);
        assert_eq!(stats.connected_clients, 3);
        assert_eq!(stats.used_memory, 1024);
        assert_eq!(stats.used_memory_human, "1.00K");
        assert_eq!(stats.maxmemory_policy, "allkeys-lru");
        assert_eq!(stats.total_commands_processed, 99);
        assert_eq!(stats.hit_rate, 66.67);
    }
}
