//! Helpers for the scheduler's library-level tests: real PostgreSQL, Redis and RabbitMQ.
//!
//! The scheduler keeps its claims and last runs in PostgreSQL (table `worker_schedule_ticks`);
//! the tests share one database, [`SCHEDULER_DATABASE_URL`]. Each test gets its own key prefix
//! (the table's `key_prefix` column) and its own durable queue, so tests can run in parallel and
//! against a broker that other tests use. The publisher here speaks just enough
//! Celery v2 (headers `task`/`id`, body `[args, kwargs, embed]`, publisher confirms) for the
//! scheduler's tests; it also carries the schedule name and tick time in headers so a test can
//! check which tick each message belongs to.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use worker::scheduler::{BoxError, TickMessage, TickPublisher};

use super::{amqp_channel, redis, unique};

/// The database the scheduler tests share (created on first use); pass it as DATABASE_URL to a
/// worker process that runs the scheduler.
pub const SCHEDULER_DATABASE_URL: &str =
    "postgresql://postgres@127.0.0.1:5432/worker_scheduler_tests";

/// A pool on [`SCHEDULER_DATABASE_URL`], with the scheduler's table in place.
pub async fn scheduler_pool() -> sqlx::PgPool {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let admin = sqlx::PgPool::connect(super::db::PG_ADMIN_URL)
                .await
                .expect("connect to PostgreSQL");
            let exists: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM pg_database WHERE datname = 'worker_scheduler_tests'",
            )
            .fetch_optional(&admin)
            .await
            .expect("look up the database");
            if exists.is_none() {
                // Another test binary may create it at the same moment: duplicate is fine.
                let _ = sqlx::query("CREATE DATABASE worker_scheduler_tests")
                    .execute(&admin)
                    .await;
            }
            admin.close().await;
        })
        .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(SCHEDULER_DATABASE_URL)
        .await
        .expect("connect to the scheduler test database");
    // The same table the scheduler creates at start, so helpers can seed before it runs. Test
    // binaries start at once: serialise the creation as the scheduler does.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('worker_schedule_ticks'))")
        .execute(&mut *tx)
        .await
        .expect("advisory lock");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS worker_schedule_ticks (
            key_prefix text NOT NULL, schedule text NOT NULL, tick timestamptz NOT NULL,
            token text, lease_until timestamptz, task_id text, published_at timestamptz,
            task text, queue text, PRIMARY KEY (key_prefix, schedule, tick))",
    )
    .execute(&mut *tx)
    .await
    .expect("create the scheduler table");
    tx.commit().await.expect("commit");
    pool
}

/// Deletes every Redis key under `prefix` and the scheduler's rows of that prefix.
pub async fn clean_redis(prefix: &str) {
    let mut conn = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    let pool = scheduler_pool().await;
    sqlx::query("DELETE FROM worker_schedule_ticks WHERE key_prefix = $1")
        .bind(prefix)
        .execute(&pool)
        .await
        .expect("delete the test's scheduler rows");
    pool.close().await;
}

/// Declares a durable queue the way Celery does (no arguments).
pub async fn declare_queue(queue: &str) {
    let (connection, channel) = amqp_channel().await;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    let _ = connection.close(200, "done".into()).await;
}

/// Deletes a queue by name, on a connection of its own.
pub async fn remove_queue(queue: &str) {
    let (connection, channel) = amqp_channel().await;
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
}

/// Publishes tick messages to RabbitMQ over its own connection, with publisher confirms.
pub struct AmqpPublisher {
    _connection: Connection,
    channel: Channel,
    pub attempts: Arc<Mutex<u32>>,
}

impl AmqpPublisher {
    pub async fn connect() -> Self {
        let (connection, channel) = amqp_channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Self {
            _connection: connection,
            channel,
            attempts: Arc::new(Mutex::new(0)),
        }
    }

    async fn send(&self, tick: &TickMessage) -> Result<(), BoxError> {
        let mut headers = FieldTable::default();
        let text = |value: &str| AMQPValue::LongString(value.into());
        headers.insert("lang".into(), text("py"));
        headers.insert("task".into(), text(&tick.task));
        headers.insert("id".into(), text(&tick.task_id));
        headers.insert("root_id".into(), text(&tick.task_id));
        headers.insert("retries".into(), AMQPValue::LongInt(0));
        if let Some(expires) = tick.expires {
            headers.insert("expires".into(), text(&expires.to_rfc3339()));
        }
        headers.insert("x-schedule".into(), text(&tick.schedule));
        headers.insert("x-tick".into(), text(&tick.tick.to_rfc3339()));
        let body = serde_json::to_vec(&serde_json::json!([
            tick.args,
            tick.kwargs,
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ]))?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_priority(0)
            .with_correlation_id(tick.task_id.as_str().into())
            .with_headers(headers);
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                tick.queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?
            .await?;
        if !confirmation.is_ack() {
            return Err("broker did not confirm the message".into());
        }
        Ok(())
    }
}

impl TickPublisher for AmqpPublisher {
    fn publish<'a>(&'a self, tick: &'a TickMessage) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            if let Ok(mut attempts) = self.attempts.lock() {
                *attempts += 1;
            }
            self.send(tick).await
        })
    }
}

/// Fails the first `failures` publishes (across all clones sharing the counter), then
/// publishes for real: a broker that is briefly unreachable.
pub struct FlakyPublisher {
    pub inner: AmqpPublisher,
    pub remaining_failures: Arc<Mutex<u32>>,
}

impl TickPublisher for FlakyPublisher {
    fn publish<'a>(&'a self, tick: &'a TickMessage) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let fail = match self.remaining_failures.lock() {
                Ok(mut remaining) if *remaining > 0 => {
                    *remaining -= 1;
                    true
                }
                _ => false,
            };
            if fail {
                return Err("simulated broker outage".into());
            }
            self.inner.publish(tick).await
        })
    }
}

/// A message as the tests see it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    pub task: String,
    pub task_id: String,
    pub args: serde_json::Value,
    pub kwargs: serde_json::Value,
}

fn header(headers: &BTreeMap<lapin::types::ShortString, AMQPValue>, name: &str) -> String {
    match headers.get(name) {
        Some(AMQPValue::LongString(value)) => {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        }
        other => panic!("header {name} missing or not a string: {other:?}"),
    }
}

/// Takes every message currently in `queue` (consuming them).
pub async fn drain_ticks(queue: &str) -> Vec<Seen> {
    let (connection, channel) = amqp_channel().await;
    let mut seen = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let delivery = message.delivery;
        let headers = delivery
            .properties
            .headers()
            .clone()
            .expect("headers present");
        let headers = headers.inner();
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON body");
        seen.push(Seen {
            schedule: header(headers, "x-schedule"),
            tick: DateTime::parse_from_rfc3339(&header(headers, "x-tick"))
                .expect("tick time")
                .with_timezone(&Utc),
            task: header(headers, "task"),
            task_id: header(headers, "id"),
            args: body[0].clone(),
            kwargs: body[1].clone(),
        });
    }
    let _ = connection.close(200, "done".into()).await;
    seen
}

type StateRow = (
    DateTime<Utc>,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
);

/// The last published tick of a schedule as the scheduler records it (`last_tick`, `task_id`,
/// `published_at`, `task`, `queue`); empty when nothing was published.
pub async fn state(prefix: &str, name: &str) -> HashMap<String, String> {
    let pool = scheduler_pool().await;
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT tick, task_id, published_at, task, queue FROM worker_schedule_ticks
             WHERE key_prefix = $1 AND schedule = $2 AND task_id IS NOT NULL
             ORDER BY tick DESC LIMIT 1",
    )
    .bind(prefix)
    .bind(name)
    .fetch_optional(&pool)
    .await
    .expect("read the last run");
    pool.close().await;
    let mut out = HashMap::new();
    if let Some((tick, task_id, published_at, task, queue)) = row {
        out.insert("last_tick".to_owned(), tick.to_rfc3339());
        out.insert("task_id".to_owned(), task_id);
        out.insert("published_at".to_owned(), published_at.to_rfc3339());
        out.insert("task".to_owned(), task.unwrap_or_default());
        out.insert("queue".to_owned(), queue.unwrap_or_default());
    }
    out
}

/// The last published tick on record, if any.
pub async fn last_tick(prefix: &str, name: &str) -> Option<DateTime<Utc>> {
    state(prefix, name)
        .await
        .get("last_tick")
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
}

/// Records `tick` as the last published tick, as a scheduler that ran earlier would have.
pub async fn seed_last_tick(prefix: &str, name: &str, tick: DateTime<Utc>) {
    let pool = scheduler_pool().await;
    sqlx::query(
        "INSERT INTO worker_schedule_ticks (key_prefix, schedule, tick, task_id, published_at)
         VALUES ($1, $2, $3, $4, $3)",
    )
    .bind(prefix)
    .bind(name)
    .bind(tick)
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(&pool)
    .await
    .expect("seed the last run");
    pool.close().await;
}

/// Leaves a claim on `tick` held by a replica that died mid-publish, running out in `lease`.
pub async fn seed_dead_claim(prefix: &str, name: &str, tick: DateTime<Utc>, lease: Duration) {
    let pool = scheduler_pool().await;
    sqlx::query(
        "INSERT INTO worker_schedule_ticks (key_prefix, schedule, tick, token, lease_until)
         VALUES ($1, $2, $3, 'claimed:dead-replica', now() + make_interval(secs => $4))",
    )
    .bind(prefix)
    .bind(name)
    .bind(tick)
    .bind(lease.as_secs_f64())
    .execute(&pool)
    .await
    .expect("seed a dead claim");
    pool.close().await;
}

/// A schedules file in the temp directory, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("schedules")));
        std::fs::write(&path, contents).expect("write temp file");
        Self { path }
    }

    /// Replaces the contents atomically, as editors do (write a sibling, rename over).
    pub fn replace(&self, contents: &str) {
        let sibling = self.path.with_extension("tmp");
        std::fs::write(&sibling, contents).expect("write temp file");
        std::fs::rename(&sibling, &self.path).expect("rename temp file");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Log lines written by the code under test, captured for assertions.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(Arc::clone(&buffer));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("worker=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
    .clone()
}

pub fn logs_text() -> String {
    let buffer = captured_logs();
    let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Echo to stderr too, so a failing test shows what the scheduler did.
        eprint!("{}", String::from_utf8_lossy(data));
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until the recorded last tick of `name` is at least `at_least` (any tick when `None`);
/// returns it, or `None` on timeout.
pub async fn wait_for_tick(
    prefix: &str,
    name: &str,
    at_least: Option<DateTime<Utc>>,
    timeout: Duration,
) -> Option<DateTime<Utc>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let tick = last_tick(prefix, name).await;
        if tick.is_some() && tick >= at_least {
            return tick;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
