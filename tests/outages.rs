//! Real outages, injected on purpose: RabbitMQ stopped and started in the middle of a run, Redis
//! shut down and restarted, PostgreSQL stopped under a job that needs it. These tests stop services every other test uses, so they run one at
//! a time (the `SERIAL` lock) in their own test binary — cargo runs test binaries one after
//! another — and each restores its service even when it fails (the `Restore` guards).

mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use lapin::options::BasicPublishOptions;
use redis::AsyncCommands;
use serde_json::{Map, Value};
use worker::wire::OutgoingTask;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs its command when dropped: the service comes back whatever happened in the test.
struct Restore(&'static [&'static str]);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new(self.0[0]).args(&self.0[1..]).status();
    }
}

const RABBIT_START: &[&str] = &["rabbitmqctl", "-q", "start_app"];
const PG_START: &[&str] = &[
    "bash",
    "-c",
    "pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql | head -n1)\" main start",
];
const REDIS_START: &[&str] = &[
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
];

fn run(cmd: &[&str]) {
    let status = Command::new(cmd[0])
        .args(&cmd[1..])
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

async fn publish_pings(queue: &str, n: usize) -> Vec<String> {
    let (_conn, channel) = amqp().await;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let t = OutgoingTask::new("worker.ping", Vec::new(), Map::new());
        let _confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &t.body(),
                task_message(queue, &t).amqp_properties(),
            )
            .await
            .expect("publish");
        ids.push(t.id);
    }
    channel.wait_for_confirms().await.expect("confirms");
    ids
}

/// How many of `ids` have a SUCCESS result; None while Redis does not answer.
async fn successes(ids: &[String]) -> Option<usize> {
    let client = redis::Client::open(REDIS_URL).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let mut n = 0;
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("celery-task-meta-{id}"))
            .collect();
        let values: Vec<Option<String>> = conn.mget(&keys).await.ok()?;
        n += values
            .iter()
            .flatten()
            .filter(|v| serde_json::from_str::<Value>(v).is_ok_and(|d| d["status"] == "SUCCESS"))
            .count();
    }
    Some(n)
}

async fn wait_successes(ids: &[String], at_least: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    let mut seen = 0;
    while start.elapsed() < timeout {
        seen = successes(ids).await.unwrap_or(seen);
        if seen >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

async fn wait_amqp_up() {
    for _ in 0..100 {
        if lapin::Connection::connect(RABBITMQ_URL, Default::default())
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("RabbitMQ did not come back");
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_restart_in_the_middle_of_a_run_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let queue = unique("outage-amqp");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let ids = publish_pings(&queue, 2000).await;
    let before = wait_successes(&ids, 200, Duration::from_secs(30)).await;
    assert!(
        before >= 200,
        "the run started: {before}\n{}",
        worker.logs()
    );

    {
        let _restore = Restore(RABBIT_START);
        run(&["rabbitmqctl", "-q", "stop_app"]);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    wait_amqp_up().await;
    let done = wait_successes(&ids, ids.len(), Duration::from_secs(120)).await;
    assert_eq!(
        done,
        2000,
        "every task SUCCESS after the restart\n{}",
        worker.logs()
    );
    assert!(
        worker.logs().contains("reconnecting") || worker.logs().contains("RabbitMQ is unreachable"),
        "{}",
        worker.logs()
    );
    let (_c, channel) = amqp().await;
    assert_eq!(message_count(&channel, &queue).await, 0);
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_in_the_middle_of_a_run_keeps_every_result() {
    let _serial = SERIAL.lock().await;
    let queue = unique("outage-redis");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[("WORKER_CONCURRENCY", "2")]);
    let base = format!("http://{}", worker.http_addr());
    // 300 x 50 ms on 2 slots is about 7.5 s: the 3 s outage falls in the middle of the run.
    let (_conn, channel) = amqp().await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let t = OutgoingTask::new("worker.sleep", vec![Value::from(0.05)], Map::new());
        publish_task(&channel, &queue, &t).await;
        ids.push(t.id);
    }
    let before = wait_successes(&ids, 20, Duration::from_secs(30)).await;
    assert!(before >= 20, "{}", worker.logs());

    let readyz_during;
    {
        let _restore = Restore(REDIS_START);
        // SAVE keeps what was written before the outage: this Redis keeps nothing on disk
        // otherwise, and a result lost to the restart itself is not what this test is about.
        run(&["redis-cli", "shutdown", "save"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = reqwest::get(format!("{base}/readyz"))
            .await
            .expect("readyz");
        readyz_during = (r.status().as_u16(), r.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let done = wait_successes(&ids, ids.len(), Duration::from_secs(60)).await;
    let _ = std::fs::remove_file("/var/lib/redis/dump.rdb");
    assert_eq!(
        done,
        ids.len(),
        "every result present after Redis came back\n{}",
        worker.logs()
    );
    assert!(
        worker.logs().contains("in RabbitMQ"),
        "results waited in the undelivered-results queue during the outage\n{}",
        worker.logs()
    );
    assert_eq!(readyz_during.0, 503, "{}", readyz_during.1);
    let doc: Value = serde_json::from_str(&readyz_during.1).unwrap();
    assert_eq!(doc["checks"]["redis"]["ok"], false, "{doc}");
    assert_eq!(doc["checks"]["broker"]["ok"], true, "{doc}");
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_means_retry_then_success() {
    let _serial = SERIAL.lock().await;
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    let shift: i32 = sqlx::query_scalar(
        "WITH u AS (INSERT INTO users (telegram_id, first_name, role) VALUES (1, 'A', 'employee') RETURNING id), \
              o AS (INSERT INTO objects (name, owner_id, opening_time, closing_time, hourly_rate) SELECT 'O', id, '09:00', '18:00', 100 FROM u RETURNING id, owner_id) \
         INSERT INTO shifts (user_id, object_id, start_time, end_time, status, hourly_rate) \
         SELECT owner_id, id, now() - interval '3 hours', now(), 'completed', 100.00 FROM o RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let queue = unique("outage-pg");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("DATABASE_URL", db.url.as_str())],
    );

    let t = OutgoingTask::new(
        "core.celery.tasks.shift_tasks.calculate_shift_payment",
        vec![Value::from(shift)],
        Map::new(),
    );
    let retried;
    {
        let _restore = Restore(PG_START);
        run(&[
            "bash",
            "-c",
            "pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql | head -n1)\" main stop",
        ]);
        let (_conn, channel) = amqp().await;
        publish_task(&channel, &queue, &t).await;
        retried = wait_result(&t.id, Some("RETRY"), Duration::from_secs(20)).await;
    }
    let done = wait_result(&t.id, Some("SUCCESS"), Duration::from_secs(90)).await;
    let retried =
        retried.unwrap_or_else(|| panic!("no RETRY while PostgreSQL was down\n{}", worker.logs()));
    assert_eq!(
        retried["result"]["exc_type"], "OperationalError",
        "{retried}"
    );
    let done =
        done.unwrap_or_else(|| panic!("no SUCCESS once PostgreSQL was back\n{}", worker.logs()));
    assert_eq!(done["result"]["total_payment"], "300.00", "{done}");
    assert!(done["retries"].as_u64().unwrap_or(0) >= 1, "{done}");
    assert!(worker.is_alive_now(), "the worker stayed up");
    drop(worker);
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
    db.drop_now().await;
}
