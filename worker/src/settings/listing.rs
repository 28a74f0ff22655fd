//! The settings by the names operators set them (their environment variables), every secret
//! redacted: what `worker config` prints and what remote control's `conf` answers. One list, so
//! neither can show what the other hides, and a new setting is added in one place.

use serde_json::{Map, Value};

use super::{ConnectionSettings, RunSettings, redact_url};

fn path(p: &Option<std::path::PathBuf>) -> Value {
    p.as_ref()
        .map_or(Value::Null, |p| Value::from(p.display().to_string()))
}

fn json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Where the worker connects, and the names it uses there. Key files are listed by neither
/// path nor content: only that they are set.
pub(crate) fn connections(conn: &ConnectionSettings) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("RABBITMQ_URL", redact_url(&conn.rabbitmq_url).into());
    put("REDIS_URL", redact_url(&conn.redis_url).into());
    put("REDIS_DB", json(conn.redis_db));
    put("WORKER_REDIS_MASTER_NAME", json(&conn.redis_master_name));
    put("WORKER_REDIS_CA_FILE", path(&conn.redis_ca_file));
    put("WORKER_REDIS_CERT_FILE", path(&conn.redis_cert_file));
    put("WORKER_RABBITMQ_CA_FILE", path(&conn.rabbitmq_ca_file));
    put("WORKER_RABBITMQ_CERT_FILE", path(&conn.rabbitmq_cert_file));
    put("DATABASE_URL", redact_url(&conn.database_url).into());
    put("DEFAULT_TIMEZONE", conn.default_timezone.name().into());
    put("RESULT_EXPIRES", json(conn.result_expires));
    put("RESULT_KEY_PREFIX", json(&conn.result_key_prefix));
    put("WORKER_QUEUE_TYPE", json(conn.queue_type));
    put("WORKER_KEY_PREFIX", json(&conn.key_prefix));
    put("WORKER_CONTROL_EXCHANGE", json(&conn.control_exchange));
    m
}

/// How tasks are consumed and run.
pub(crate) fn run(s: &RunSettings) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("WORKER_QUEUES", s.queues.join(",").into());
    put("WORKER_CONCURRENCY", json(s.concurrency));
    put("WORKER_HOSTNAME", s.hostname().into());
    put("WORKER_TRACK_STARTED", json(s.track_started));
    put(
        "WORKER_TRACK_STARTED_AFTER_MS",
        json(s.track_started_after_ms),
    );
    put("WORKER_SEND_EVENTS", json(s.send_events));
    put("WORKER_EVENT_EXCHANGE", json(&s.event_exchange));
    put("WORKER_RESULT_EXTENDED", json(s.result_extended));
    put(
        "WORKER_DEDUPLICATE_SUCCESSFUL_TASKS",
        json(s.deduplicate_successful_tasks),
    );
    put("WORKER_MAX_MESSAGE_BYTES", json(s.max_message_bytes));
    put("WORKER_ETA_HOLD", json(s.eta_hold));
    put("WORKER_DELAYED_QUEUE_TYPE", json(s.delayed_queue_type));
    put("WORKER_SOFT_TIME_LIMIT", json(s.soft_time_limit));
    put("WORKER_TIME_LIMIT", json(s.time_limit));
    put("WORKER_MAX_DELIVERIES", json(s.max_deliveries));
    put(
        "WORKER_UNDELIVERED_RESULTS_QUEUE",
        json(&s.undelivered_results_queue),
    );
    put("WORKER_DIAGNOSTIC_TASKS", json(s.diagnostic_tasks));
    m
}
