//! The read-only commands, with the shapes of celery/worker/control.py: `Request.info()` for
//! each held task, `{"eta", "priority", "request"}` for scheduled ones, sorted names for
//! `registered`, kombu's `Queue.as_dict()` for `active_queues`, the worker controller's
//! `stats()`.
//!
//! Replies are bounded: held tasks are at most the prefetch, and a task's arguments longer
//! than [`MAX_ARGS_BYTES`] as JSON are replaced by their truncated text, as Celery's
//! `safe=True` shows `argsrepr`.

use chrono::SecondsFormat;
use serde_json::{Map, Value, json};

use super::revoked::MAX_ID;
use super::{Panel, nok, string_list};
use crate::app::engine::inflight::{Held, Phase};
use crate::wire::outgoing::truncate;

/// The most JSON bytes of arguments shown per task.
pub(crate) const MAX_ARGS_BYTES: usize = 4096;
/// The most ids one `query_task` may ask about.
const MAX_QUERY_IDS: usize = 1024;

/// `value` itself when small, else its JSON text cut to [`MAX_ARGS_BYTES`].
fn bounded(value: Value) -> Value {
    let text = value.to_string();
    if text.len() <= MAX_ARGS_BYTES {
        value
    } else {
        Value::String(truncate(&text, MAX_ARGS_BYTES))
    }
}

/// Celery's `Request.info()`.
fn info(panel: &Panel, held: &Held) -> Value {
    let m = &held.message;
    let time_start = match held.phase {
        Phase::Active { since } => json!(since),
        _ => Value::Null,
    };
    json!({
        "id": m.id,
        "name": m.task,
        "args": bounded(Value::Array(m.args.clone())),
        "kwargs": bounded(Value::Object(m.kwargs.clone())),
        "type": m.task,
        "hostname": panel.node,
        "time_start": time_start,
        // Acks are late: a held message is not acknowledged until it is done.
        "acknowledged": false,
        "delivery_info": {
            "exchange": "",
            "routing_key": held.queue,
            "priority": held.priority,
            "redelivered": held.redelivered,
        },
        "worker_pid": std::process::id(),
    })
}

fn held_where(panel: &Panel, keep: impl Fn(&Phase) -> bool) -> Vec<Held> {
    let mut held: Vec<Held> = panel
        .inflight
        .snapshot()
        .into_iter()
        .filter(|h| keep(&h.phase))
        .collect();
    held.sort_by(|a, b| a.message.id.cmp(&b.message.id));
    held
}

pub(crate) fn active(panel: &Panel) -> Value {
    let held = held_where(panel, |p| matches!(p, Phase::Active { .. }));
    Value::Array(held.iter().map(|h| info(panel, h)).collect())
}

pub(crate) fn reserved(panel: &Panel) -> Value {
    let held = held_where(panel, |p| matches!(p, Phase::Reserved));
    Value::Array(held.iter().map(|h| info(panel, h)).collect())
}

pub(crate) fn scheduled(panel: &Panel) -> Value {
    let held = held_where(panel, |p| matches!(p, Phase::Scheduled { .. }));
    Value::Array(
        held.iter()
            .map(|h| {
                let eta = match h.phase {
                    Phase::Scheduled { eta } => {
                        json!(eta.to_rfc3339_opts(SecondsFormat::Micros, false))
                    }
                    _ => Value::Null,
                };
                json!({"eta": eta, "priority": h.priority.unwrap_or(0), "request": info(panel, h)})
            })
            .collect(),
    )
}

pub(crate) fn registered(panel: &Panel) -> Value {
    let mut names = panel.facts.registered.clone();
    names.sort();
    json!(names)
}

pub(crate) fn revoked(panel: &Panel) -> Value {
    json!(panel.revoked.ids(chrono::Utc::now()))
}

/// `query_task(ids)`: `{id: [state, info]}` for the ids held here.
pub(crate) fn query_task(panel: &Panel, arguments: &Map<String, Value>) -> Value {
    let Some(ids) = arguments.get("ids") else {
        return nok("TypeError(\"query_task() missing 1 required positional argument: 'ids'\")");
    };
    let ids = match string_list(Some(ids), MAX_QUERY_IDS, MAX_ID) {
        Ok(ids) => ids,
        Err(why) => return nok(format!("ids: {why}")),
    };
    let mut out = Map::new();
    for h in panel.inflight.snapshot() {
        if ids.contains(&h.message.id) {
            let state = match h.phase {
                Phase::Active { .. } => "active",
                Phase::Reserved => "reserved",
                Phase::Scheduled { .. } => "scheduled",
            };
            out.insert(h.message.id.clone(), json!([state, info(panel, &h)]));
        }
    }
    Value::Object(out)
}

/// kombu's `Queue.as_dict(recurse=True)` of a queue declared as Celery declares it.
pub(crate) fn active_queues(panel: &Panel) -> Value {
    Value::Array(
        panel
            .facts
            .queues
            .iter()
            .map(|q| {
                json!({
                    "name": q,
                    "exchange": {
                        "name": q, "type": "direct", "arguments": null, "durable": true,
                        "passive": false, "auto_delete": false, "delivery_mode": null,
                        "no_declare": false,
                    },
                    "routing_key": q,
                    "queue_arguments": null, "binding_arguments": null, "consumer_arguments": null,
                    "durable": true, "exclusive": false, "auto_delete": false, "no_ack": false,
                    "alias": null, "bindings": [], "no_declare": null, "expires": null,
                    "message_ttl": null, "max_length": null, "max_length_bytes": null,
                    "max_priority": null,
                })
            })
            .collect(),
    )
}

/// The worker controller's `stats()`.
pub(crate) fn stats(panel: &Panel) -> Value {
    let facts = &panel.facts;
    let pid = std::process::id();
    json!({
        "total": panel.inflight.totals(),
        "pid": pid,
        "clock": panel.clock().to_string(),
        "uptime": panel.uptime_secs(),
        "pool": {
            "implementation": "tokio",
            "max-concurrency": facts.concurrency,
            "processes": [pid],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [facts.timeouts.0, facts.timeouts.1],
        },
        "broker": facts.broker,
        "prefetch_count": facts.concurrency,
        "rusage": rusage(),
    })
}

/// What `/proc/self/status` says of memory (Celery gives `getrusage`; `maxrss` in KiB).
fn rusage() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    json!({ "maxrss": kib("VmHWM:"), "rss": kib("VmRSS:") })
}

/// What `conf` answers: the settings that shape this worker, by their environment names, URLs
/// with their passwords redacted and no token at all (the same list `worker config` prints).
pub(crate) fn conf_of(
    conn: &crate::settings::ConnectionSettings,
    run: &crate::settings::RunSettings,
) -> Value {
    use crate::settings::listing;
    let mut m = listing::connections(conn);
    m.extend(listing::run(run));
    Value::Object(m)
}
