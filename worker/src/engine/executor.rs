//! What happens to one delivery, start to finish.
//!
//! decode -> (dead-letter if it cannot be decoded) -> look the task up (NotRegistered +
//! dead-letter if unknown) -> skip if expired (REVOKED) -> wait for its eta -> STARTED -> run ->
//! SUCCESS or FAILURE -> ack. The ack comes last, after the outcome is stored: a crash anywhere
//! before it means RabbitMQ redelivers the message (at-least-once), and a stored SUCCESS is
//! never overwritten by the rerun's STARTED.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::dead_letter;
use crate::broker::publisher::Publisher;
use crate::celery::amqp_value::table_to_json;
use crate::celery::message::{RawMessage, decode};
use crate::celery::result::Origin;
use crate::celery::{DecodeFailure, ResultMeta, TaskError, TaskMessage};
use crate::registry::{CallArgs, JobContext, Registry};
use crate::results::ResultStore;

/// How results are written.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub hostname: String,
    pub track_started: bool,
    pub result_extended: bool,
    pub max_message_bytes: usize,
}

pub struct Executor {
    registry: Registry,
    results: ResultStore,
    publisher: Arc<Publisher>,
    settings: ExecutorSettings,
}

/// How a delivery is settled with the broker.
enum Settle {
    Ack,
    /// Back to the queue: we could not record the outcome, so someone must run it again.
    Requeue,
}

impl Executor {
    pub fn new(
        registry: Registry,
        results: ResultStore,
        publisher: Arc<Publisher>,
        settings: ExecutorSettings,
    ) -> Self {
        Self {
            registry,
            results,
            publisher,
            settings,
        }
    }

    /// Process one delivery and settle it with the broker. Never panics, never returns early
    /// without settling (except when the channel itself is gone, and then RabbitMQ requeues).
    pub async fn process(&self, queue: &str, delivery: Delivery) {
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(table_to_json)
            .unwrap_or_default();
        let raw = RawMessage {
            body: &delivery.data,
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            content_encoding: delivery
                .properties
                .content_encoding()
                .as_ref()
                .map(|s| s.as_str()),
            headers: &headers,
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
        };
        let settle = match decode(raw, self.settings.max_message_bytes) {
            Ok(message) => {
                let span = info_span!("task", task_id = %message.id, task = %message.task, queue, retries = message.retries);
                self.run_message(queue, &delivery, message)
                    .instrument(span)
                    .await
            }
            Err(failure) => self.refuse_undecodable(queue, &delivery, failure).await,
        };
        let result = match settle {
            Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
        };
        if let Err(e) = result {
            // The channel is gone; RabbitMQ will redeliver the message to someone.
            warn!(queue, error = %e, "could not settle a delivery; it will be redelivered");
        }
    }

    async fn run_message(&self, queue: &str, delivery: &Delivery, message: TaskMessage) -> Settle {
        let origin = Origin {
            message: &message,
            queue,
            hostname: &self.settings.hostname,
            extended: self.settings.result_extended,
        };

        let Some(job) = self.registry.get(&message.task) else {
            error!(task = %message.task, "Received unregistered task of type {:?}; moving it to {queue}.dead", message.task);
            let err = TaskError::not_registered(&message.task);
            return self
                .dead_letter_then_fail(queue, delivery, "not_registered", &err, Some(origin))
                .await;
        };

        if let Some(expires) = message.expires
            && Utc::now() > expires
        {
            info!(expired_at = %expires, "task expired before it ran; storing REVOKED");
            let ok = self
                .store(&ResultMeta::revoked(&TaskError::expired(), origin))
                .await;
            return if ok { Settle::Ack } else { Settle::Requeue };
        }

        if let Some(eta) = message.eta
            && let Ok(wait) = (eta - Utc::now()).to_std()
        {
            info!(eta = %eta, "waiting for the task's eta");
            tokio::time::sleep(wait).await;
        }

        let record = !message.ignore_result;
        if record && self.settings.track_started {
            // Best effort: a missing STARTED loses nothing, a missing final state does.
            if let Err(e) = self.results.store(&ResultMeta::started(origin)).await {
                warn!(error = %e, "could not store STARTED");
            }
        }

        info!("task started");
        let started = Instant::now();
        let ctx = JobContext {
            task_id: message.id.clone(),
            task: message.task.clone(),
            retries: message.retries,
            hostname: self.settings.hostname.clone(),
        };
        let call = CallArgs {
            args: message.args.clone(),
            kwargs: message.kwargs.clone(),
        };
        let outcome = AssertUnwindSafe(job.call(call, ctx))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(TaskError::runtime_error(panic_message(&panic))));
        let duration = started.elapsed();

        let meta = match &outcome {
            Ok(value) => {
                info!(
                    duration_ms = millis(duration),
                    outcome = "success",
                    "task finished"
                );
                ResultMeta::success(value.clone(), origin)
            }
            Err(err) => {
                warn!(duration_ms = millis(duration), outcome = "failure", error = %err, "task finished");
                ResultMeta::failure(err, origin)
            }
        };
        if record && !self.store(&meta).await {
            return Settle::Requeue;
        }
        Settle::Ack
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
        let origin = message.as_ref().map(|message| Origin {
            message,
            queue,
            hostname: &self.settings.hostname,
            extended: self.settings.result_extended,
        });
        self.dead_letter_then_fail(queue, delivery, reason, &err, origin)
            .await
    }

    /// Move the message to `<queue>.dead` first, then store FAILURE (when it has an id), so that
    /// by the time a Python caller sees the error the message is already in the dead-letter
    /// queue. A FAILURE that cannot be stored is logged, not retried by requeueing: the message
    /// itself is safe in the dead-letter queue.
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
                if let Some(origin) = origin {
                    self.store(&ResultMeta::failure(err, origin)).await;
                }
                Settle::Ack
            }
            Err(e) => {
                error!(queue, error = %e, "could not dead-letter a message; requeueing it");
                // Do not spin on a broker that refuses publishes.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Settle::Requeue
            }
        }
    }

    /// Store a result, retrying briefly; false when Redis stayed unreachable.
    async fn store(&self, meta: &ResultMeta) -> bool {
        let mut attempt = 0;
        loop {
            match self.results.store(meta).await {
                Ok(_) => return true,
                Err(e) if attempt < 4 => {
                    let wait = crate::config::backoff(attempt, Duration::from_secs(5));
                    warn!(error = %e, retry_in = ?wait, "could not store the result; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => {
                    error!(error = %e, status = meta.status.as_str(), "could not store the result; the message goes back to the queue");
                    return false;
                }
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("task panicked: {what}")
}
