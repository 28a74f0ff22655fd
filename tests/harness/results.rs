//! Redis for tests: the shared connection and Celery's result documents.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::Value;

use super::REDIS_URL;

pub async fn redis() -> ConnectionManager {
    let client = redis::Client::open(REDIS_URL).expect("redis url");
    ConnectionManager::new(client)
        .await
        .expect("Redis must run on 127.0.0.1:6379")
}

/// The worker's own Redis handle (what the scheduler takes), on the shared Redis.
#[allow(dead_code)]
pub async fn worker_redis() -> worker::RedisConn {
    worker::results::ResultStore::connect(REDIS_URL, "", 60)
        .await
        .expect("Redis must run on 127.0.0.1:6379")
        .connection()
}

/// The stored result document of `id`, waiting up to `timeout` for `status` (any if None).
pub async fn wait_result(id: &str, status: Option<&str>, timeout: Duration) -> Option<Value> {
    let mut conn = redis().await;
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        let raw: Option<String> = conn
            .get(format!("celery-task-meta-{id}"))
            .await
            .expect("GET");
        if let Some(raw) = raw {
            let v: Value = serde_json::from_str(&raw).expect("result is JSON");
            if status.is_none_or(|s| v["status"] == s) {
                return Some(v);
            }
            last = Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}
