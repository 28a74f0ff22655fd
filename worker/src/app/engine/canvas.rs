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
//! The executor calls [`CanvasRunner::prepare`] before running a task, so that a canvas this
//! worker cannot honour is refused before anything runs, never half-run.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::publisher::{Declare, Publisher};
use crate::adapters::results::ResultWriter;
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
}

pub(crate) struct CanvasRunner {
    publisher: Arc<Publisher>,
    results: Arc<ResultWriter>,
    /// Task name -> queue, for signatures that name no queue.
    routes: HashMap<String, String>,
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
        Self {
            publisher,
            results,
            routes,
        }
    }

    /// Check a message's whole canvas before its task runs. Also builds (without sending) every
    /// message the canvas may send, so an option that cannot be sent (a countdown out of
    /// range) is refused now rather than after the task ran.
    pub(crate) fn prepare(&self, message: &TaskMessage) -> Result<Canvas, CanvasError> {
        let canvas = canvas::parse(&message.embed)?;
        if canvas.chord.is_some() {
            return Err(CanvasError::Unsupported {
                what: "a chord (this worker does not finish chord headers yet)".into(),
                at: "chord".into(),
            });
        }
        let dry = json!(null);
        let sigs = canvas
            .callbacks
            .iter()
            .chain(canvas.errbacks.iter())
            .chain(canvas.chain.last());
        for sig in sigs {
            self.build(sig, Some(&dry), message, None, None)?;
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

    /// Send `sigs` as one group (fresh group id, `group_index` in order); the group's
    /// `children` entry.
    async fn send_group(
        &self,
        sigs: &[Signature],
        first: Option<&Value>,
        parent: &TaskMessage,
    ) -> Result<Value, SendError> {
        let gid = uuid::Uuid::new_v4().to_string();
        let mut members = Vec::with_capacity(sigs.len());
        for (i, sig) in sigs.iter().enumerate() {
            let id = self.send(sig, first, parent, None, Some((&gid, i))).await?;
            members.push(child(&id));
        }
        Ok(json!([[gid, null], members]))
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
        match canvas.callbacks.as_slice() {
            [] => {}
            [one] => children.push(child(
                &self.send(one, Some(value), message, None, None).await?,
            )),
            many => children.push(self.send_group(many, Some(value), message).await?),
        }
        if let Some((next, rest)) = canvas.chain.split_last() {
            let id = self
                .send(next, Some(value), message, Some(rest), None)
                .await?;
            children.push(child(&id));
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
        for (id, sig) in links.into_iter().filter(|_| store) {
            self.store_link_failure(id, sig, err, extended).await;
        }
        if !canvas.errbacks.is_empty() {
            let id = Value::String(message.id.clone());
            self.send_group(&canvas.errbacks, Some(&id), message)
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
        self.results.write(meta).await;
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
        if has_children || (canvas.callbacks.is_empty() && canvas.chain.is_empty()) {
            return Some(Ok(()));
        }
        let value = stored.get("result").cloned().unwrap_or(Value::Null);
        Some(self.on_success(message, canvas, &value).await.map(|_| ()))
    }
}
