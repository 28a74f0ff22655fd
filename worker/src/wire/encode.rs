//! A new task as a Python producer would describe it (celery/app/amqp.py `as_task_v2`): its
//! headers and body. [`super::outgoing`] turns it into the message we publish.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// A task to publish.
#[derive(Debug, Clone)]
pub struct OutgoingTask {
    pub id: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub retries: u32,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    /// Extra top-level headers, as `apply_async(headers=...)` merges them.
    pub extra_headers: Map<String, Value>,
    /// The body's `embed` (`callbacks`, `errbacks`, `chain`, `chord`); missing ones are null.
    pub embed: Map<String, Value>,
}

impl OutgoingTask {
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            task: task.into(),
            args,
            kwargs,
            eta: None,
            expires: None,
            retries: 0,
            root_id: None,
            parent_id: None,
            extra_headers: Map::new(),
            embed: Map::new(),
        }
    }

    /// The headers as JSON, before conversion to AMQP. `origin` is the publisher,
    /// `gen<pid>@<host>` as Celery writes it.
    pub fn headers(&self, origin: &str) -> Map<String, Value> {
        let iso = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, false);
        let mut h = json!({
            "lang": "py",
            "task": self.task,
            "id": self.id,
            "shadow": null,
            "eta": self.eta.as_ref().map(iso),
            "expires": self.expires.as_ref().map(iso),
            "group": null,
            "group_index": null,
            "retries": self.retries,
            "timelimit": [null, null],
            "root_id": self.root_id.clone().unwrap_or_else(|| self.id.clone()),
            "parent_id": self.parent_id,
            "argsrepr": repr(&Value::Array(self.args.clone())),
            "kwargsrepr": repr(&Value::Object(self.kwargs.clone())),
            "origin": origin,
            "ignore_result": false,
            "replaced_task_nesting": 0,
            "stamped_headers": null,
            "stamps": {},
        });
        if let Some(map) = h.as_object_mut() {
            for (k, v) in &self.extra_headers {
                map.insert(k.clone(), v.clone());
            }
        }
        match h {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The body `[args, kwargs, embed]`.
    pub fn body(&self) -> Vec<u8> {
        let mut embed = Map::new();
        for key in ["callbacks", "errbacks", "chain", "chord"] {
            embed.insert(
                key.into(),
                self.embed.get(key).cloned().unwrap_or(Value::Null),
            );
        }
        let body = json!([self.args, self.kwargs, embed]);
        body.to_string().into_bytes()
    }
}

/// Celery's `argsrepr_maxsize` / `kwargsrepr_maxsize`: the reprs are for logs, and headers must
/// fit in one frame whatever the arguments.
const REPR_MAX: usize = 1024;

fn repr(v: &Value) -> String {
    super::outgoing::truncate(&v.to_string(), REPR_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::amqp_value::table_to_json;
    use crate::wire::message::{RawMessage, decode};
    use crate::wire::outgoing::OutgoingMessage;

    #[test]
    fn what_we_encode_we_decode() {
        let mut t = OutgoingTask::new("worker.echo", vec![json!(1), json!("a")], Map::new());
        t.eta = Some(Utc::now());
        let out = OutgoingMessage::task("q", &t, "gen1@test", Utc::now());
        let headers = table_to_json(&out.properties.headers);
        assert_eq!(headers["origin"], "gen1@test");
        let m = decode(
            RawMessage {
                body: &out.body,
                content_type: out.properties.content_type.as_deref(),
                content_encoding: out.properties.content_encoding.as_deref(),
                headers: &headers,
                correlation_id: None,
            },
            crate::wire::message::Limits::DEFAULT,
        )
        .unwrap();
        assert_eq!(m.id, t.id);
        assert_eq!(m.task, "worker.echo");
        assert_eq!(m.args, t.args);
        assert_eq!(m.root_id.as_deref(), Some(t.id.as_str()));
        assert!(m.eta.is_some());
    }
}
