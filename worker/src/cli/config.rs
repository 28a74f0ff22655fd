//! `worker config`: the effective configuration `worker run` would use, with every secret
//! redacted (passwords inside URLs, the Telegram bot token, the HTTP token).

use serde_json::{Value, json};

use super::Outcome;
use super::run::RunArgs;
use crate::settings::{ConnectionSettings, redact_url};

/// The configuration as JSON, redacted.
pub(crate) fn effective(conn: &ConnectionSettings, run: &RunArgs) -> Value {
    let s = &run.settings;
    json!({
        "RABBITMQ_URL": redact_url(&conn.rabbitmq_url),
        "REDIS_URL": redact_url(&conn.redis_url),
        "REDIS_DB": conn.redis_db,
        "WORKER_REDIS_MASTER_NAME": conn.redis_master_name,
        "WORKER_REDIS_CA_FILE": conn.redis_ca_file.as_ref().map(|p| p.display().to_string()),
        "WORKER_REDIS_CERT_FILE": conn.redis_cert_file.as_ref().map(|p| p.display().to_string()),
        "WORKER_RABBITMQ_CA_FILE": conn.rabbitmq_ca_file.as_ref().map(|p| p.display().to_string()),
        "WORKER_RABBITMQ_CERT_FILE": conn.rabbitmq_cert_file.as_ref().map(|p| p.display().to_string()),
        "DATABASE_URL": redact_url(&conn.database_url),
        "DEFAULT_TIMEZONE": conn.default_timezone.name(),
        "RESULT_EXPIRES": conn.result_expires,
        "RESULT_KEY_PREFIX": conn.result_key_prefix,
        "TELEGRAM_BOT_TOKEN": run.jobs.telegram_bot_token.as_deref().filter(|t| !t.trim().is_empty()).map(|_| "***"),
        "TELEGRAM_API_URL": redact_url(&run.jobs.telegram_api_url),
        "REMINDER_HOURS_BEFORE": run.jobs.reminder_hours_before,
        "SCHEDULES_FILE": run.schedules.schedules_file.display().to_string(),
        "WORKER_SCHEDULER": !run.no_scheduler,
        "WORKER_QUEUES": s.queues.join(","),
        "WORKER_CONCURRENCY": s.concurrency,
        "WORKER_HOSTNAME": s.hostname(),
        "WORKER_TRACK_STARTED": s.track_started,
        "WORKER_TRACK_STARTED_AFTER_MS": s.track_started_after_ms,
        "WORKER_RESULT_EXTENDED": s.result_extended,
        "WORKER_DEDUPLICATE_SUCCESSFUL_TASKS": s.deduplicate_successful_tasks,
        "WORKER_MAX_MESSAGE_BYTES": s.max_message_bytes,
        "WORKER_ETA_HOLD": s.eta_hold,
        "WORKER_DELAYED_QUEUE_TYPE": s.delayed_queue_type,
        "WORKER_SOFT_TIME_LIMIT": s.soft_time_limit,
        "WORKER_TIME_LIMIT": s.time_limit,
        "WORKER_UNDELIVERED_RESULTS_QUEUE": s.undelivered_results_queue,
        "WORKER_KEY_PREFIX": conn.key_prefix,
        "WORKER_CONTROL_EXCHANGE": conn.control_exchange,
        "WORKER_SHUTDOWN_GRACE": run.service.shutdown_grace,
        "WORKER_HTTP_ADDR": if run.service.no_http { "off".to_owned() } else { run.service.http_addr.to_string() },
        "WORKER_HTTP_TOKEN": run.service.http.token().map(|_| "***"),
        "WORKER_HTTP_METRICS_AUTH": run.service.http.http_metrics_auth,
        "WORKER_HTTP_TIMEOUT": run.service.http.http_timeout,
        "WORKER_HTTP_MAX_CONNECTIONS": run.service.http.http_max_connections,
        "WORKER_READY_FILE": run.service.ready_file.as_ref().map(|p| p.display().to_string()),
        "WORKER_MIGRATE": run.migrate,
    })
}

pub(crate) fn print(conn: &ConnectionSettings, run: &RunArgs, as_json: bool) -> Outcome {
    let doc = effective(conn, run);
    if as_json {
        println!("{doc:#}");
    } else if let Value::Object(map) = doc {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s,
                Value::Null => "(unset)".into(),
                other => other.to_string(),
            };
            println!("{k:<26} {v}");
        }
    }
    Outcome::Success
}
