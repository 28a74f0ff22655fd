//! Durability with the real fault injected: what Redis's eviction policy can cost is said at
//! startup and in `/readyz`, and a result Redis cannot take waits in RabbitMQ, not in memory —
//! through a Redis outage and a SIGKILL of the worker.

mod harness;

use std::time::Duration;

use harness::services::RedisServer;
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
        let redis = RedisServer::start(&["--maxmemory", "8mb", "--maxmemory-policy", policy]);
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

/// Waits until `check` holds, polling every 200 ms, for up to `timeout`.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn results_of_a_redis_outage_survive_a_sigkill_of_the_worker() {
    const TASKS: usize = 50;
    let mut redis = RedisServer::start(&[]);
    let queue = unique("outage-results");
    let undelivered = unique("undelivered");
    let env = [
        ("REDIS_URL", redis.url.clone()),
        ("WORKER_UNDELIVERED_RESULTS_QUEUE", undelivered.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = WorkerProcess::start(std::slice::from_ref(&queue), &env);

    // The fault: Redis goes away, then the tasks come.
    redis.stop();
    let (_conn, channel) = amqp().await;
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let task =
            worker::wire::OutgoingTask::new("worker.echo", vec![n.into()], Default::default());
        ids.push(task.id.clone());
        publish_task(&channel, &queue, &task).await;
    }
    eventually(
        Duration::from_secs(90),
        "every result queued in RabbitMQ",
        || {
            let channel = channel.clone();
            let undelivered = undelivered.clone();
            async move { message_count(&channel, &undelivered).await as usize == TASKS }
        },
    )
    .await;
    assert_eq!(
        message_count(&channel, &queue).await,
        0,
        "every task was acked"
    );
    eventually(
        Duration::from_secs(10),
        "/readyz to show the waiting results",
        || {
            let first = &first;
            async move {
                let body = readyz(first).await;
                body["checks"]["results"]["waiting_for_redis"] == TASKS
                    && body["checks"]["results"]["degraded"] == true
            }
        },
    )
    .await;
    assert_eq!(
        first.logs().matches("task finished").count(),
        TASKS,
        "{}",
        first.logs()
    );

    // The worker dies with nothing in memory to lose; Redis and a new worker come back.
    first.child.kill().expect("SIGKILL the worker");
    let _ = first.child.wait();
    redis.start_again();
    let second = WorkerProcess::start(std::slice::from_ref(&queue), &env);

    let mut conn = redis.connection().await;
    for (n, id) in ids.iter().enumerate() {
        let key = format!("celery-task-meta-{id}");
        let mut stored = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stored.is_none() && std::time::Instant::now() < deadline {
            let raw: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            stored = raw;
            if stored.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let doc: Value =
            serde_json::from_str(&stored.unwrap_or_else(|| panic!("no result for task {n}")))
                .expect("result is JSON");
        assert_eq!(doc["status"], "SUCCESS", "{doc}");
        assert_eq!(doc["result"]["args"], serde_json::json!([n]), "{doc}");
    }
    eventually(
        Duration::from_secs(10),
        "the undelivered queue to drain",
        || {
            let channel = channel.clone();
            let undelivered = undelivered.clone();
            async move { message_count(&channel, &undelivered).await == 0 }
        },
    )
    .await;
    // Each task ran once: all in the first worker, none again in the second.
    assert_eq!(
        second.logs().matches("task finished").count(),
        0,
        "{}",
        second.logs()
    );
    delete_queue(&channel, &undelivered).await;
    delete_queue(&channel, &format!("{undelivered}.dead")).await;
    delete_queue(&channel, &queue).await;
}
