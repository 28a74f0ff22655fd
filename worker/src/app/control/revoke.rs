//! `revoke` (and `terminate`), as celery/worker/control.py `revoke`/`_revoke` does it, plus
//! what Celery keeps only in memory made durable:
//!
//! 1. the ids join the in-memory set the executor checks before every run (so a task that is
//!    still queued, held for its eta or parked in the delayed store is not run when it comes);
//! 2. they are added to Redis under the worker's key prefix, with the same bounds (so a replica
//!    that restarts, or starts later, still knows them for [`super::revoked::REVOKE_EXPIRES`]);
//! 3. REVOKED (`TaskRevokedError('revoked')`) is stored at once for each id whose state is
//!    still PENDING, RECEIVED or RETRY and that is not running here, as Celery 5.6+ does, so
//!    a client waiting on `.get()` learns it now rather than at the eta;
//! 4. with `terminate`, each held run of the ids is cancelled: the executor stores
//!    `TaskRevokedError('terminated')` and acks.
//!
//! Celery's `hello` (mingle, sent by a Python worker as it starts) is here too: it merges the
//! other node's revoked ids and answers with ours, so revokes also cross between Python
//! workers and ours.

use chrono::Utc;
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use super::revoked::{MAX_ID, MAX_REVOKED, expiry};
use super::{Panel, nok, ok, string_list, truthy};
use crate::wire::control::py_repr;
use crate::wire::result::Origin;
use crate::wire::{ResultMeta, State, TaskError, TaskMessage};

/// The most ids one `revoke` may carry.
pub(crate) const MAX_IDS_PER_REVOKE: usize = 10_000;

/// `revoke(task_id, terminate=False, signal=None)`; `terminate` forces termination (the
/// `terminate` command).
pub(crate) async fn revoke(
    panel: &Panel,
    arguments: &Map<String, Value>,
    force_terminate: bool,
) -> Value {
    let name = if force_terminate {
        "terminate"
    } else {
        "revoke"
    };
    let Some(task_id) = arguments.get("task_id") else {
        return nok(format!(
            "TypeError(\"{name}() missing 1 required positional argument: 'task_id'\")"
        ));
    };
    let mut ids = match string_list(Some(task_id), MAX_IDS_PER_REVOKE, MAX_ID) {
        Ok(ids) => ids,
        Err(why) => return nok(format!("task_id: {why}")),
    };
    ids.retain(|id| !id.is_empty());
    ids.sort();
    ids.dedup();
    let terminate = force_terminate || truthy(arguments.get("terminate"));

    let now = Utc::now();
    let until = expiry(now);
    for id in &ids {
        panel.revoked.insert(id, until, now);
    }
    if let Err(e) = panel.store.add(&ids, until, now).await {
        warn!(error = %e, "could not keep revoked ids in Redis; they hold in memory only");
    }
    for id in &ids {
        if !panel.inflight.is_active(id) {
            store_revoked(panel, id).await;
        }
    }

    if terminate {
        let terminated: Vec<&str> = ids
            .iter()
            .filter(|id| panel.inflight.terminate(id))
            .map(String::as_str)
            .collect();
        if terminated.is_empty() {
            return ok("terminate: tasks unknown");
        }
        info!(tasks = ?terminated, "Terminating tasks");
        return ok(format!("terminate: {}", terminated.join(", ")));
    }
    info!("Tasks flagged as revoked: {}", ids.join(", "));
    ok(format!("tasks {} flagged as revoked", py_set(&ids)))
}

/// Store REVOKED for `id` unless it has a result or another worker started it (Celery's
/// `_revoke`: only PENDING, RECEIVED, RETRY are replaced).
async fn store_revoked(panel: &Panel, id: &str) {
    let state = match panel.results.get(id).await {
        Ok(meta) => meta.map(|m| m.status),
        Err(e) => {
            warn!(task_id = id, error = %e, "Failed to mark task as revoked in backend");
            return;
        }
    };
    if !matches!(
        state,
        None | Some(State::Pending | State::Received | State::Retry)
    ) {
        return;
    }
    let message = TaskMessage::minimal(id, None);
    let origin = Origin {
        message: &message,
        queue: "",
        hostname: &panel.node,
        extended: false,
    };
    let meta = ResultMeta::revoked(&TaskError::revoked("revoked"), origin);
    if let Err(e) = panel.results.store(&meta).await {
        warn!(task_id = id, error = %e, "Failed to mark task as revoked in backend");
    }
}

/// `hello(from_node, revoked=None)`: merge the other node's revoked ids, answer with ours.
pub(crate) fn hello(panel: &Panel, arguments: &Map<String, Value>) -> Value {
    let from = arguments.get("from_node").and_then(Value::as_str);
    if from.is_none_or(|f| f == panel.node) {
        return Value::Null;
    }
    let now = Utc::now();
    // Ids only, oldest first; each counts from now, as Celery's merge_revoked does.
    if let Some(Value::Array(items)) = arguments.get("revoked") {
        let until = expiry(now);
        for id in items.iter().take(MAX_REVOKED).filter_map(Value::as_str) {
            panel.revoked.insert(id, until, now);
        }
    }
    json!({ "revoked": panel.revoked.ids(now), "clock": panel.clock() })
}

/// Python's repr of a set of strings: `{'a', 'b'}` (`set()` when empty).
fn py_set(ids: &[String]) -> String {
    if ids.is_empty() {
        return "set()".into();
    }
    let items: Vec<String> = ids.iter().map(|id| py_repr(id)).collect();
    format!("{{{}}}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_print_like_python() {
        assert_eq!(py_set(&[]), "set()");
        assert_eq!(py_set(&["a".into(), "b".into()]), "{'a', 'b'}");
    }
}
