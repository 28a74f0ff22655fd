//! The result document Celery's Redis backend stores under `celery-task-meta-<id>`.
//!
//! Field names and order follow celery/backends/base.py `_get_result_meta`: always `status`,
//! `result`, `traceback`, `children`, `date_done`, `task_id`; `parent_id`/`group_id` when the
//! request had them; and with `result_extended` the request's `name`, `args`, `kwargs`,
//! `worker`, `retries` and `queue`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{TaskError, TaskMessage};

/// Celery's task states, spelled as Celery spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Pending,
    Received,
    Started,
    Retry,
    Failure,
    Success,
    Revoked,
}

impl State {
    /// States after which nothing more happens to the task.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Received => "RECEIVED",
            Self::Started => "STARTED",
            Self::Retry => "RETRY",
            Self::Failure => "FAILURE",
            Self::Success => "SUCCESS",
            Self::Revoked => "REVOKED",
        }
    }
}

/// One stored result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    pub status: State,
    pub result: Value,
    pub traceback: Option<String>,
    #[serde(default)]
    pub children: Vec<Value>,
    pub date_done: Option<String>,
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// Who wrote a result and about which request; enough to fill the extended fields.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub message: &'a TaskMessage,
    pub queue: &'a str,
    pub hostname: &'a str,
    pub extended: bool,
}

impl ResultMeta {
    fn base(status: State, result: Value, traceback: Option<String>, origin: Origin<'_>) -> Self {
        let m = origin.message;
        let date_done = status
            .is_ready()
            .then(|| Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false));
        let ext = origin.extended;
        Self {
            status,
            result,
            traceback,
            children: Vec::new(),
            date_done,
            task_id: m.id.clone(),
            parent_id: m.parent_id.clone(),
            group_id: m.group_id.clone(),
            name: ext.then(|| m.task.clone()),
            args: ext.then(|| m.args.clone()),
            kwargs: ext.then(|| m.kwargs.clone()),
            worker: ext.then(|| origin.hostname.to_owned()),
            retries: ext.then_some(m.retries),
            queue: ext.then(|| origin.queue.to_owned()),
        }
    }

    /// STARTED, with `{pid, hostname}` as Celery's `track_started` writes it.
    pub fn started(origin: Origin<'_>) -> Self {
        let result = serde_json::json!({"pid": std::process::id(), "hostname": origin.hostname});
        Self::base(State::Started, result, None, origin)
    }

    pub fn success(value: Value, origin: Origin<'_>) -> Self {
        Self::base(State::Success, value, None, origin)
    }

    pub fn failure(error: &TaskError, origin: Origin<'_>) -> Self {
        Self::base(
            State::Failure,
            error.to_result_json(),
            Some(error.traceback()),
            origin,
        )
    }

    pub fn retry(error: &TaskError, origin: Origin<'_>) -> Self {
        Self::base(
            State::Retry,
            error.to_result_json(),
            Some(error.traceback()),
            origin,
        )
    }

    pub fn revoked(error: &TaskError, origin: Origin<'_>) -> Self {
        Self::base(State::Revoked, error.to_result_json(), None, origin)
    }

    /// `date_done` as a time, accepting Celery's trailing `Z`.
    pub fn done_at(&self) -> Option<DateTime<Utc>> {
        self.date_done
            .as_deref()
            .and_then(super::message::parse_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::Protocol;

    fn message() -> TaskMessage {
        TaskMessage {
            id: "645f".into(),
            task: "worker.sleep".into(),
            args: vec![Value::from(3)],
            kwargs: Map::new(),
            embed: Map::new(),
            retries: 0,
            eta: None,
            expires: None,
            timelimit: (None, None),
            root_id: None,
            parent_id: None,
            group_id: None,
            ignore_result: false,
            protocol: Protocol::V2,
            headers: Map::new(),
        }
    }

    #[test]
    fn success_has_celery_fields_in_order() {
        let m = message();
        let origin = Origin {
            message: &m,
            queue: "shifts",
            hostname: "w1@vm",
            extended: false,
        };
        let json =
            serde_json::to_string(&ResultMeta::success(Value::from("pong"), origin)).unwrap();
        assert!(json.starts_with(r#"{"status":"SUCCESS","result":"pong","traceback":null,"children":[],"date_done":""#), "{json}");
        assert!(json.ends_with(r#","task_id":"645f"}"#), "{json}");
    }

    #[test]
    fn started_is_not_done_and_extended_fields_appear() {
        let m = message();
        let origin = Origin {
            message: &m,
            queue: "shifts",
            hostname: "w1@vm",
            extended: true,
        };
        let meta = ResultMeta::started(origin);
        let v = serde_json::to_value(&meta).unwrap();
        assert_eq!(v["date_done"], Value::Null);
        assert_eq!(v["result"]["hostname"], "w1@vm");
        assert_eq!(v["name"], "worker.sleep");
        assert_eq!(v["queue"], "shifts");
        assert_eq!(v["retries"], 0);
    }

    #[test]
    fn failure_carries_the_exception_shape() {
        let m = message();
        let origin = Origin {
            message: &m,
            queue: "q",
            hostname: "h",
            extended: false,
        };
        let err = TaskError::value_error("bad input").with_cause("parse error");
        let v = serde_json::to_value(ResultMeta::failure(&err, origin)).unwrap();
        assert_eq!(
            v["result"],
            serde_json::json!({"exc_type":"ValueError","exc_message":["bad input"],"exc_module":"builtins"})
        );
        assert!(
            v["traceback"]
                .as_str()
                .unwrap()
                .contains("caused by: parse error")
        );
    }
}
