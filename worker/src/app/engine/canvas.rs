//! Celery's canvas, carried out by our worker: what a task sends on when it succeeds (its
//! `link` callbacks, the next step of its chain), what a failure does to the rest of its chain
//! and to its `link_error` errbacks, and the redelivery check that keeps a task whose SUCCESS
//! is already stored from running (and sending its callbacks) twice.
//!
//! The semantics are Celery 5.7's (celery/app/trace.py `_dispatch_callbacks_and_chain`,
//! celery/backends/base.py `_fail_chain` and `_call_task_errbacks`):
//! - callbacks and the next chain step are published (with confirms) *before* SUCCESS is
//!   stored, and the stored result lists them in `children`; one callback is sent alone, several
//!   as a group (a fresh group id, each with its `group_index`);
//! - each gets the result prepended to its args unless it is immutable, `parent_id` = this task,
//!   the same `root_id`, and goes to the queue its signature names or else its task's route;
//! - a failure stores the same FAILURE under the id of every later chain link (none of them
//!   runs), then sends the errbacks as a group of tasks with the failed task's id prepended.
//!
//! - a chord header part, once its outcome is stored, records itself in the chord's Redis state
//!   with Celery's own script ([`ChordStore`]); the part that completes the header and wins the
//!   claim sends the body with the header results in order, or, when a part failed, stores
//!   `ChordError` under the body's id (and sends the body's errbacks) instead.
//!
//! The executor calls [`CanvasRunner::prepare`] before running a task, so that a canvas this
//! worker cannot honour is refused before anything runs, never half-run.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::publisher::{Declare, Publisher};
use crate::adapters::redis_conn::StoreError;
use crate::adapters::results::ResultWriter;
use crate::adapters::results::chord::{ChordStore, PartReturn};
use crate::wire::canvas::{self, Canvas, CanvasError, MAX_SIGNATURES, Signature};
use crate::wire::outgoing::SignatureCall;
use crate::wire::result::Origin;
use crate::wire::{OutgoingMessage, ResultMeta, State, TaskError, TaskMessage};

/// Celery's `task_default_queue`: where a task no route names goes.
const DEFAULT_QUEUE: &str = "celery";

/// Why sending the canvas on failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Canvas(#[from] CanvasError),
    #[error("chord state: {0}")]
    Chord(#[from] StoreError),
}

pub(crate) struct CanvasRunner {
    publisher: Arc<Publisher>,
    results: Arc<ResultWriter>,
    /// Task name -> queue, for signatures that name no queue.
    routes: HashMap<String, String>,
    chords: ChordStore,
}

/// The FAILURE a refused canvas stores: `NotImplementedError` for what this worker cannot do,
/// `ValueError` for a canvas that is malformed or too large.
pub(crate) fn refusal(e: &CanvasError) -> TaskError {
    match e {
        CanvasError::Unsupported { .. } => {
            TaskError::new("builtins", "NotImplementedError", e.to_string())
        }
        _ => TaskError::value_error(e.to_string()),
    }
}

/// Which part of which chord: the group id, the part's task id and its `group_index`.
#[derive(Debug, Clone, Copy)]
struct Part<'a> {
    gid: &'a str,
    tid: &'a str,
    index: Option<u64>,
}

/// One entry of a result's `children`, as Celery's `AsyncResult.as_tuple()` writes it.
fn child(id: &str) -> Value {
    json!([[id, null], null])
}

impl CanvasRunner {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        results: Arc<ResultWriter>,
        routes: HashMap<String, String>,
    ) -> Self {
        let chords = ChordStore::new(results.store());
        Self {
            publisher,
            results,
            routes,
            chords,
        }
    }

    /// Check a message's whole canvas before its task runs. Also builds (without sending) every
    /// message the canvas may send, so an option that cannot be sent (a countdown out of
    /// range) is refused now rather than after the task ran.
    pub(crate) async fn prepare(&self, message: &TaskMessage) -> Result<Canvas, CanvasError> {
        let canvas = canvas::parse(&message.embed)?;
        if canvas.chord.is_some()
            && let Some(gid) = message.group_id.as_deref()
        {
            match self.chords.layout_problem(gid).await {
                Ok(None) => {}
                Ok(Some(what)) => {
                    return Err(CanvasError::Unsupported {
                        what,
                        at: "chord".into(),
                    });
                }
                // Redis will be asked again when the part returns, and fail the delivery then.
                Err(e) => warn!(error = %e, "could not read the chord's state"),
            }
        }
        let dry = json!(null);
        let sigs = canvas
            .callbacks
            .iter()
            .chain(canvas.errbacks.iter())
            .chain(canvas.chain.last())
            .chain(canvas.chord.as_ref());
        for sig in sigs {
            match sig.group.as_ref().or(sig.chain_of.as_ref()) {
                Some(members) => {
                    for member in members {
                        self.build(member, Some(&dry), message, None, None)?;
                    }
                }
                None => {
                    self.build(sig, Some(&dry), message, None, None)?;
                }
            }
        }
        Ok(canvas)
    }

    fn default_queue(&self, task: &str) -> &str {
        self.routes
            .get(task)
            .map(String::as_str)
            .unwrap_or(DEFAULT_QUEUE)
    }

    fn build(
        &self,
        sig: &Signature,
        first: Option<&Value>,
        parent: &TaskMessage,
        chain: Option<&[Signature]>,
        group: Option<(&str, usize)>,
    ) -> Result<(String, OutgoingMessage), CanvasError> {
        let call = SignatureCall {
            signature: sig,
            first,
            parent_id: &parent.id,
            root_id: parent.root_id.as_deref().unwrap_or(&parent.id),
            chain,
            group,
            default_queue: self.default_queue(&sig.task),
        };
        OutgoingMessage::signature(call, self.publisher.origin(), Utc::now())
    }

    async fn send(
        &self,
        sig: &Signature,
        first: Option<&Value>,
        parent: &TaskMessage,
        chain: Option<&[Signature]>,
        group: Option<(&str, usize)>,
    ) -> Result<String, SendError> {
        let (id, out) = self.build(sig, first, parent, chain, group)?;
        self.publisher.publish(&out, Declare::CeleryQueue).await?;
        info!(child_id = %id, child = %sig.task, queue = %out.routing_key, "sent a canvas task");
        Ok(id)
    }

    /// Send `sigs` as one group (`group_index` in order) under the id the group was frozen
    /// with, else a fresh one; the group's `children` entry.
    async fn send_group(
        &self,
        sigs: &[Signature],
        first: Option<&Value>,
        parent: &TaskMessage,
        frozen: Option<&str>,
    ) -> Result<Value, SendError> {
        let gid = frozen.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let mut members = Vec::with_capacity(sigs.len());
        for (i, sig) in sigs.iter().enumerate() {
            let id = self.send(sig, first, parent, None, Some((&gid, i))).await?;
            members.push(child(&id));
        }
        Ok(json!([[gid, null], members]))
    }

    /// A chain sent as a link (Celery's `chain.apply_async((result,))`): each task gets its id
    /// now, the first is sent with the result and the rest as its chain. Returns the `children`
    /// entry: the last task's result with its parents, as `AsyncResult.as_tuple()` nests them.
    async fn send_chain(
        &self,
        tasks: &[Signature],
        value: &Value,
        parent: &TaskMessage,
    ) -> Result<Option<Value>, SendError> {
        let mut steps = tasks.to_vec();
        for step in &mut steps {
            if step.task_id().is_none() {
                let id = uuid::Uuid::new_v4().to_string();
                step.options.insert("task_id".into(), Value::String(id));
            }
        }
        let Some((head, rest)) = steps.split_first() else {
            return Ok(None);
        };
        let mut rest = rest.to_vec();
        rest.reverse();
        self.send(head, Some(value), parent, Some(&rest), None)
            .await?;
        let mut node = Value::Null;
        for step in &steps {
            node = json!([[step.task_id(), node], null]);
        }
        Ok(Some(node))
    }

    /// After the task succeeded, before its SUCCESS is stored: send its callbacks, then the
    /// next chain step with the rest of the chain. Returns the result's `children`.
    pub(crate) async fn on_success(
        &self,
        message: &TaskMessage,
        canvas: &Canvas,
        value: &Value,
    ) -> Result<Vec<Value>, SendError> {
        let mut children = Vec::new();
        // A chain is only ever the one callback (checked by the parser).
        if let [only] = canvas.callbacks.as_slice()
            && let Some(tasks) = &only.chain_of
        {
            children.extend(self.send_chain(tasks, value, message).await?);
        }
        // As Celery: one callback is sent as itself; of several, each group is sent on its
        // own and the plain ones together as one group.
        let (groups, plain): (Vec<&Signature>, Vec<&Signature>) = canvas
            .callbacks
            .iter()
            .filter(|s| s.chain_of.is_none())
            .partition(|s| s.group.is_some());
        for g in groups {
            let members = g.group.as_deref().unwrap_or_default();
            children.push(
                self.send_group(members, Some(value), message, g.task_id())
                    .await?,
            );
        }
        match plain.as_slice() {
            [] => {}
            [one] => children.push(child(
                &self.send(one, Some(value), message, None, None).await?,
            )),
            many => {
                let many: Vec<Signature> = many.iter().map(|s| (*s).clone()).collect();
                children.push(self.send_group(&many, Some(value), message, None).await?);
            }
        }
        if let Some((next, rest)) = canvas.chain.split_last() {
            match &next.group {
                // Only the chain's last step can be a group (checked by the parser).
                Some(members) => children.push(
                    self.send_group(members, Some(value), message, next.task_id())
                        .await?,
                ),
                None => {
                    let id = self
                        .send(next, Some(value), message, Some(rest), None)
                        .await?;
                    children.push(child(&id));
                }
            }
        }
        Ok(children)
    }

    /// After the task's FAILURE is stored: the same FAILURE under every later chain link's id,
    /// then the errbacks, sent as tasks with the failed task's id first.
    pub(crate) async fn on_failure(
        &self,
        message: &TaskMessage,
        canvas: &Canvas,
        err: &TaskError,
        extended: bool,
        store: bool,
    ) -> Result<(), SendError> {
        let links: Vec<(&str, &Signature)> = canvas
            .chain
            .iter()
            .filter_map(|s| s.task_id().map(|id| (id, s)))
            .collect();
        // Without a stored result (`ignore_result`) Celery stores none for the links either.
        for &(id, sig) in links.iter().filter(|_| store) {
            self.store_link_failure(id, sig, err, extended).await;
        }
        // A link that is a chord header part (a chain inside a chord's header) returns its
        // part as failed, or the chord would wait for it for ever (`_fail_chain`).
        for (id, sig) in links {
            let (Some(chord), Some(gid)) = (
                sig.options.get("chord").filter(|c| c.is_object()),
                sig.options.get("group_id").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(body) = canvas::signatures(Some(chord), "chain.options.chord")?.pop() else {
                continue;
            };
            let part = Part {
                gid,
                tid: id,
                index: sig.options.get("group_index").and_then(Value::as_u64),
            };
            let result = err.to_result_json();
            self.record_part(message, &body, part, State::Failure, &result)
                .await?;
        }
        if !canvas.errbacks.is_empty() {
            let id = Value::String(message.id.clone());
            self.send_group(&canvas.errbacks, Some(&id), message, None)
                .await?;
        }
        Ok(())
    }

    /// A message refused for its canvas: its chain's later links (and a chord's body) fail
    /// with it, so a caller waiting on the chain's end is told instead of waiting for ever.
    /// Reads the raw embed, since it did not parse; bounded like the parser.
    pub(crate) async fn fail_refused(
        &self,
        message: &TaskMessage,
        err: &TaskError,
        extended: bool,
    ) {
        let chain = message
            .embed
            .get("chain")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let chord = message.embed.get("chord").filter(|c| c.is_object());
        // A chord step completes with its body (Celery's `_fail_chain` descends into it, one
        // level here: the body is what a caller of the chain waits on).
        let bodies = chain.iter().take(MAX_SIGNATURES).filter_map(|raw| {
            (raw.get("subtask_type").and_then(Value::as_str) == Some("chord"))
                .then(|| raw.get("kwargs").and_then(|k| k.get("body")))
                .flatten()
        });
        let all: Vec<&Value> = chain
            .iter()
            .take(MAX_SIGNATURES)
            .chain(chord)
            .chain(bodies)
            .collect();
        for raw in all {
            let Some(id) = raw
                .get("options")
                .and_then(|o| o.get("task_id"))
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            let task = raw.get("task").and_then(Value::as_str).unwrap_or_default();
            let sig = Signature {
                task: task.to_owned(),
                args: Vec::new(),
                kwargs: Default::default(),
                options: Default::default(),
                immutable: false,
                group: None,
                chain_of: None,
            };
            self.store_link_failure(id, &sig, err, extended).await;
        }
    }

    /// FAILURE under a chain link's id, as `_fail_chain` stores it: the link's own name,
    /// arguments and group, no worker or queue (it never reached one).
    async fn store_link_failure(&self, id: &str, sig: &Signature, err: &TaskError, extended: bool) {
        let mut link = TaskMessage::minimal(id, Some(&sig.task));
        link.args = sig.args.clone();
        link.kwargs = sig.kwargs.clone();
        let text = |k: &str| {
            sig.options
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        link.group_id = text("group_id");
        link.parent_id = text("parent_id");
        let origin = Origin {
            message: &link,
            queue: "",
            hostname: "",
            extended,
        };
        let mut meta = ResultMeta::failure(err, origin);
        meta.worker = None;
        meta.queue = None;
        meta.retries = None;
        if let Err(e) = self.results.write(meta).await {
            warn!(task_id = id, error = %e, "could not store FAILURE under a later chain link's id");
        }
    }

    /// Once a chord header part's outcome is stored (SUCCESS, FAILURE or REVOKED): record it
    /// in the chord's state; when it completes the header and this worker wins the claim,
    /// send the body with the results in header order, or fail the body with `ChordError`
    /// when a part failed (Celery's `on_chord_part_return`).
    pub(crate) async fn chord_part(
        &self,
        message: &TaskMessage,
        canvas: &Canvas,
        state: State,
        result: &Value,
    ) -> Result<(), SendError> {
        let (Some(body), Some(gid)) = (&canvas.chord, message.group_id.as_deref()) else {
            return Ok(());
        };
        let index = message.headers.get("group_index").and_then(Value::as_u64);
        let part = Part {
            gid,
            tid: &message.id,
            index,
        };
        self.record_part(message, body, part, state, result).await
    }

    /// Record one part of the chord whose body is `body`; `sender` is the task on whose
    /// behalf it is recorded (the body's parent when this completes the header).
    async fn record_part(
        &self,
        sender: &TaskMessage,
        body: &Signature,
        part: Part<'_>,
        state: State,
        result: &Value,
    ) -> Result<(), SendError> {
        let Part { gid, tid, index } = part;
        let returned = self
            .chords
            .part_return(gid, tid, index, state.as_str(), result)
            .await?;
        let PartReturn::Claimed { token, parts } = returned else {
            return Ok(());
        };
        if let Some(err) = chord_error(&parts) {
            warn!(group_id = gid, error = %err, "a chord part failed; failing the chord's body");
            self.fail_body(body, &err).await?;
            self.chords.drop_size(gid).await?;
            return Ok(());
        }
        if !self.chords.extend_claim(gid, &token).await? {
            warn!(
                group_id = gid,
                "chord body not sent: the claim is no longer ours"
            );
            return Ok(());
        }
        let results = Value::Array(
            parts
                .into_iter()
                .map(|p| p.get(3).cloned().unwrap_or(Value::Null))
                .collect(),
        );
        if let Err(e) = self.send(body, Some(&results), sender, None, None).await {
            warn!(group_id = gid, error = %e, "could not send the chord's body");
            let err = TaskError::new(
                "celery.exceptions",
                "ChordError",
                format!("Callback error: {e}"),
            );
            self.fail_body(body, &err).await?;
        }
        if !self.chords.cleanup(gid, &token).await? {
            warn!(
                group_id = gid,
                "the chord's claim was lost before cleanup; its state is left to expire"
            );
        }
        Ok(())
    }

    /// Celery's `chord_error_from_stack`: the body's errbacks, its FAILURE, its chain's.
    async fn fail_body(&self, body: &Signature, err: &TaskError) -> Result<(), SendError> {
        let id = body
            .task_id()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let mut request = TaskMessage::minimal(&id, Some(&body.task));
        request.root_id = Some(id.clone());
        let errbacks =
            canvas::signatures(body.options.get("link_error"), "chord.options.link_error")?;
        if !errbacks.is_empty() {
            let first = Value::String(id.clone());
            self.send_group(&errbacks, Some(&first), &request, None)
                .await?;
        }
        let extended = true;
        self.store_link_failure(&id, body, err, extended).await;
        for link in canvas::signatures(body.options.get("chain"), "chord.options.chain")? {
            if let Some(link_id) = link.task_id() {
                self.store_link_failure(link_id, &link, err, extended).await;
            }
        }
        Ok(())
    }

    /// A redelivered message (only then: first deliveries pay nothing) whose SUCCESS is
    /// already stored: Celery 5.7's `worker_deduplicate_successful_tasks`. Returns `None` to
    /// run it; `Some(Ok)` when it must not run again — after sending its callbacks and chain
    /// step with the stored result if the stored SUCCESS lists no `children` (it was stored by
    /// someone who did not send them). A result that cannot be read runs the task, as Celery.
    pub(crate) async fn already_succeeded(
        &self,
        message: &TaskMessage,
        canvas: &Canvas,
    ) -> Option<Result<(), SendError>> {
        let stored = match self.results.stored(&message.id).await {
            Ok(Some(doc)) => doc,
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "could not read the stored result of a redelivered task; running it");
                return None;
            }
        };
        if stored.get("status").and_then(Value::as_str) != Some(State::Success.as_str()) {
            return None;
        }
        info!("redelivered task already succeeded; not running it again");
        let has_children = stored
            .get("children")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        let value = stored.get("result").cloned().unwrap_or(Value::Null);
        if !has_children
            && (!canvas.callbacks.is_empty() || !canvas.chain.is_empty())
            && let Err(e) = self.on_success(message, canvas, &value).await
        {
            return Some(Err(e));
        }
        // Beyond Celery, which returns here: a worker that died between storing a chord
        // part's SUCCESS and recording the part would leave the chord waiting for ever. The
        // part script counts each part once, so recording it again is harmless.
        Some(
            self.chord_part(message, canvas, State::Success, &value)
                .await,
        )
    }
}

/// `ChordError('Dependency <tid> raised <repr>')` for the first part that failed or was
/// revoked, as Celery's `_unpack_chord_result` raises it.
fn chord_error(parts: &[Value]) -> Option<TaskError> {
    parts.iter().find_map(|part| {
        let state = part.get(2).and_then(Value::as_str)?;
        if state != State::Failure.as_str() && state != State::Revoked.as_str() {
            return None;
        }
        let tid = part.get(1).and_then(Value::as_str).unwrap_or_default();
        let exc = part.get(3).cloned().unwrap_or(Value::Null);
        Some(TaskError::new(
            "celery.exceptions",
            "ChordError",
            format!("Dependency {tid} raised {}", exception_repr(&exc)),
        ))
    })
}

/// Python's `repr()` of a stored exception `{exc_type, exc_message: [args]}`: `ValueError('boom')`.
fn exception_repr(exc: &Value) -> String {
    let kind = exc
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let args: Vec<String> = match exc.get("exc_message") {
        Some(Value::Array(args)) => args.iter().map(py_repr).collect(),
        Some(other) => vec![py_repr(other)],
        None => Vec::new(),
    };
    format!("{kind}({})", args.join(", "))
}

/// Python's `repr()` of a JSON scalar; containers as JSON, which reads the same for lists.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) if s.contains('\'') && !s.contains('"') => format!("\"{s}\""),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chord_errors_read_like_celerys() {
        let parts = vec![
            json!([1, "a", "SUCCESS", 1]),
            json!([1, "b", "FAILURE", {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}]),
        ];
        let err = chord_error(&parts).unwrap();
        assert_eq!(err.exc_type, "ChordError");
        assert_eq!(err.message, "Dependency b raised ValueError('boom')");
        assert!(chord_error(&parts[..1]).is_none());
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
    }
}
