//! Diagnostic tasks for operators and tests: `worker.ping`, `worker.echo`, `worker.sleep`,
//! `worker.fail`. They touch no database, so they show whether the worker itself is healthy.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{CallArgs, Job, JobContext, Registry};
use crate::celery::TaskError;
use crate::job_args;

pub fn register(registry: &mut Registry) {
    registry
        .register(Ping)
        .register(Echo)
        .register(Sleep)
        .register(Fail);
}

/// `worker.ping()` -> `"pong"`.
pub struct Ping;

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
pub struct Echo;

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
pub struct Sleep;

#[derive(Debug, Deserialize)]
pub struct SleepArgs {
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

/// `worker.fail(message)`: always fails with `ValueError(message)`.
pub struct Fail;

#[derive(Debug, Deserialize)]
pub struct FailArgs {
    #[serde(default = "default_message")]
    message: String,
}
fn default_message() -> String {
    "worker.fail was asked to fail".into()
}
job_args!(FailArgs, ["message"]);

impl Job for Fail {
    const NAME: &'static str = "worker.fail";
    const QUEUE: &'static str = "celery";
    const DESCRIPTION: &'static str = "fails with ValueError(message)";
    type Args = FailArgs;
    type Output = Value;

    async fn run(&self, args: FailArgs, _: JobContext) -> Result<Value, TaskError> {
        Err(TaskError::value_error(args.message))
    }
}
