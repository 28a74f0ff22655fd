//! `worker config`: the effective configuration `worker run` would use, with every secret
//! redacted (passwords inside URLs, the Telegram bot token, the HTTP token).

use serde_json::{Value, json};

use super::Outcome;
use super::run::RunArgs;
use crate::settings::{ConnectionSettings, listing, redact_url};

/// The configuration as JSON, redacted: the connection and run settings as remote control's
/// `conf` lists them, plus what only the process knows (jobs, schedules, HTTP).
pub(crate) fn effective(conn: &ConnectionSettings, run: &RunArgs) -> Value {
    let mut m = listing::connections(conn);
    m.extend(listing::run(&run.settings));
    let service = &run.service;
    let extra = json!({
        "TELEGRAM_BOT_TOKEN": run.jobs.telegram_bot_token.as_deref().filter(|t| !t.trim().is_empty()).map(|_| "***"),
        "TELEGRAM_API_URL": redact_url(&run.jobs.telegram_api_url),
        "REMINDER_HOURS_BEFORE": run.jobs.reminder_hours_before,
        "SCHEDULES_FILE": run.schedules.schedules_file.display().to_string(),
        "WORKER_SCHEDULER": !run.no_scheduler,
        "WORKER_SHUTDOWN_GRACE": service.shutdown_grace,
        "WORKER_HTTP_ADDR": if service.no_http { "off".to_owned() } else { service.http_addr.to_string() },
        "WORKER_HTTP_TOKEN": service.http.token().map(|_| "***"),
        "WORKER_HTTP_METRICS_AUTH": service.http.http_metrics_auth,
        "WORKER_HTTP_TIMEOUT": service.http.http_timeout,
        "WORKER_HTTP_MAX_CONNECTIONS": service.http.http_max_connections,
        "WORKER_READY_FILE": service.ready_file.as_ref().map(|p| p.display().to_string()),
        "WORKER_MIGRATE": run.migrate,
    });
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    Value::Object(m)
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
