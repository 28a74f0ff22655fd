//! Remote control: what the worker answers to Celery's `app.control` commands (the handlers of
//! celery/worker/control.py), independent of how they arrive (`adapters::control` brings them
//! over the pidbox exchange and sends the replies).
//!
//! - [`revoked`]: the revoked ids in memory, checked by the executor before every run;
//! - [`revoke`]: the `revoke` and `terminate` commands (and Celery's mingle `hello`, which
//!   shares revoked ids between workers);
//! - [`inspect`]: the read-only commands (`ping`, `stats`, `active`, `reserved`, `scheduled`,
//!   `registered`, `active_queues`, `revoked`, `query_task`, `conf`, `clock`) and the event
//!   switches.
//!
//! A reply is the JSON Celery's handler returns. A command Celery does not know is answered as
//! Celery's mailbox answers it, `{"error": "KeyError('name')"}`; one Celery knows and we do not
//! do (pool resizing, rate limits, shutdown...) says so in `{"error": ...}`. Arguments are
//! attacker input: each handler reads what it needs with bounds and answers a wrong type with
//! an error reply, never a panic.

pub(crate) mod inspect;
pub(crate) mod revoke;
pub(crate) mod revoked;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::adapters::control::store::RevokedStore;
use crate::adapters::results::ResultStore;
use crate::app::engine::inflight::Inflight;
use crate::wire::control::py_repr;
use revoked::Revoked;

/// What the commands read and change; one per worker.
pub(crate) struct Panel {
    /// This worker's node name (`celery@host`), the key of every reply.
    pub node: String,
    pub inflight: Arc<Inflight>,
    pub revoked: Arc<Revoked>,
    /// Where revokes are kept across restarts.
    pub store: RevokedStore,
    /// The result backend, for REVOKED.
    pub results: ResultStore,
    /// What `stats`, `registered`, `active_queues` and `conf` report, fixed at startup.
    pub facts: Facts,
    started: Instant,
    /// kombu's Lamport clock, forwarded on every command.
    clock: AtomicU64,
    /// `enable_events`/`disable_events`: whether events are sent; shared with the events
    /// dispatcher (`adapters::events`), which reads it.
    task_events: Arc<AtomicBool>,
}

/// The worker's fixed description.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub registered: Vec<String>,
    pub queues: Vec<String>,
    pub concurrency: u16,
    /// `stats()["broker"]`, without the password.
    pub broker: Value,
    /// `conf`, secrets redacted.
    pub conf: Value,
    /// `(soft, hard)` time limits in seconds.
    pub timeouts: (Option<f64>, Option<f64>),
}

/// Celery's `ok(value)`.
pub(crate) fn ok(value: impl Into<Value>) -> Value {
    json!({ "ok": value.into() })
}

/// Celery's `nok(value)`.
pub(crate) fn nok(value: impl Into<Value>) -> Value {
    json!({ "error": value.into() })
}

/// Commands Celery's worker has that this one does not carry out.
const NOT_SUPPORTED: &[&str] = &[
    "rate_limit",
    "time_limit",
    "revoke_by_stamped_headers",
    "election",
    "heartbeat",
    "report",
    "objgraph",
    "memsample",
    "memdump",
    "pool_grow",
    "pool_shrink",
    "pool_restart",
    "autoscale",
    "shutdown",
    "add_consumer",
    "cancel_consumer",
];

impl Panel {
    pub(crate) fn new(
        node: String,
        inflight: Arc<Inflight>,
        revoked: Arc<Revoked>,
        store: RevokedStore,
        results: ResultStore,
        facts: Facts,
    ) -> Self {
        Self {
            node,
            inflight,
            revoked,
            store,
            results,
            facts,
            started: Instant::now(),
            clock: AtomicU64::new(0),
            task_events: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Share the events on/off flag with the events dispatcher.
    pub(crate) fn with_events(mut self, flag: Arc<AtomicBool>) -> Self {
        self.task_events = flag;
        self
    }

    /// Forward the clock (every command does, as Celery's pidbox does) and return it.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    pub(crate) fn clock(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Run `method` with `arguments`; the reply as Celery's handler would give it (`Null` for
    /// a handler that returns `None`).
    pub(crate) async fn handle(&self, method: &str, arguments: &Map<String, Value>) -> Value {
        match method {
            "ping" => ok("pong"),
            "revoke" => revoke::revoke(self, arguments, false).await,
            "terminate" => revoke::revoke(self, arguments, true).await,
            "hello" => revoke::hello(self, arguments),
            "stats" => inspect::stats(self),
            "active" | "dump_active" => inspect::active(self),
            "reserved" | "dump_reserved" => inspect::reserved(self),
            "scheduled" | "dump_schedule" => inspect::scheduled(self),
            "registered" | "dump_tasks" => inspect::registered(self),
            "active_queues" => inspect::active_queues(self),
            "revoked" | "dump_revoked" => inspect::revoked(self),
            "query_task" => inspect::query_task(self, arguments),
            "conf" | "dump_conf" => self.facts.conf.clone(),
            "clock" => json!({ "clock": self.clock() }),
            "enable_events" => self.events(true),
            "disable_events" => self.events(false),
            m if NOT_SUPPORTED.contains(&m) => nok(format!("{m} is not supported by this worker")),
            // Celery's Node.dispatch: the handler lookup raises KeyError, replied as its repr.
            m => nok(format!("KeyError({})", py_repr(m))),
        }
    }

    fn events(&self, enable: bool) -> Value {
        let was = self.task_events.swap(enable, Ordering::Relaxed);
        match (enable, was) {
            (true, false) => ok("task events enabled"),
            (true, true) => ok("task events already enabled"),
            (false, true) => ok("task events disabled"),
            (false, false) => ok("task events already disabled"),
        }
    }

    /// Add the revoked ids kept in Redis to those in memory: at startup, before any task can
    /// arrive, and each time the mailbox reconnects (a broadcast sent while it was away reached
    /// the other replicas, which kept it in Redis).
    pub(crate) async fn load_revoked(&self) {
        let now = chrono::Utc::now();
        match self.store.load(now).await {
            Ok(ids) => {
                for (id, until) in &ids {
                    self.revoked.insert(id, *until, now);
                }
                if !ids.is_empty() {
                    tracing::info!(count = ids.len(), "revoked task ids loaded from Redis");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the revoked task ids from Redis"),
        }
    }

    pub(crate) fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// Celery's `maybe_list` over attacker input: one string or a list of strings, each at most
/// `max_len` bytes, at most `max_items` of them; anything else is `Err(what was wrong)`.
pub(crate) fn string_list(
    value: Option<&Value>,
    max_items: usize,
    max_len: usize,
) -> Result<Vec<String>, String> {
    let check = |v: &Value| match v {
        Value::String(s) if s.len() <= max_len => Ok(s.clone()),
        Value::String(s) => Err(format!("an id of {} bytes (at most {max_len})", s.len())),
        other => Err(format!(
            "not a string: {}",
            crate::wire::outgoing::truncate(&other.to_string(), 64)
        )),
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() > max_items => {
            Err(format!("{} ids (at most {max_items})", items.len()))
        }
        Some(Value::Array(items)) => items.iter().map(check).collect(),
        Some(v) => check(v).map(|s| vec![s]),
    }
}

/// Python's truthiness of a JSON argument (`terminate=1`, `"true"` from the CLI).
pub(crate) fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_bounded_and_typed() {
        assert_eq!(string_list(Some(&json!("a")), 2, 8).unwrap(), vec!["a"]);
        assert_eq!(
            string_list(Some(&json!(["a", "b"])), 2, 8).unwrap(),
            vec!["a", "b"]
        );
        assert!(string_list(Some(&json!(["a", "b", "c"])), 2, 8).is_err());
        assert!(string_list(Some(&json!([1])), 2, 8).is_err());
        assert!(string_list(Some(&json!("x".repeat(9))), 2, 8).is_err());
        assert!(string_list(None, 2, 8).unwrap().is_empty());
        assert!(truthy(Some(&json!(true))) && truthy(Some(&json!(1))));
        assert!(!truthy(Some(&json!(false))) && !truthy(None) && !truthy(Some(&json!(""))));
    }
}
