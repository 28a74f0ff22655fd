//! Delays live in RabbitMQ (issue 13, items 1 and 4): far etas, countdowns and retry backoff
//! wait in Celery 5.5+'s native delay topology, declared as kombu 5.7 declares it, so they
//! survive a Redis that evicts everything and a RabbitMQ restart; Python Celery producers and
//! workers with quorum queues share that topology with us; the old Redis delayed set is
//! migrated at startup; and an expiry is checked again when a delayed task's eta arrives.
//!
//! Fault tests use private services (scripts/services/), never the shared ones; tests on the
//! shared broker use their own queues and leave the global `celery_delayed_*` names alone.

mod harness;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use harness::services::{RabbitNode, RedisServer};
use harness::*;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::{Map, Value, json};
use worker::wire::OutgoingTask;

async fn channel_on(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, channel)
}

/// Publish `worker.ping` tasks with the given eta to `queue` (default exchange), as a Python
/// producer without native delays does; returns their ids.
async fn publish_pings(
    channel: &Channel,
    queue: &str,
    eta: DateTime<Utc>,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut t = OutgoingTask::new("worker.ping", vec![], Map::new());
        t.eta = Some(eta);
        let m = task_message(queue, &t);
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &m.body,
                m.amqp_properties(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        ids.push(t.id);
    }
    ids
}

async fn redis_at(url: &str) -> ConnectionManager {
    ConnectionManager::new(redis::Client::open(url).expect("redis url"))
        .await
        .expect("connect to Redis")
}

/// The result documents of `ids` in the Redis at `conn`, once all have `status`.
async fn wait_all(
    conn: &mut ConnectionManager,
    ids: &[String],
    status: &str,
    timeout: Duration,
) -> HashMap<String, Value> {
    let start = Instant::now();
    let mut found = HashMap::new();
    while start.elapsed() < timeout && found.len() < ids.len() {
        for id in ids {
            if found.contains_key(id) {
                continue;
            }
            let raw: Option<String> = conn
                .get(format!("celery-task-meta-{id}"))
                .await
                .expect("GET");
            if let Some(v) = raw.and_then(|r| serde_json::from_str::<Value>(&r).ok())
                && v["status"] == status
            {
                found.insert(id.clone(), v);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    found
}

fn done_at(result: &Value) -> DateTime<Utc> {
    worker::wire::parse_time(result["date_done"].as_str().expect("date_done")).expect("time")
}

/// How many times the worker's log says the task `id` finished.
fn runs(logs: &str, id: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains(id) && l.contains("task finished"))
        .count()
}

fn metric(metrics: &str, name: &str, queue: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("queue=\"{queue}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get_metrics(worker: &WorkerProcess) -> String {
    reqwest::get(format!("http://{}/metrics", worker.http_addr()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

async fn ready_count(channel: &Channel, queue: &str) -> Option<u32> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| q.message_count())
}

/// The delay prefix of a routing key as the countdown it encodes.
fn countdown_of(routing_key: &str) -> u64 {
    let bits: String = routing_key.split('.').take(28).collect::<Vec<_>>().concat();
    u64::from_str_radix(&bits, 2).expect("28 binary digits")
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_tasks_survive_a_redis_that_evicts_everything() {
    let redis = RedisServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]);
    let queue = unique("evict");
    let prefix = format!("{queue}:");
    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("REDIS_URL", &redis.url), ("WORKER_KEY_PREFIX", &prefix)],
    );
    let (_c, channel) = amqp().await;
    let eta = Utc::now() + chrono::Duration::seconds(15);
    let ids = publish_pings(&channel, &queue, eta, 200).await;
    worker.wait_for_log_count("parked in the delay topology", 200, Duration::from_secs(15));
    assert_eq!(ready_count(&channel, &queue).await, Some(0));
    assert_eq!(
        metric(
            &get_metrics(&worker).await,
            "worker_messages_delayed_total",
            &queue
        ),
        200.0
    );

    // The web app's cache fills Redis far past its limit while the tasks wait.
    let mut cache = redis_at(&redis.url).await;
    let value = "x".repeat(8 * 1024);
    for chunk in 0..40 {
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.set(format!("cache:{chunk}:{i}"), &value).ignore();
        }
        let () = pipe.query_async(&mut cache).await.expect("fill Redis");
    }
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut cache)
        .await
        .unwrap();
    let evicted: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(evicted > 2000, "Redis evicted only {evicted} keys");

    let results = wait_all(&mut cache, &ids, "SUCCESS", Duration::from_secs(40)).await;
    assert_eq!(results.len(), 200, "{}", worker.logs());
    for r in results.values() {
        assert!(done_at(r) >= eta, "ran before its eta: {r}");
    }
    // Each once, also a little later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = worker.logs();
    for id in &ids {
        assert_eq!(runs(&logs, id), 1, "task {id}:\n{logs}");
    }
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delays_survive_a_rabbitmq_restart_and_land_in_kombus_level() {
    let node = RabbitNode::start();
    let queue = unique("restart");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[("RABBITMQ_URL", &node.url)]);
    let (conn, channel) = channel_on(&node.url).await;
    // Far enough for the restart (7-25 s here) and the worker's reconnect backoff (up to 30 s)
    // to be over before the tasks are due.
    let eta = Utc::now() + chrono::Duration::seconds(75);
    let ids = publish_pings(&channel, &queue, eta, 100).await;
    let ten_days =
        publish_pings(&channel, &queue, Utc::now() + chrono::Duration::days(10), 1).await;
    worker.wait_for_log_count("parked in the delay topology", 101, Duration::from_secs(20));
    assert_eq!(ready_count(&channel, &queue).await, Some(0));

    // 10 days = 864000 s < 2^20: its highest 1 bit is 2^19, so it waits in level 19, alone.
    assert_eq!(ready_count(&channel, "celery_delayed_19").await, Some(1));
    let got = channel
        .basic_get(
            "celery_delayed_19".into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
        .expect("the 10-day task");
    let key = got.delivery.routing_key.as_str().to_owned();
    let countdown = countdown_of(&key);
    assert!(
        (864_000 - 10..=864_000).contains(&countdown),
        "routing key {key} encodes {countdown} s"
    );
    let kombu = run_python(
        "native_delay.py",
        &["routing_key", &countdown.to_string(), &queue],
    );
    assert!(kombu.status.success(), "{}", stderr(&kombu));
    assert_eq!(stdout(&kombu).trim(), key, "kombu's calculate_routing_key");
    let headers = got
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(worker::wire::table_to_json)
        .unwrap_or_default();
    assert_eq!(headers["id"], json!(ten_days[0]), "the original id travels");
    assert!(
        headers["eta"].as_str().is_some(),
        "the original eta travels"
    );
    drop(channel);
    let _ = conn.close(200, "".into()).await;

    node.restart();
    let mut results = redis().await;
    let done = wait_all(&mut results, &ids, "SUCCESS", Duration::from_secs(120)).await;
    assert_eq!(done.len(), 100, "{}", worker.logs());
    for r in done.values() {
        let at = done_at(r);
        assert!(at >= eta, "ran before its eta: {r}");
        assert!(at - eta < chrono::Duration::seconds(10), "ran late: {r}");
    }
    let logs = worker.logs();
    for id in &ids {
        assert_eq!(runs(&logs, id), 1, "task {id}:\n{logs}");
    }
    assert_eq!(runs(&logs, &ten_days[0]), 0);
}

/// A Python Celery worker (quorum queues), its log in a file, killed at the end.
struct PythonWorker {
    child: Child,
    log: std::path::PathBuf,
}

impl PythonWorker {
    fn start(url: &str, queue: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("pyworker")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(python())
            .arg(root().join("tests/python/native_delay.py"))
            .args(["worker", queue])
            .env("RABBITMQ_URL", url)
            .env("REDIS_URL", REDIS_URL)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the Python worker");
        let w = Self { child, log };
        let start = Instant::now();
        while !w.logs().contains(" ready.") {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the Python worker never got ready:\n{}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        w
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the worker said about its delayed delivery setup, when it went wrong.
    fn assert_declared_cleanly(&self) {
        let logs = self.logs();
        for bad in [
            "PRECONDITION_FAILED",
            "inequivalent",
            "Failed to setup delayed delivery",
            "Failed to declare",
            "Failed to bind",
        ] {
            assert!(!logs.contains(bad), "Python worker: {bad}\n{logs}");
        }
        assert!(
            logs.contains("Setting up delayed delivery"),
            "the Python worker did not set up delayed delivery:\n{logs}"
        );
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_our_declaration_clean(worker: &WorkerProcess) {
    worker.wait_for_log("delay topology declared", Duration::from_secs(10));
    let logs = worker.logs();
    assert!(
        !logs.contains("cannot declare the delay topology") && !logs.contains("PRECONDITION"),
        "{logs}"
    );
}

/// Delete the whole delay topology (on a private node only).
async fn delete_topology(url: &str) {
    let (_c, channel) = channel_on(url).await;
    for level in 0..28 {
        let name = format!("celery_delayed_{level}");
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
        channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("exchange.delete");
    }
    channel
        .exchange_delete(
            "celery_delayed_delivery".into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("exchange.delete");
}

fn python_send(url: &str, args: &[&str]) -> (Vec<String>, DateTime<Utc>) {
    let out = Command::new(python())
        .arg(root().join("tests/python/native_delay.py"))
        .arg("send")
        .args(args)
        .env("RABBITMQ_URL", url)
        .env("REDIS_URL", REDIS_URL)
        .output()
        .expect("run the Python producer");
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).expect("producer output");
    let ids = doc["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let secs = doc["sent"].as_f64().unwrap();
    let sent = DateTime::from_timestamp_millis((secs * 1000.0) as i64).unwrap();
    (ids, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_quorum_producers_and_workers_share_our_topology() {
    let node = RabbitNode::start();
    let queue = unique("pyq");
    let py_queue = unique("pyworker-q");

    // Ours first, then a Python Celery worker with quorum queues: neither answers 406.
    let ours = WorkerProcess::start(std::slice::from_ref(&queue), &[("RABBITMQ_URL", &node.url)]);
    assert_our_declaration_clean(&ours);
    let py = PythonWorker::start(&node.url, &py_queue);
    py.assert_declared_cleanly();
    drop(py);

    // A Celery 5.7 producer with quorum queues publishes countdowns into celery_delayed_27
    // itself; our worker runs them on time without parking them again.
    let (ids, sent) = python_send(&node.url, &[&queue, "3", "5"]);
    let mut results = redis().await;
    let done = wait_all(&mut results, &ids, "SUCCESS", Duration::from_secs(20)).await;
    assert_eq!(done.len(), 5, "{}", ours.logs());
    for r in done.values() {
        let after = (done_at(r) - sent).num_milliseconds();
        assert!(
            (3000..5000).contains(&after),
            "ran {after} ms after sending: {r}"
        );
    }
    assert_eq!(
        metric(
            &get_metrics(&ours).await,
            "worker_messages_delayed_total",
            &queue
        ),
        0.0,
        "they came through Celery's own delayed publish, not ours"
    );
    // `countdown=2, expires=1` through the topology: REVOKED when the eta arrives, not run.
    let (revoked, _) = python_send(&node.url, &[&queue, "2", "1", "1"]);
    let r = wait_all(&mut results, &revoked, "REVOKED", Duration::from_secs(15)).await;
    assert_eq!(r.len(), 1, "{}", ours.logs());
    assert_eq!(runs(&ours.logs(), &revoked[0]), 0);
    drop(ours);

    // The other order: a Python worker declares the topology first, then ours.
    delete_topology(&node.url).await;
    let py = PythonWorker::start(&node.url, &py_queue);
    py.assert_declared_cleanly();
    let ours = WorkerProcess::start(std::slice::from_ref(&queue), &[("RABBITMQ_URL", &node.url)]);
    assert_our_declaration_clean(&ours);
    // And it works: a far eta published plainly is parked and runs.
    let (_c, channel) = channel_on(&node.url).await;
    let eta = Utc::now() + chrono::Duration::seconds(3);
    let ids = publish_pings(&channel, &queue, eta, 1).await;
    let done = wait_all(&mut results, &ids, "SUCCESS", Duration::from_secs(15)).await;
    assert_eq!(done.len(), 1, "{}", ours.logs());
    assert!(done_at(&done[&ids[0]]) >= eta);
    assert!(ours.logs().contains("parked in the delay topology"));
    assert_eq!(readyz(&ours).await["checks"]["delay_topology"]["ok"], true);

    // A worker configured with the other queue type gets the 406, says so and how to fix it,
    // shows it in /readyz, and still consumes.
    let classic = unique("classic-q");
    let wrong = WorkerProcess::start(
        std::slice::from_ref(&classic),
        &[
            ("RABBITMQ_URL", &node.url),
            ("WORKER_DELAYED_QUEUE_TYPE", "classic"),
        ],
    );
    wrong.wait_for_log("cannot declare the delay topology", Duration::from_secs(10));
    assert!(
        wrong.logs().contains("WORKER_DELAYED_QUEUE_TYPE"),
        "{}",
        wrong.logs()
    );
    assert_eq!(
        readyz(&wrong).await["checks"]["delay_topology"],
        json!({"ok": false, "error": "not declared"})
    );
    let now = publish_pings(&channel, &classic, Utc::now(), 1).await;
    assert_eq!(
        wait_all(&mut results, &now, "SUCCESS", Duration::from_secs(10))
            .await
            .len(),
        1,
        "{}",
        wrong.logs()
    );
}

async fn readyz(worker: &WorkerProcess) -> Value {
    reqwest::get(format!("http://{}/readyz", worker.http_addr()))
        .await
        .expect("GET /readyz")
        .json()
        .await
        .expect("readyz JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_backoff_waits_in_the_delay_topology() {
    let queue = unique("retry-delay");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let mut t = OutgoingTask::new("worker.fail", vec![json!("again")], Map::new());
    t.kwargs.insert("retry_countdown".into(), json!(2));
    let (_c, channel) = amqp().await;
    let m = task_message(&queue, &t);
    let sent = Utc::now();
    publish_raw(&channel, &queue, &m.body, m.amqp_properties()).await;
    let mut results = redis().await;
    // Three retries, 2 s apart, each through the topology (acked meanwhile), then FAILURE.
    let failed = wait_all(
        &mut results,
        std::slice::from_ref(&t.id),
        "FAILURE",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(failed.len(), 1, "{}", worker.logs());
    assert_eq!(failed[&t.id]["retries"], 3);
    let took = (done_at(&failed[&t.id]) - sent).num_milliseconds();
    assert!(
        (6000..12000).contains(&took),
        "three 2 s backoffs took {took} ms"
    );
    assert_eq!(
        metric(
            &get_metrics(&worker).await,
            "worker_messages_delayed_total",
            &queue
        ),
        3.0
    );
    assert_eq!(ready_count(&channel, &queue).await, Some(0));
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn countdown_2_expires_1_is_revoked() {
    let queue = unique("expires-eta");
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    // Celery's defaults (classic queue): the message comes with its eta, we park it.
    let (ids, _) = python_send(RABBITMQ_URL, &[&queue, "2", "1", "1", "--classic"]);
    let mut results = redis().await;
    let r = wait_all(&mut results, &ids, "REVOKED", Duration::from_secs(15)).await;
    assert_eq!(r.len(), 1, "{}", worker.logs());
    assert_eq!(
        r[&ids[0]]["result"],
        json!({"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"})
    );
    let logs = worker.logs();
    assert_eq!(runs(&logs, &ids[0]), 0, "{logs}");
    assert!(logs.contains("parked in the delay topology"), "{logs}");
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

/// An entry of the previous release's Redis delayed store.
fn legacy_entry(queue: &str, due: DateTime<Utc>) -> (String, String) {
    let mut t = OutgoingTask::new("worker.ping", vec![], Map::new());
    t.eta = Some(due);
    let m = task_message(queue, &t);
    let headers = worker::wire::table_to_json(&m.properties.headers);
    let entry = json!({
        "token": uuid::Uuid::new_v4().to_string(),
        "queue": queue,
        "task_id": t.id,
        "due": due,
        "body": String::from_utf8(m.body.clone()).unwrap(),
        "headers": headers,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "correlation_id": t.id,
        "reply_to": null,
        "priority": 0,
    });
    (t.id, entry.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_redis_delayed_set_is_migrated_on_startup() {
    let queue = unique("migrate");
    let prefix = format!("{queue}:");
    let due_key = format!("{prefix}delayed");
    let inflight_key = format!("{prefix}delayed:inflight");
    let now = Utc::now();
    let mut conn = redis().await;
    let mut ids = Vec::new();
    let mut later = Vec::new();
    for (key, offset_ms) in [
        (&due_key, -5_000i64),
        (&due_key, 500),
        (&due_key, 4_000),
        (&due_key, 6_000),
        (&inflight_key, -1_000),
    ] {
        let due = now + chrono::Duration::milliseconds(offset_ms);
        let (id, member) = legacy_entry(&queue, due);
        let _: i64 = conn
            .zadd(key, member, due.timestamp_millis())
            .await
            .unwrap();
        if offset_ms > 1000 {
            later.push((id.clone(), due));
        }
        ids.push(id);
    }
    let _: i64 = conn.zadd(&due_key, "not json", 0).await.unwrap();

    let worker = WorkerProcess::start(
        std::slice::from_ref(&queue),
        &[("WORKER_KEY_PREFIX", &prefix)],
    );
    let done = wait_all(&mut conn, &ids, "SUCCESS", Duration::from_secs(20)).await;
    assert_eq!(done.len(), ids.len(), "{}", worker.logs());
    for (id, due) in &later {
        assert!(
            done_at(&done[id]) >= *due,
            "ran before its eta: {}",
            done[id]
        );
    }
    let logs = worker.logs();
    for id in &ids {
        assert_eq!(runs(&logs, id), 1, "task {id}:\n{logs}");
    }
    // Everything readable moved; what cannot be read is left for a person, and said.
    let left: Vec<String> = conn.zrange(&due_key, 0, -1).await.unwrap();
    assert_eq!(left, ["not json"]);
    let inflight: u64 = conn.zcard(&inflight_key).await.unwrap();
    assert_eq!(inflight, 0);
    assert!(
        logs.contains("cannot be read; it is left in Redis"),
        "{logs}"
    );
    assert!(
        metric(
            &get_metrics(&worker).await,
            "worker_messages_delayed_total",
            &queue
        ) >= 2.0,
        "the far entries went through the delay topology"
    );
    let _: () = conn.del(&[&due_key, &inflight_key]).await.unwrap();
    let (_c, channel) = amqp().await;
    delete_queue(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_too_long_for_a_delayed_routing_key_fails_its_far_etas_and_keeps_consuming() {
    // 28 bits take 56 bytes of AMQP's 255: a 210-byte queue name cannot be delayed.
    let queue = format!("{}-{}", unique("long"), "q".repeat(194));
    assert_eq!(queue.len(), 210);
    let worker = WorkerProcess::start(std::slice::from_ref(&queue), &[]);
    let (_c, channel) = amqp().await;
    let far = publish_pings(
        &channel,
        &queue,
        Utc::now() + chrono::Duration::seconds(30),
        1,
    )
    .await;
    let now = publish_pings(&channel, &queue, Utc::now(), 1).await;
    let mut results = redis().await;
    let failed = wait_all(&mut results, &far, "FAILURE", Duration::from_secs(10)).await;
    assert_eq!(failed.len(), 1, "{}", worker.logs());
    assert_eq!(failed[&far[0]]["result"]["exc_type"], "ValueError");
    assert_eq!(
        failed[&far[0]]["name"], "worker.ping",
        "the full origin is kept"
    );
    let dead = drain(&channel, &format!("{queue}.dead")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0["x-dead-letter-reason"], "delay_impossible");
    let ran = wait_all(&mut results, &now, "SUCCESS", Duration::from_secs(10)).await;
    assert_eq!(ran.len(), 1, "{}", worker.logs());
    delete_queue(&channel, &queue).await;
}
