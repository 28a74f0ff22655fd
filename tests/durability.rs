//! Durability with the real fault injected: what Redis's eviction policy can cost is said at
//! startup and in `/readyz`, and a result Redis cannot take waits in RabbitMQ, not in memory —
//! through a Redis outage and a SIGKILL of the worker.

mod harness;

use std::time::Duration;

use harness::services::PrivateRedis;
use harness::*;
use serde_json::Value;

async fn readyz(worker: &WorkerProcess) -> Value {
    reqwest::get(format!("http://{}/readyz", worker.http_addr()))
        .await
        .expect("GET /readyz")
        .json()
        .await
        .expect("/readyz is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eviction_policy_is_reported_at_startup_and_in_readyz() {
    for (policy, says) in [
        ("allkeys-lru", "may evict any key"),
        ("noeviction", "Redis never evicts"),
    ] {
        let redis = PrivateRedis::start(&["--maxmemory", "8mb", "--maxmemory-policy", policy]);
        let queue = unique("evict-policy");
        let worker = WorkerProcess::start(
            std::slice::from_ref(&queue),
            &[("REDIS_URL", redis.url.as_str())],
        );
        worker.wait_for_log(says, Duration::from_secs(5));
        let body = readyz(&worker).await;
        assert_eq!(
            body["checks"]["redis"]["maxmemory_policy"], policy,
            "{body}"
        );
        let risk = body["checks"]["redis"]["eviction_risk"]
            .as_str()
            .unwrap_or("");
        assert_eq!(
            risk.contains("evicted"),
            policy.starts_with("allkeys"),
            "{body}"
        );
    }
}
