//! Diagnostic tasks for operators and tests: `worker.ping`, `worker.echo`, `worker.sleep`,
//! `worker.fail`. They touch no database, so they show whether the worker itself is healthy.
//! They run only with `WORKER_DIAGNOSTIC_TASKS=true`: they would otherwise run on every queue a
//! production worker consumes, for anyone who can publish there. None blocks a thread.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::args::job_args;
use super::{CallArgs, Job, JobContext, Registry};
use crate::wire::TaskError;

pub(crate) fn register(registry: &mut Registry) {
    registry
        .register(Ping)
        .register(Echo)
        .register(Sleep)
        .register(Fail);
}

/// `worker.ping()` -> `"pong"`.
pub(crate) struct Ping;

impl Job for Ping {
    const NAME: &'static str = "worker.ping";
    const QUEUE: &'static str = "celery";
    const DESCRIPTION: &'static str = "returns \"pong\"";
    type Args = ();
    type Output = &'static str;

    async fn run(&self, _: (), _: JobContext) -> Result<Self::Output, TaskError> {
        Ok("pong")
    }
}

/// `worker.echo(*args, **kwargs)` -> `{"args": [...], "kwargs": {...}}`.
pub(crate) struct Echo;

impl Job for Echo {
    const NAME: &'static str = "worker.echo";
    const QUEUE: &'static str = "celery";
    const DESCRIPTION: &'static str = "returns its arguments as {\"args\", \"kwargs\"}";
    type Args = CallArgs;
    type Output = Value;

    async fn run(&self, call: CallArgs, _: JobContext) -> Result<Value, TaskError> {
        Ok(json!({"args": call.args, "kwargs": call.kwargs}))
    }
}

/// `worker.sleep(seconds)` -> `{"slept": seconds}`.
pub(crate) struct Sleep;

#[derive(Debug, Deserialize)]
pub(crate) struct SleepArgs {
    seconds: f64,
}
job_args!(SleepArgs, ["seconds"]);

impl Job for Sleep {
    const NAME: &'static str = "worker.sleep";
    const QUEUE: &'static str = "celery";
    const DESCRIPTION: &'static str =
        "sleeps `seconds` (at most one day), returns {\"slept\": seconds}";
    type Args = SleepArgs;
    type Output = Value;

    async fn run(&self, args: SleepArgs, _: JobContext) -> Result<Value, TaskError> {
        if !(0.0..=86_400.0).contains(&args.seconds) {
            return Err(TaskError::value_error(format!(
                "seconds must be between 0 and 86400, got {}",
                args.seconds
            )));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        Ok(json!({"slept": args.seconds}))
    }
}

/// `worker.fail(message, retry_countdown=None, transient=False)`: always fails with
/// `ValueError(message)`; asks for a retry after `retry_countdown` seconds, or fails with a
/// transient error (retried with backoff), so that operators can watch the retry path.
pub(crate) struct Fail;

#[derive(Debug, Deserialize)]
pub(crate) struct FailArgs {
    #[serde(default = "default_message")]
    message: String,
    #[serde(default)]
    retry_countdown: Option<f64>,
    #[serde(default)]
    transient: bool,
}
fn default_message() -> String {
    "worker.fail was asked to fail".into()
}
job_args!(FailArgs, ["message", "retry_countdown", "transient"]);

impl Job for Fail {
    const NAME: &'static str = "worker.fail";
    const QUEUE: &'static str = "celery";
    const DESCRIPTION: &'static str = "fails with ValueError(message); retry_countdown=S asks for retries, transient=True backs off";
    const MAX_RETRIES: u32 = 3;
    type Args = FailArgs;
    type Output = Value;

    async fn run(&self, args: FailArgs, _: JobContext) -> Result<Value, TaskError> {
        let err = TaskError::value_error(args.message).transient(args.transient);
        match args
            .retry_countdown
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
        {
            Some(countdown) => Err(err.retry_in(countdown)),
            None => Err(err),
        }
    }
}
