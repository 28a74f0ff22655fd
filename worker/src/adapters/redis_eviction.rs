//! What Redis's `maxmemory-policy` means for what the worker keeps there.
//!
//! StaffProBot's design note runs one Redis for the web app's cache and for Celery, with
//! `allkeys-lru`: under memory pressure that policy evicts any key, so nothing that must not be
//! lost is kept in Redis. Delays wait in RabbitMQ's delay topology, a result Redis cannot take
//! waits in a durable RabbitMQ queue, and the scheduler's tick claims and last runs are rows in
//! PostgreSQL; what Redis holds is what an eviction can cost, and this
//! module says it at startup and in `/readyz`, so the choice is the operator's, made knowingly.

use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use tracing::{info, warn};

const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What the worker keeps in Redis, for the messages below: kept in one place so it stays true.
pub(crate) const KEPT_IN_REDIS: &str = "task results (kept for result_expires), revoked task ids";

/// How Redis chooses keys to evict when it reaches `maxmemory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// `noeviction`: a full Redis refuses writes; results then wait in RabbitMQ.
    Never,
    /// `volatile-*`: only keys with an expiry; results have one and may go before it is due.
    KeysWithExpiry(String),
    /// `allkeys-*`: any key.
    AnyKey(String),
    /// Unreadable (`CONFIG` renamed or refused, as managed Redis services do), or a policy this
    /// version does not know.
    Unknown(Option<String>),
}

impl Eviction {
    pub(crate) fn from_policy(policy: &str) -> Self {
        match policy {
            "noeviction" => Self::Never,
            p if p.starts_with("volatile-") => Self::KeysWithExpiry(p.to_owned()),
            p if p.starts_with("allkeys-") => Self::AnyKey(p.to_owned()),
            // Bounded: the name is echoed in /readyz.
            p => Self::Unknown(Some(p.chars().take(32).collect())),
        }
    }

    /// The policy's name, or `unknown`.
    pub(crate) fn policy(&self) -> &str {
        match self {
            Self::Never => "noeviction",
            Self::KeysWithExpiry(p) | Self::AnyKey(p) | Self::Unknown(Some(p)) => p,
            Self::Unknown(None) => "unknown",
        }
    }

    /// One fixed phrase for `/readyz`: what this policy can cost.
    pub(crate) fn risk(&self) -> &'static str {
        match self {
            Self::Never => "none: a full Redis refuses writes and results wait in RabbitMQ",
            Self::KeysWithExpiry(_) => {
                "results may be evicted before they expire under memory pressure"
            }
            Self::AnyKey(_) => "any key may be evicted: results and revoked ids",
            Self::Unknown(_) => "unknown: maxmemory-policy could not be read",
        }
    }

    /// Say at startup what the policy means here.
    pub(crate) fn log(&self) {
        match self {
            Self::Never => info!(
                maxmemory_policy = self.policy(),
                kept_in_redis = KEPT_IN_REDIS,
                "Redis never evicts: a full Redis refuses writes, and results wait in RabbitMQ until it takes them"
            ),
            Self::KeysWithExpiry(_) => info!(
                maxmemory_policy = self.policy(),
                kept_in_redis = KEPT_IN_REDIS,
                "Redis evicts keys with an expiry under memory pressure: a result may be gone before result_expires; delays and undelivered results are in RabbitMQ, the scheduler's state in PostgreSQL"
            ),
            Self::AnyKey(_) => warn!(
                maxmemory_policy = self.policy(),
                kept_in_redis = KEPT_IN_REDIS,
                "Redis may evict any key under memory pressure: a result may be gone before result_expires (AsyncResult then says PENDING), a revoke forgotten by a restarted replica. Delays and undelivered results are in RabbitMQ and the scheduler's state in PostgreSQL, so no task or tick is lost or doubled; give the worker a Redis with noeviction or volatile-lru (docs/deployment.md)"
            ),
            Self::Unknown(_) => info!(
                maxmemory_policy = self.policy(),
                kept_in_redis = KEPT_IN_REDIS,
                "could not read Redis's maxmemory-policy (CONFIG may be disabled); see docs/deployment.md for the recommended setup"
            ),
        }
    }
}

/// Read the policy: `CONFIG GET maxmemory-policy`, within a short deadline.
pub(crate) async fn read(redis: &RedisConn) -> Eviction {
    let mut conn = redis.clone();
    let reply = tokio::time::timeout(
        READ_TIMEOUT,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<Vec<String>>(&mut conn),
    )
    .await;
    match reply {
        Ok(Ok(pair)) => pair
            .get(1)
            .map_or(Eviction::Unknown(None), |p| Eviction::from_policy(p)),
        _ => Eviction::Unknown(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_classified() {
        assert_eq!(Eviction::from_policy("noeviction"), Eviction::Never);
        assert_eq!(
            Eviction::from_policy("allkeys-lru"),
            Eviction::AnyKey("allkeys-lru".into())
        );
        assert_eq!(
            Eviction::from_policy("volatile-ttl"),
            Eviction::KeysWithExpiry("volatile-ttl".into())
        );
        assert_eq!(Eviction::from_policy("x").policy(), "x");
        assert!(
            Eviction::from_policy("allkeys-lfu")
                .risk()
                .contains("evicted")
        );
    }
}
