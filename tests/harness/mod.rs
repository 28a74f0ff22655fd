//! Test harness for the end-to-end tests: real RabbitMQ, Redis and (for compatibility) Python
//! Celery, never mocks. Each test gets its own queue names (a random prefix), so tests run in
//! parallel and can be repeated; the worker under test is the real binary, started as a child
//! process and killed when the test ends.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use redis::AsyncCommands;
use serde_json::Value;

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The workspace root (where `.venv` and `tests/python` live).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A unique name prefix for this test's queues.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A `worker` child process with its log file.
pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Start `worker run` on `queues` and wait until it consumes.
    pub fn start(queues: &[String], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("worker")));
        let file = std::fs::File::create(&log).expect("create worker log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.arg("run")
            .arg("--queues")
            .arg(queues.join(","))
            .env("RABBITMQ_URL", RABBITMQ_URL)
            .env("REDIS_URL", REDIS_URL)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env("WORKER_HTTP_ADDR", "127.0.0.1:0")
            // The shipped schedules would publish StaffProBot ticks to the real queues.
            .env("WORKER_NO_SCHEDULER", "true")
            .stdout(Stdio::null())
            .stderr(file.try_clone().expect("clone log handle"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn worker binary");
        let w = Self { child, log };
        w.wait_for_log("consuming", Duration::from_secs(30));
        w
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 1, timeout);
    }

    /// The log once it holds `count` lines with `needle` (the worker writes its log from a
    /// thread of its own, a moment after the event). Panics after `timeout`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= count {
                return logs;
            }
            if start.elapsed() > timeout {
                panic!("worker never logged {needle:?} {count} time(s); log:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address the HTTP server bound (the harness asks for port 0).
    pub fn http_addr(&self) -> String {
        self.wait_for_log("http listening", Duration::from_secs(10));
        let logs = self.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("http listening"))
            .unwrap_or_default();
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no addr in {line:?}"))
            .to_owned()
    }

    /// Still running, without needing `&mut` (for use after borrowing the logs).
    pub fn is_alive_now(&self) -> bool {
        // A dead child stays in /proc as a zombie until waited for: look at its state.
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|rest| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Still running?
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the `worker` CLI to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(args)
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .env("LOG_FORMAT", "text")
        .output()
        .expect("run worker CLI")
}

/// The Python of the virtualenv `scripts/test` creates, with Celery 5.7 in it.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("CELERY_PYTHON") {
        return PathBuf::from(p);
    }
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which creates the virtualenv with Celery",
        p.display()
    );
    p
}

/// Run a script from `tests/python` with the test's environment.
pub fn run_python(script: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .env("RABBITMQ_URL", RABBITMQ_URL)
        .env("REDIS_URL", REDIS_URL)
        .output()
        .expect("run python")
}

pub async fn amqp() -> (Connection, Channel) {
    let conn = Connection::connect(RABBITMQ_URL, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("open channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, channel)
}

/// Publish raw bytes to `queue` through the default exchange and wait for the confirm.
pub async fn publish_raw(channel: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

/// Take every message of `queue` (acking it) and return (headers as JSON, body).
pub async fn drain(
    channel: &Channel,
    queue: &str,
) -> Vec<(serde_json::Map<String, Value>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(msg) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let headers = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .map(worker::celery::amqp_value::table_to_json)
            .unwrap_or_default();
        out.push((headers, msg.delivery.data.clone()));
    }
    out
}

/// Delete a test queue, its exchange and its dead-letter queue.
pub async fn delete_queue(channel: &Channel, queue: &str) {
    for q in [queue.to_owned(), format!("{queue}.dead")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(queue.into(), ExchangeDeleteOptions::default())
        .await;
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis")
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

/// Count messages in `queue` without consuming them.
pub async fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
}

/// A fresh, migrated PostgreSQL database for one test; dropped by [`TestDatabase::drop_now`].
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

pub const PG_ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/postgres";

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("worker_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        let url = format!("postgresql://postgres@127.0.0.1:5432/{name}");
        let out = Command::new(env!("CARGO_BIN_EXE_worker"))
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .output()
            .expect("worker migrate");
        assert!(
            out.status.success(),
            "worker migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name, url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    pub async fn drop_now(self) {
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("connect to PostgreSQL");
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await;
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
