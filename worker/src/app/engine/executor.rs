//! What happens to one delivery, start to finish.
//!
//! decode (dead-letter if unreadable) -> look the task up (NotRegistered + dead-letter) -> check
//! its canvas (refuse what we cannot honour, see [`canvas`]) -> on a redelivery, skip it if its
//! SUCCESS is stored -> skip if expired or revoked (REVOKED) -> if its eta is far, park it in
//! RabbitMQ's delay topology (near: wait, then check expiry and revoke again) -> run within its
//! time limits, writing STARTED alongside -> send callbacks and the next chain step, then
//! SUCCESS; RETRY (republished); or FAILURE, then the chain's later links and the errbacks -> a
//! chord part records itself -> ack. The
//! ack comes last, after the outcome is recorded: a crash anywhere before it means RabbitMQ
//! redelivers the message (at-least-once), and a stored SUCCESS is never overwritten by the
//! rerun's STARTED.
//!
//! Each delivery is processed in isolation. A panic anywhere on its way (decoding, storing,
//! publishing — a job's own panic is already caught where it runs) becomes that message's
//! FAILURE and dead letter, never the end of its queue's worker. A message whose outcome cannot
//! be recorded goes back to its queue, at most [`requeues::MAX_ATTEMPTS`] times, then it is
//! parked in the dead-letter queue with the reason. Memory is bounded by an in-flight budget:
//! a delivery is decoded only once its body fits in what the deliveries being processed leave.
//!
//! Every task from decode to settled is held in the engine's [`Inflight`] registry (what remote
//! control's `active`/`reserved`/`scheduled` read); `revoke(terminate=True)` cancels its run
//! through the registry's handle, and the task is stored REVOKED (`terminated`) and acked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use lapin::message::Delivery;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::canvas::{self, CanvasRunner};
use super::inflight::Inflight;
use super::requeues::{self, MessageKey, Requeues};
use super::retry::{self, Decision};
use super::time_limit::{self, run_limited};
use crate::adapters::broker::dead_letter;
use crate::adapters::broker::publisher::{Declare, Publisher};
use crate::adapters::broker::settle::Incoming;
use crate::adapters::events::Events;
use crate::adapters::failures::{self, FailureLog};
use crate::adapters::results::ResultWriter;
use crate::app::control::revoked::Revoked;
use crate::app::registry::{CallArgs, ErasedJob, JobContext, Registry};
use crate::metrics::METRICS;
use crate::settings::{DelayQueueType, TimeLimits};
use crate::wire::delivery::{self, Delivered};
use crate::wire::events::{Event, RevokedHow};
use crate::wire::message::Limits;
use crate::wire::outgoing::MAX_DELAY;
use crate::wire::result::Origin;
use crate::wire::{
    DecodeFailure, OutgoingMessage, Properties, ResultMeta, State, TaskError, TaskMessage,
};

/// How tasks are run and results written.
#[derive(Debug, Clone)]
pub(crate) struct ExecutorSettings {
    pub hostname: String,
    pub track_started: bool,
    /// STARTED waits this long into the run; a job that finishes sooner never gets one.
    pub started_after: Duration,
    pub result_extended: bool,
    /// Skip a redelivered message whose SUCCESS is stored (see [`canvas`]).
    pub deduplicate_successful_tasks: bool,
    pub limits: Limits,
    /// Bytes of message bodies processed at once (at least one largest message).
    pub inflight_bytes: usize,
    /// An eta at most this far away is waited for in memory; a later one goes to the delay
    /// topology (at least 1 s: the topology counts whole seconds).
    pub eta_hold: Duration,
    /// The delay topology's queue type, declared before the first delayed publish.
    pub delayed_queue_type: DelayQueueType,
    pub time_limits: TimeLimits,
    /// Deliveries (quorum queues' `x-delivery-count`) after which a message is parked; 0 = none.
    pub max_deliveries: u32,
}

pub(crate) struct Executor {
    registry: Registry,
    results: Arc<ResultWriter>,
    publisher: Arc<Publisher>,
    settings: ExecutorSettings,
    /// The in-flight budget, one permit per KiB of body.
    budget: Semaphore,
    requeues: Requeues,
    /// The tasks held now, with their abort handles (remote control reads and cancels them).
    inflight: Arc<Inflight>,
    /// Revoked ids: checked before every run.
    revoked: Arc<Revoked>,
    /// Callbacks, chains and errbacks (see [`canvas`]).
    canvas: CanvasRunner,
    /// Celery events for Flower: one non-blocking call at each state change.
    events: Arc<Events>,
    /// Where failures and retries are noted for the status page (none in unit tests).
    failures: Option<FailureLog>,
}

/// How a delivery is settled with the broker.
enum Settle {
    Ack,
    /// Back to the queue: the outcome could not be recorded, so it must run again.
    Requeue {
        problem: String,
    },
}

/// Permits of the in-flight budget a body takes.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

/// The text of a panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Executor {
    pub(crate) fn new(
        registry: Registry,
        results: Arc<ResultWriter>,
        publisher: Arc<Publisher>,
        settings: ExecutorSettings,
    ) -> Self {
        let budget = settings.inflight_bytes.max(settings.limits.max_body_bytes);
        let canvas = CanvasRunner::new(
            Arc::clone(&publisher),
            Arc::clone(&results),
            registry.routes(),
        );
        Self {
            canvas,
            registry,
            results,
            publisher,
            budget: Semaphore::new(kib(budget) as usize),
            settings,
            requeues: Requeues::default(),
            inflight: Arc::default(),
            revoked: Arc::default(),
            events: Events::off(),
            failures: None,
        }
    }

    /// Note failures and retries in `log` (the status page's recent failures).
    pub(crate) fn with_failure_log(mut self, log: FailureLog) -> Self {
        self.failures = Some(log);
        self
    }

    /// One failure or retry for the status page; never waits (see [`FailureLog::note`]).
    fn note_failure(
        &self,
        kind: failures::Kind,
        queue: &str,
        message: &TaskMessage,
        err: &TaskError,
    ) {
        if let Some(log) = &self.failures {
            let worker = self.settings.hostname.as_str();
            let entry = failures::Entry::new(
                kind,
                &message.id,
                &message.task,
                queue,
                worker,
                message.retries,
                err,
            );
            log.note(entry);
        }
    }

    /// Send Celery events through `events`.
    pub(crate) fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = events;
        self
    }

    /// Share the held tasks and the revoked ids with remote control.
    pub(crate) fn with_remote_control(
        mut self,
        inflight: Arc<Inflight>,
        revoked: Arc<Revoked>,
    ) -> Self {
        self.inflight = inflight;
        self.revoked = revoked;
        self
    }

    /// Process one delivery and settle it with the broker. Never panics; when settling fails
    /// the channel is gone and RabbitMQ requeues the message by itself.
    pub(crate) async fn process(&self, queue: &str, incoming: Incoming) {
        let Incoming {
            delivery,
            settlements,
        } = incoming;
        // Oversized bodies are refused unread: they take one permit, not their size.
        let size = if delivery.data.len() > self.settings.limits.max_body_bytes {
            1
        } else {
            delivery.data.len()
        };
        let _permit = self.budget.acquire_many(kib(size)).await;
        let key = MessageKey::of(top_level_id(&delivery).as_deref(), &delivery.data);
        let decided = std::panic::AssertUnwindSafe(self.decide(queue, &delivery))
            .catch_unwind()
            .await;
        let settle = match decided {
            Ok(settle) => settle,
            Err(panic) => {
                METRICS.worker_panics.with_label_values(&[queue]).inc();
                let text = panic_text(panic.as_ref());
                error!(queue, panic = %text, "processing a message panicked; moving it to {queue}.dead");
                let err =
                    TaskError::runtime_error(format!("the worker failed on this message: {text}"));
                std::panic::AssertUnwindSafe(self.park_unsettled(
                    queue,
                    &delivery,
                    "worker_panic",
                    &err,
                ))
                .catch_unwind()
                .await
                .unwrap_or(Settle::Requeue {
                    problem: format!("panicked: {text}"),
                })
            }
        };
        let settle = match settle {
            Settle::Requeue { problem } => {
                let attempts = self.requeues.record(&key);
                if attempts >= requeues::MAX_ATTEMPTS {
                    error!(queue, attempts, problem = %problem, "a message could not be settled {attempts} times; parking it in {queue}.dead");
                    let err = TaskError::runtime_error(format!(
                        "the outcome could not be recorded after {attempts} attempts: {problem}"
                    ));
                    self.park_unsettled(queue, &delivery, "unsettled", &err)
                        .await
                } else {
                    Settle::Requeue { problem }
                }
            }
            ack => ack,
        };
        let tag = delivery.delivery_tag;
        match settle {
            // Sent by the channel's settlements, batched with others (see broker::settle).
            Settle::Ack => {
                self.requeues.forget(&key);
                settlements.ack(tag)
            }
            Settle::Requeue { .. } => {
                if let Some(id) = top_level_id(&delivery) {
                    self.events.send(|| Event::task_rejected(&id, true));
                }
                // Do not spin on a service that keeps failing.
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = settlements.requeue(tag).await {
                    warn!(queue, error = %e, "could not requeue a delivery; it will be redelivered");
                }
            }
        }
    }

    /// Wait while this worker runs `task_id`, at most its hard time limit (30 min without
    /// one). Only a running copy is waited for: it holds its slot and ends; a reserved one may
    /// be waiting for the slot this delivery holds.
    async fn wait_while_running(&self, task_id: &str) {
        if !self.inflight.is_active(task_id) {
            return;
        }
        info!("redelivered while its first delivery still runs here; waiting for that run");
        let limit = self
            .settings
            .time_limits
            .hard
            .unwrap_or(Duration::from_secs(1800))
            .saturating_add(Duration::from_secs(5));
        let waited = tokio::time::timeout(limit, async {
            while self.inflight.is_active(task_id) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if waited.is_err() {
            warn!("the first run of a redelivered task did not end in its time limit; going on");
        }
    }

    /// Decode and run the delivery; returns how to settle it.
    async fn decide(&self, queue: &str, delivery: &Delivery) -> Settle {
        // A message that was delivered this often and never settled (it takes the worker down
        // each time, say) is parked before it can do so again.
        let deliveries = delivery_count(delivery);
        if self.settings.max_deliveries > 0 && deliveries >= u64::from(self.settings.max_deliveries)
        {
            error!(
                queue,
                deliveries,
                "a message reached the delivery limit without being settled; moving it to {queue}.dead"
            );
            let err = TaskError::runtime_error(format!(
                "delivered {deliveries} times without being settled (WORKER_MAX_DELIVERIES={})",
                self.settings.max_deliveries
            ));
            return self
                .park_unsettled(queue, delivery, "delivery_limit", &err)
                .await;
        }
        let delivered = Delivered::new(&delivery.properties, &delivery.data);
        match delivery::read(delivered, self.settings.limits) {
            Ok(message) => {
                let span = info_span!("task", task_id = %message.id, task = %message.task, queue, retries = message.retries);
                self.run_message(queue, delivery, message)
                    .instrument(span)
                    .await
            }
            Err(failure) => self.refuse_undecodable(queue, delivery, failure).await,
        }
    }

    fn origin<'a>(&'a self, message: &'a TaskMessage, queue: &'a str) -> Origin<'a> {
        Origin {
            message,
            queue,
            hostname: &self.settings.hostname,
            extended: self.settings.result_extended,
        }
    }

    async fn run_message(&self, queue: &str, delivery: &Delivery, message: TaskMessage) -> Settle {
        let message = Arc::new(message);
        let origin = self.origin(&message, queue);
        let Some(job) = self.registry.get(&message.task) else {
            error!(task = %message.task, "Received unregistered task of type {:?}; moving it to {queue}.dead", message.task);
            let err = TaskError::not_registered(&message.task);
            return self
                .dead_letter_then_fail(queue, delivery, "not_registered", &err, Some(origin))
                .await;
        };

        // The whole canvas is checked before anything runs: refused, it is never half-run.
        let canvas = match self.canvas.prepare(&message).await {
            Ok(canvas) => canvas,
            Err(e) => {
                error!(error = %e, "refusing a task whose canvas this worker cannot honour; moving it to {queue}.dead");
                let err = canvas::refusal(&e);
                let settle = self
                    .dead_letter_then_fail(queue, delivery, e.reason(), &err, Some(origin))
                    .await;
                if matches!(settle, Settle::Ack) && record_of(&message) {
                    self.canvas
                        .fail_refused(&message, &err, self.settings.result_extended)
                        .await;
                }
                return settle;
            }
        };
        // A redelivery of a task still running here (its connection died under it, the broker
        // handed it out again, a failover): let that run end first, so that the check below
        // finds its SUCCESS rather than running the task a second time beside it.
        if delivery.redelivered && self.settings.deduplicate_successful_tasks {
            self.wait_while_running(&message.id).await;
        }
        // Only a redelivery can find its own SUCCESS stored; first deliveries skip the read.
        if delivery.redelivered
            && self.settings.deduplicate_successful_tasks
            && let Some(done) = self.canvas.already_succeeded(&message, &canvas).await
        {
            return match done {
                Ok(()) => Settle::Ack,
                Err(e) => Settle::Requeue {
                    problem: format!("sending the canvas of a task that already succeeded: {e}"),
                },
            };
        }

        if let Some(settle) = self.skipped(&message, &canvas, origin).await {
            return settle;
        }
        self.events.send(|| Event::task_received(&message));
        let held = self.inflight.enter(
            &message,
            queue,
            delivery.redelivered,
            *delivery.properties.priority(),
        );

        if let Some(eta) = message.eta
            && let Ok(wait) = (eta - Utc::now()).to_std()
        {
            if wait > MAX_DELAY {
                let err = TaskError::value_error(format!(
                    "eta {eta} is more than {} days away; the longest delay is {} days",
                    wait.as_secs() / 86_400,
                    MAX_DELAY.as_secs() / 86_400
                ));
                return self
                    .dead_letter_then_fail(queue, delivery, "eta_out_of_range", &err, Some(origin))
                    .await;
            }
            if wait > self.settings.eta_hold {
                return self.park(queue, delivery, origin, eta, wait).await;
            }
            held.scheduled(eta);
            // Also a message back from the delay topology, which counts whole seconds and so
            // may bring it up to a second early. A revoke with terminate ends the wait at once.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = held.abort().cancelled() => {}
            }
            // An expiry or a revoke can fall while the eta was waited for: Celery checks again.
            if let Some(settle) = self.skipped(&message, &canvas, origin).await {
                return settle;
            }
        }

        let record = record_of(&message);
        let track = record && self.settings.track_started;
        // `started_after` of 0 means Celery's own order: STARTED is stored, then the job runs.
        if track && self.settings.started_after.is_zero() {
            self.results
                .write_transient_state(&ResultMeta::started(origin))
                .await;
        }
        // Otherwise STARTED runs beside the job instead of before it, and only once the job has
        // run for `started_after`: a job that is done by then goes straight to its outcome, and
        // no task waits for the STARTED round trip. A STARTED that reaches Redis after the
        // outcome changes nothing (the store script keeps final states).
        let started = async {
            if track && !self.settings.started_after.is_zero() {
                tokio::time::sleep(self.settings.started_after).await;
                self.results
                    .write_transient_state(&ResultMeta::started(origin))
                    .await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        held.active();
        self.events.send(|| Event::task_started(&message.id));
        let began = Instant::now();
        let run = self.invoke(job.as_ref(), &message, queue, held.abort());
        tokio::pin!(run);
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => outcome,
            () = started => run.await,
        };
        match outcome {
            Ok(value) => {
                if reports_errors(&value) {
                    METRICS
                        .tasks_with_errors
                        .with_label_values(&[message.task.as_str(), queue])
                        .inc();
                }
                // Celery sends them before the SUCCESS is stored, so the result lists them.
                let children = match self.canvas.on_success(&message, &canvas, &value).await {
                    Ok(children) => children,
                    Err(e) => {
                        warn!(error = %e, "could not send the task's callbacks or chain step; the message goes back to the queue");
                        return Settle::Requeue {
                            problem: format!("sending the canvas: {e}"),
                        };
                    }
                };
                if record {
                    let mut meta = ResultMeta::success(value.clone(), origin);
                    meta.children = children;
                    if let Settle::Requeue { problem } = self.record(meta).await {
                        return Settle::Requeue { problem };
                    }
                }
                let runtime = began.elapsed().as_secs_f64();
                self.events
                    .send(|| Event::task_succeeded(&message.id, &value, runtime));
                self.chord_part(&message, &canvas, State::Success, value)
                    .await
            }
            // Cancelled by `revoke(terminate=True)`: Celery stores TaskRevokedError('terminated').
            Err(err) if held.abort().is_cancelled() => {
                info!("task terminated by a remote revoke; storing REVOKED");
                self.events
                    .send(|| Event::task_revoked(&message.id, RevokedHow::Terminated));
                if record
                    && let Settle::Requeue { problem } =
                        self.record(ResultMeta::revoked(&err, origin)).await
                {
                    return Settle::Requeue { problem };
                }
                self.chord_part(&message, &canvas, State::Revoked, err.to_result_json())
                    .await
            }
            Err(err) => match retry::decide(&err, message.retries, job.max_retries()) {
                Decision::Retry { countdown } => {
                    self.retry(queue, &message, &err, countdown, record).await
                }
                Decision::Fail(err) => {
                    self.events.send(|| Event::task_failed(&message.id, &err));
                    self.note_failure(failures::Kind::Failure, queue, &message, &err);
                    METRICS
                        .tasks_failed
                        .with_label_values(&[message.task.as_str(), queue])
                        .inc();
                    if record
                        && let Settle::Requeue { problem } =
                            self.record(ResultMeta::failure(&err, origin)).await
                    {
                        return Settle::Requeue { problem };
                    }
                    let chord =
                        self.chord_part(&message, &canvas, State::Failure, err.to_result_json());
                    if let Settle::Requeue { problem } = chord.await {
                        return Settle::Requeue { problem };
                    }
                    let extended = self.settings.result_extended;
                    match self
                        .canvas
                        .on_failure(&message, &canvas, &err, extended, record)
                        .await
                    {
                        Ok(()) => Settle::Ack,
                        Err(e) => {
                            warn!(error = %e, "could not send the task's errbacks; the message goes back to the queue");
                            Settle::Requeue {
                                problem: format!("sending the errbacks: {e}"),
                            }
                        }
                    }
                }
            },
        }
    }

    async fn invoke(
        &self,
        job: &dyn ErasedJob,
        message: &TaskMessage,
        queue: &str,
        abort: &CancellationToken,
    ) -> Result<Value, TaskError> {
        // Debug: at thousands of tasks a second, one line per task (`task finished`) is enough.
        debug!("task started");
        let labels = [message.task.as_str(), queue];
        METRICS.tasks_started.with_label_values(&labels).inc();
        METRICS.tasks_in_flight.inc();
        let started = Instant::now();
        let ctx = JobContext {
            task_id: message.id.clone(),
        };
        let call = CallArgs {
            args: message.args.clone(),
            kwargs: message.kwargs.clone(),
        };
        let limits = time_limit::for_message(self.settings.time_limits, message.timelimit);
        // Dropping the job's future is what stops it: a terminated job ends at its next await.
        let outcome = tokio::select! {
            outcome = run_limited(job.call(call, ctx), limits) => outcome,
            () = abort.cancelled() => Err(TaskError::revoked("terminated")),
        };
        METRICS.tasks_in_flight.dec();
        METRICS
            .task_duration
            .with_label_values(&[message.task.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if outcome.is_ok() {
            METRICS.tasks_succeeded.with_label_values(&labels).inc();
        }
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(_) => info!(duration_ms, outcome = "success", "task finished"),
            Err(e) => {
                warn!(duration_ms, outcome = "failure", error = %e, transient = e.transient, "task finished")
            }
        }
        outcome
    }

    /// Celery's `task.retry()`: the same id, `retries + 1`, an eta, back to the same queue.
    async fn retry(
        &self,
        queue: &str,
        message: &TaskMessage,
        err: &TaskError,
        countdown: Duration,
        record: bool,
    ) -> Settle {
        // `decide` keeps countdowns within MAX_DELAY, so this cannot overflow; be safe anyway.
        let Some(eta) = chrono::Duration::from_std(countdown)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
        else {
            return Settle::Requeue {
                problem: format!("retry countdown {countdown:?} is out of range"),
            };
        };
        let retry = OutgoingMessage::retry(queue, message, eta);
        // A backoff longer than the hold waits in the delay topology (whole seconds, as kombu
        // counts them; the rest is waited for when it comes back), a shorter one in memory.
        let published = if countdown > self.settings.eta_hold {
            match OutgoingMessage::delayed(retry, countdown.as_secs()) {
                Ok(delayed) => self.publish_delayed(queue, &delayed).await,
                Err(e) => {
                    return Settle::Requeue {
                        problem: format!("retry countdown {countdown:?}: {e}"),
                    };
                }
            }
        } else {
            self.publisher.publish(&retry, Declare::CeleryQueue).await
        };
        match published {
            Ok(()) => {
                self.note_failure(failures::Kind::Retry, queue, message, err);
                info!(countdown_s = countdown.as_secs_f64(), retries = message.retries + 1, error = %err, "task will be retried");
                self.events.send(|| Event::task_retried(&message.id, err));
                METRICS
                    .tasks_retried
                    .with_label_values(&[message.task.as_str(), queue])
                    .inc();
                if record {
                    self.results
                        .write_transient_state(&ResultMeta::retry(err, self.origin(message, queue)))
                        .await;
                }
                Settle::Ack
            }
            Err(e) => {
                warn!(error = %e, "could not publish the retry; the message goes back to the queue");
                Settle::Requeue {
                    problem: format!("publishing the retry: {e}"),
                }
            }
        }
    }

    /// Move a message whose eta is far away into the delay topology, then ack it (only after
    /// RabbitMQ confirmed the copy). The copy is the message as it came — body, headers, id,
    /// `eta` — so whoever consumes it when it comes back, this worker or a Python one, runs it.
    async fn park(
        &self,
        queue: &str,
        delivery: &Delivery,
        origin: Origin<'_>,
        eta: chrono::DateTime<Utc>,
        wait: Duration,
    ) -> Settle {
        let original = OutgoingMessage::republish(
            queue,
            delivery.data.to_vec(),
            Properties::from(&delivery.properties),
        );
        // Whole seconds, truncated as kombu's producers do: it comes back early by under a
        // second and is waited for in memory.
        let delayed = match OutgoingMessage::delayed(original, wait.as_secs()) {
            Ok(delayed) => delayed,
            Err(e) => {
                // Only a queue name too long for a routing key gets here (the wait is checked
                // against MAX_DELAY before): it can never be delayed, so it cannot run.
                let err = TaskError::value_error(format!("cannot delay this message: {e}"));
                return self
                    .dead_letter_then_fail(queue, delivery, "delay_impossible", &err, Some(origin))
                    .await;
            }
        };
        match self.publish_delayed(queue, &delayed).await {
            Ok(()) => {
                info!(eta = %eta, countdown_s = wait.as_secs(), "eta is far: parked in the delay topology");
                Settle::Ack
            }
            Err(e) => {
                warn!(error = %e, "could not park a delayed task; it goes back to the queue");
                Settle::Requeue {
                    problem: format!("parking the delayed task: {e}"),
                }
            }
        }
    }

    /// Publish into the delay topology, with a confirm, and count it.
    async fn publish_delayed(
        &self,
        queue: &str,
        delayed: &OutgoingMessage,
    ) -> Result<(), crate::adapters::broker::BrokerError> {
        self.publisher
            .publish(delayed, Declare::Delayed(self.settings.delayed_queue_type))
            .await?;
        METRICS.messages_delayed.with_label_values(&[queue]).inc();
        Ok(())
    }

    /// A message we cannot even read: dead-letter it, and store FAILURE if it named an id.
    async fn refuse_undecodable(
        &self,
        queue: &str,
        delivery: &Delivery,
        failure: DecodeFailure,
    ) -> Settle {
        let reason = failure.error.reason();
        error!(queue, reason, task_id = ?failure.task_id, task = ?failure.task, error = %failure.error, "cannot decode message; moving it to {queue}.dead");
        let err = TaskError::new("kombu.exceptions", "DecodeError", failure.error.to_string());
        let message = failure
            .task_id
            .as_deref()
            .map(|id| TaskMessage::minimal(id, failure.task.as_deref()));
        let origin = message.as_ref().map(|m| self.origin(m, queue));
        self.dead_letter_then_fail(queue, delivery, reason, &err, origin)
            .await
    }

    /// Move the message to `<queue>.dead` first, then store FAILURE (when it has an id), so that
    /// by the time a Python caller sees the error the message is already in the dead-letter queue.
    async fn dead_letter_then_fail(
        &self,
        queue: &str,
        delivery: &Delivery,
        reason: &str,
        err: &TaskError,
        origin: Option<Origin<'_>>,
    ) -> Settle {
        match dead_letter::dead_letter(
            &self.publisher,
            queue,
            &delivery.data,
            &delivery.properties,
            reason,
            &err.to_string(),
        )
        .await
        {
            Ok(()) => {
                METRICS
                    .messages_dead_lettered
                    .with_label_values(&[queue, reason])
                    .inc();
                if let Some(origin) = &origin {
                    self.events
                        .send(|| Event::task_failed(&origin.message.id, err));
                }
                match origin {
                    Some(origin) => self.record(ResultMeta::failure(err, origin)).await,
                    None => Settle::Ack,
                }
            }
            Err(e) => {
                error!(queue, error = %e, "could not dead-letter a message; requeueing it");
                Settle::Requeue {
                    problem: format!("dead-lettering: {e}"),
                }
            }
        }
    }

    /// A final result: stored in Redis or queued in RabbitMQ, then the delivery is acked; when
    /// neither takes it the delivery goes back to its queue, so the outcome is not lost.
    async fn record(&self, meta: ResultMeta) -> Settle {
        match self.results.write(meta).await {
            Ok(_) => Settle::Ack,
            Err(e) => {
                error!(error = %e, "the result has nowhere to go; the message goes back to its queue");
                Settle::Requeue {
                    problem: e.to_string(),
                }
            }
        }
    }

    /// A chord header part's outcome is stored: record it in the chord (see [`canvas`]).
    async fn chord_part(
        &self,
        message: &TaskMessage,
        canvas: &crate::wire::canvas::Canvas,
        state: State,
        result: Value,
    ) -> Settle {
        match self
            .canvas
            .chord_part(message, canvas, state, &result)
            .await
        {
            Ok(()) => Settle::Ack,
            Err(e) => {
                warn!(error = %e, "could not record the chord part; the message goes back to the queue");
                Settle::Requeue {
                    problem: format!("recording the chord part: {e}"),
                }
            }
        }
    }

    /// How to settle a task that must not run: its expiry has passed, or its id was revoked
    /// (Celery's `Request.revoked`). REVOKED is stored (for a revoke, unless the task ignores
    /// its result, as Celery does) and a chord part records itself as revoked. None: it may run.
    async fn skipped(
        &self,
        message: &TaskMessage,
        canvas: &crate::wire::canvas::Canvas,
        origin: Origin<'_>,
    ) -> Option<Settle> {
        let (err, store, how) = match message.expires {
            Some(expires) if Utc::now() > expires => {
                info!(expired_at = %expires, "task expired before it ran; storing REVOKED");
                (TaskError::expired(), true, RevokedHow::Expired)
            }
            _ if self.revoked.contains(&message.id, Utc::now()) => {
                info!("Discarding revoked task: {}[{}]", message.task, message.id);
                (
                    TaskError::revoked("revoked"),
                    !message.ignore_result,
                    RevokedHow::ByRevoke,
                )
            }
            _ => return None,
        };
        self.events.send(|| Event::task_revoked(&message.id, how));
        if store
            && let Settle::Requeue { problem } =
                self.record(ResultMeta::revoked(&err, origin)).await
        {
            return Some(Settle::Requeue { problem });
        }
        Some(
            self.chord_part(message, canvas, State::Revoked, err.to_result_json())
                .await,
        )
    }

    /// A message that cannot be settled the normal way: to the dead-letter queue, with FAILURE
    /// stored under its id when it has one.
    async fn park_unsettled(
        &self,
        queue: &str,
        delivery: &Delivery,
        reason: &str,
        err: &TaskError,
    ) -> Settle {
        let table = delivery.properties.headers().clone().unwrap_or_default();
        let message = top_level_id(delivery).map(|id| {
            TaskMessage::minimal(&id, delivery::top_level_string(&table, "task").as_deref())
        });
        let origin = message.as_ref().map(|m| self.origin(m, queue));
        self.dead_letter_then_fail(queue, delivery, reason, err, origin)
            .await
    }
}

/// Whether the task's outcome is stored (Celery's `ignore_result`).
fn record_of(message: &TaskMessage) -> bool {
    !message.ignore_result
}

/// Whether a job's result lists per-row errors (`{"errors": [...]}`, StaffProBot's reports): the
/// run did its work, and what it could not do is in the result, counted for alerts.
fn reports_errors(value: &Value) -> bool {
    value
        .get("errors")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty())
}

/// The task id a delivery carries (`id` header, else the correlation id), if any.
/// Earlier deliveries of this message, as a quorum queue counts them (`x-delivery-count`,
/// absent on the first delivery and on classic queues: 0).
fn delivery_count(delivery: &Delivery) -> u64 {
    use lapin::types::AMQPValue;
    let Some(table) = delivery.properties.headers().as_ref() else {
        return 0;
    };
    match table.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(n)) => u64::from(*n),
        _ => 0,
    }
}

fn top_level_id(delivery: &Delivery) -> Option<String> {
    let table = delivery.properties.headers().clone().unwrap_or_default();
    let correlation_id = delivery.properties.correlation_id().as_ref();
    delivery::task_id(&table, correlation_id.map(|c| c.as_str()))
}
