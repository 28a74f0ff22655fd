//! Printing a result for people (default) or scripts (`--json`), and its exit code.

use serde_json::{Value, json};

use super::Outcome;
use crate::wire::{ResultMeta, State};

/// Exit code of a task state.
pub(crate) fn outcome_of(state: State) -> Outcome {
    match state {
        State::Success => Outcome::Success,
        State::Failure | State::Revoked => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// Print `meta` (None = PENDING) and return the matching outcome.
pub(crate) fn print_result(
    task_id: &str,
    meta: Option<&ResultMeta>,
    raw: Option<&Value>,
    as_json: bool,
    timed_out: bool,
) -> Outcome {
    let state = meta.map_or(State::Pending, |m| m.status);
    if as_json {
        let doc = raw.cloned().unwrap_or_else(|| match meta {
            Some(m) => serde_json::to_value(m).unwrap_or(Value::Null),
            None => json!({"task_id": task_id, "status": "PENDING", "result": null}),
        });
        println!("{doc}");
    } else {
        println!("id:      {task_id}");
        println!(
            "state:   {}{}",
            state.as_str(),
            if timed_out {
                " (timed out waiting)"
            } else {
                ""
            }
        );
        if let Some(m) = meta {
            if let Some(name) = &m.name {
                println!("task:    {name}");
            }
            if let Some(date) = &m.date_done {
                println!("date:    {date}");
            }
            match m.status {
                State::Failure | State::Revoked | State::Retry => {
                    let r = &m.result;
                    let module = r.get("exc_module").and_then(Value::as_str).unwrap_or("");
                    let kind = r
                        .get("exc_type")
                        .and_then(Value::as_str)
                        .unwrap_or("Exception");
                    let message = r
                        .get("exc_message")
                        .map(|v| match v {
                            Value::Array(items) => {
                                items.iter().map(plain).collect::<Vec<_>>().join(", ")
                            }
                            other => plain(other),
                        })
                        .unwrap_or_default();
                    println!("error:   {module}.{kind}: {message}");
                    if let Some(tb) = &m.traceback {
                        println!("traceback:\n{tb}");
                    }
                }
                _ => println!("result:  {}", m.result),
            }
        } else {
            println!("(no result stored: the task is pending, unknown, or its result expired)");
        }
    }
    outcome_of(state)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
