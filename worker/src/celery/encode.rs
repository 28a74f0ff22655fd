//! Building the protocol v2 message a Python producer would send (celery/app/amqp.py
//! `as_task_v2`), for everything we publish ourselves: `worker send`, scheduler ticks and retries.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString, ShortString};
use serde_json::{Map, Value, json};

use super::amqp_value::json_to_table;

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
        }
    }

    /// The headers table as JSON, before conversion to AMQP.
    pub fn headers(&self) -> Map<String, Value> {
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
            "argsrepr": Value::Array(self.args.clone()).to_string(),
            "kwargsrepr": Value::Object(self.kwargs.clone()).to_string(),
            "origin": format!("gen{}@{}", std::process::id(), crate::config::hostname()),
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
        let body = json!([
            self.args,
            self.kwargs,
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ]);
        body.to_string().into_bytes()
    }

    /// AMQP properties as kombu sets them, with `expiration` when the task expires.
    pub fn properties(&self) -> BasicProperties {
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("utf-8"))
            .with_delivery_mode(2)
            .with_priority(0)
            .with_correlation_id(ShortString::from(self.id.as_str()))
            .with_headers(json_to_table(&self.headers()));
        // An already-passed expiry gets no TTL: the consumer must see it to store REVOKED.
        if let Some(expires) = self.expires {
            let ms = (expires - Utc::now()).num_milliseconds();
            if ms > 0 {
                props = props.with_expiration(ShortString::from(ms.to_string()));
            }
        }
        props
    }
}

/// Header value helper for places that build tables by hand.
pub fn header_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::celery::amqp_value::table_to_json;
    use crate::celery::message::{RawMessage, decode};

    #[test]
    fn what_we_encode_we_decode() {
        let mut t = OutgoingTask::new("worker.echo", vec![json!(1), json!("a")], Map::new());
        t.eta = Some(Utc::now());
        let props = t.properties();
        let headers = table_to_json(props.headers().as_ref().unwrap());
        let body = t.body();
        let m = decode(
            RawMessage {
                body: &body,
                content_type: Some("application/json"),
                content_encoding: Some("utf-8"),
                headers: &headers,
                correlation_id: None,
            },
            1 << 20,
        )
        .unwrap();
        assert_eq!(m.id, t.id);
        assert_eq!(m.task, "worker.echo");
        assert_eq!(m.args, t.args);
        assert_eq!(m.root_id.as_deref(), Some(t.id.as_str()));
        assert!(m.eta.is_some());
    }
}
