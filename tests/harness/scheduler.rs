//! Helpers for the scheduler's library-level tests: real Redis, real RabbitMQ.
//!
//! Each test gets its own Redis key prefix and its own durable queue, so tests can run in
//! parallel and against a broker that other tests use. The publisher here speaks just enough
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

/// Deletes every key under `prefix`.
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

/// Reads a schedule's state hash (`last_tick`, `task_id`, `published_at`, ...).
pub async fn state(prefix: &str, name: &str) -> HashMap<String, String> {
    let mut conn = redis().await;
    redis::cmd("HGETALL")
        .arg(format!("{prefix}schedule:{name}"))
        .query_async(&mut conn)
        .await
        .expect("HGETALL")
}

/// The last published tick recorded in Redis, if any.
pub async fn last_tick(prefix: &str, name: &str) -> Option<DateTime<Utc>> {
    state(prefix, name)
        .await
        .get("last_tick")
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
}

/// Records `tick` as the last published tick, as a scheduler that ran earlier would have.
pub async fn seed_last_tick(prefix: &str, name: &str, tick: DateTime<Utc>) {
    let mut conn = redis().await;
    let _: i64 = redis::cmd("HSET")
        .arg(format!("{prefix}schedule:{name}"))
        .arg("last_tick")
        .arg(tick.to_rfc3339())
        .arg("last_tick_unix")
        .arg(tick.timestamp())
        .arg("task_id")
        .arg(uuid::Uuid::new_v4().to_string())
        .arg("published_at")
        .arg(tick.to_rfc3339())
        .query_async(&mut conn)
        .await
        .expect("HSET");
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
