//! Celery's events, as documents: what `celery.events.dispatcher.EventDispatcher` publishes to
//! the `celeryev` topic exchange and Flower (or `celery events`) reads. No I/O here; the
//! dispatcher that sends them is `adapters::events`.
//!
//! An event is a flat JSON object: `type` (`task-succeeded`), `hostname` (the node name),
//! `timestamp` (float Unix seconds), `utcoffset` (hours *west* of UTC, as Celery's
//! `utils.time.utcoffset`), `pid`, `clock` (a Lamport clock) and the fields of its type, the
//! same names and value shapes as celery/worker/{request,strategy,heartbeat}.py send: task
//! fields carry Python reprs (`args="[1, 2]"`, `result="{'ok': True}"`,
//! `exception="ValueError('boom')"`), because Flower shows them as text. The routing key is the
//! type with `-` replaced by `.`; the message is JSON, transient, with a `hostname` header.
//! `local_received` is not ours to send: the receiving side adds it (`EventReceiver`).

use serde_json::{Map, Value, json};

use super::TaskError;
use super::control::py_repr;
use super::message::TaskMessage;
use super::properties::Properties;

/// Reprs in events are for display: Celery's `argsrepr_maxsize` is 1024 characters too.
pub const REPR_MAX: usize = 1024;
/// A traceback longer than this is cut (ours is the error chain, normally a few lines).
pub const TRACEBACK_MAX: usize = 4096;
/// Nesting shown in a repr before `...` (bounds the recursion whatever the value).
const REPR_DEPTH: usize = 8;

/// What every event from this worker carries.
#[derive(Debug, Clone)]
pub struct Source {
    pub hostname: String,
    pub pid: u32,
}

/// One event before it is stamped: its type and its own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub fields: Map<String, Value>,
}

/// How a task left the worker without running (Celery's `task-revoked` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedHow {
    ByRevoke,
    Terminated,
    Expired,
}

fn task_event(kind: &'static str, id: &str, fields: Value) -> Event {
    let mut fields = match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    fields.insert("uuid".into(), json!(id));
    Event { kind, fields }
}

impl Event {
    /// `task-received`, as celery/worker/strategy.py sends it.
    pub fn task_received(message: &TaskMessage) -> Self {
        let repr_of = |header: &str, value: Value| {
            message
                .headers
                .get(header)
                .and_then(Value::as_str)
                .map(|s| super::outgoing::truncate(s, REPR_MAX))
                .unwrap_or_else(|| py_value_repr(&value))
        };
        task_event(
            "task-received",
            &message.id,
            json!({
                "name": message.task,
                "args": repr_of("argsrepr", Value::Array(message.args.clone())),
                "kwargs": repr_of("kwargsrepr", Value::Object(message.kwargs.clone())),
                "root_id": message.root_id,
                "parent_id": message.parent_id,
                "retries": message.retries,
                "eta": message.eta.map(|t| t.to_rfc3339()),
                "expires": message.expires.map(|t| t.to_rfc3339()),
            }),
        )
    }

    pub fn task_started(id: &str) -> Self {
        task_event("task-started", id, json!({}))
    }

    /// `result` is the repr of the return value, `runtime` its run time in seconds.
    pub fn task_succeeded(id: &str, result: &Value, runtime: f64) -> Self {
        task_event(
            "task-succeeded",
            id,
            json!({ "result": py_value_repr(result), "runtime": runtime }),
        )
    }

    pub fn task_failed(id: &str, err: &TaskError) -> Self {
        task_event(
            "task-failed",
            id,
            json!({ "exception": exception_repr(err), "traceback": traceback(err) }),
        )
    }

    pub fn task_retried(id: &str, err: &TaskError) -> Self {
        task_event(
            "task-retried",
            id,
            json!({ "exception": exception_repr(err), "traceback": traceback(err) }),
        )
    }

    pub fn task_revoked(id: &str, how: RevokedHow) -> Self {
        task_event(
            "task-revoked",
            id,
            json!({
                "terminated": how == RevokedHow::Terminated,
                // Celery sends the signal number of a terminate; ours cancels, no signal.
                "signum": null,
                "expired": how == RevokedHow::Expired,
            }),
        )
    }

    /// `task-rejected`: the message was not run here (dead-lettered, or back to its queue).
    pub fn task_rejected(id: &str, requeue: bool) -> Self {
        task_event("task-rejected", id, json!({ "requeue": requeue }))
    }

    /// `worker-online`, `worker-heartbeat`, `worker-offline` (celery/worker/heartbeat.py).
    pub fn worker(kind: WorkerEvent, state: &WorkerState) -> Self {
        let mut fields = Map::new();
        fields.insert("freq".into(), json!(state.freq));
        fields.insert("active".into(), json!(state.active));
        fields.insert("processed".into(), json!(state.processed));
        fields.insert("loadavg".into(), json!(state.loadavg));
        fields.insert("sw_ident".into(), json!(SW_IDENT));
        fields.insert("sw_ver".into(), json!(env!("CARGO_PKG_VERSION")));
        fields.insert("sw_sys".into(), json!(sw_sys()));
        Self {
            kind: kind.as_str(),
            fields,
        }
    }
}

/// What Flower shows as the worker's software (`sw_ident`); a name of its own, so an operator
/// can tell our replicas from Python ones.
pub const SW_IDENT: &str = "staffprobot-worker";

/// Python's `platform.system()` for this build.
fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    Online,
    Heartbeat,
    Offline,
}

impl WorkerEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "worker-online",
            Self::Heartbeat => "worker-heartbeat",
            Self::Offline => "worker-offline",
        }
    }
}

/// The figures a worker event reports.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    /// Seconds between heartbeats.
    pub freq: f64,
    pub active: u64,
    pub processed: u64,
    /// 1, 5 and 15 minute load averages, rounded to two places as Celery's `load_average`.
    pub loadavg: [f64; 3],
}

/// An event ready to publish: to `exchange` with `routing_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMessage {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Properties,
}

impl EventMessage {
    /// Stamp `event` as `EventDispatcher._prepare_event` does and address it.
    pub fn new(
        exchange: &str,
        source: &Source,
        event: Event,
        clock: u64,
        timestamp: f64,
        utcoffset: f64,
    ) -> Self {
        let Event { kind, mut fields } = event;
        fields.insert("type".into(), json!(kind));
        fields.insert("hostname".into(), json!(source.hostname));
        fields.insert("timestamp".into(), json!(timestamp));
        fields.insert("utcoffset".into(), json!(utcoffset));
        fields.insert("pid".into(), json!(source.pid));
        fields.insert("clock".into(), json!(clock));
        Self {
            exchange: exchange.to_owned(),
            routing_key: kind.replace('-', "."),
            body: Value::Object(fields).to_string().into_bytes(),
            properties: Properties::celery_event(&source.hostname),
        }
    }
}

/// Celery's `utcoffset()`: hours west of UTC (negative east of it), from the local offset in
/// seconds east.
pub fn utcoffset_hours(seconds_east: i32) -> f64 {
    -f64::from(seconds_east) / 3600.0
}

fn traceback(err: &TaskError) -> String {
    super::outgoing::truncate(&err.traceback(), TRACEBACK_MAX)
}

/// `repr()` of the exception Python would raise: `ValueError('boom')`.
pub fn exception_repr(err: &TaskError) -> String {
    super::outgoing::truncate(
        &format!("{}({})", err.exc_type, py_repr(&err.message)),
        REPR_MAX,
    )
}

/// Python's `repr()` of a JSON value, at most [`REPR_MAX`] bytes, nesting cut at
/// [`REPR_DEPTH`] (Celery's `saferepr` bounds its output the same way).
pub fn py_value_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, REPR_DEPTH, &mut out);
    super::outgoing::truncate(&out, REPR_MAX)
}

fn write_repr(value: &Value, depth: usize, out: &mut String) {
    // Past the limit the rest is cut anyway: stop walking.
    if out.len() > REPR_MAX {
        return;
    }
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&py_repr(s)),
        Value::Array(_) | Value::Object(_) if depth == 0 => out.push_str("..."),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(item, depth - 1, out);
                if out.len() > REPR_MAX {
                    break;
                }
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&py_repr(k));
                out.push_str(": ");
                write_repr(v, depth - 1, out);
                if out.len() > REPR_MAX {
                    break;
                }
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reprs_are_pythons() {
        assert_eq!(
            py_value_repr(&json!({"ok": true, "n": [1, null, "a'b"]})),
            "{'n': [1, None, \"a'b\"], 'ok': True}"
        );
        assert_eq!(
            exception_repr(&TaskError::value_error("boom")),
            "ValueError('boom')"
        );
        let deep = (0..10_000).fold(json!(1), |v, _| json!([v]));
        assert!(py_value_repr(&deep).len() <= REPR_MAX + 3);
        let wide = json!(vec!["x".repeat(100); 1000]);
        assert!(py_value_repr(&wide).len() <= REPR_MAX + 3);
    }

    #[test]
    fn stamped_as_the_dispatcher_stamps() {
        let source = Source {
            hostname: "celery@h".into(),
            pid: 7,
        };
        let m = EventMessage::new(
            "celeryev",
            &source,
            Event::task_succeeded("id-1", &json!(3), 0.5),
            9,
            1.5,
            utcoffset_hours(3600),
        );
        assert_eq!(m.routing_key, "task.succeeded");
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body["type"], "task-succeeded");
        assert_eq!(body["uuid"], "id-1");
        assert_eq!(body["result"], "3");
        assert_eq!(body["runtime"], 0.5);
        assert_eq!(body["hostname"], "celery@h");
        assert_eq!(body["timestamp"], 1.5);
        assert_eq!(body["utcoffset"], -1.0);
        assert_eq!(body["pid"], 7);
        assert_eq!(body["clock"], 9);
        assert_eq!(m.properties.delivery_mode, Some(1));
        let hb = Event::worker(
            WorkerEvent::Heartbeat,
            &WorkerState {
                freq: 2.0,
                active: 1,
                processed: 3,
                loadavg: [0.1, 0.2, 0.3],
            },
        );
        assert_eq!(hb.kind, "worker-heartbeat");
        assert_eq!(hb.fields["freq"], 2.0);
        assert_eq!(hb.fields["sw_ident"], SW_IDENT);
    }
}
