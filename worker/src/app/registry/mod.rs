//! The registry: the one place where Celery task names meet jobs.
//!
//! A [`Job`] declares its Celery name, its default queue and its typed arguments; the registry
//! turns a decoded message's `args`/`kwargs` into those types (see [`args`]) and runs the job.
//! Jobs never see the broker, and the broker never sees job types.

pub(crate) mod args;
pub(crate) mod diagnostic;
pub(crate) mod staffprobot;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

pub(crate) use args::{CallArgs, JobArgs};

use crate::wire::TaskError;

/// What a running job may know about its request.
#[derive(Debug, Clone)]
pub(crate) struct JobContext {
    /// The Celery task id: jobs that must not repeat an effect on a rerun key it on this.
    pub task_id: String,
}

/// A task this worker can run.
pub(crate) trait Job: Send + Sync + 'static {
    /// The Celery task name producers use, e.g. `core.celery.tasks.shift_tasks.auto_close_shifts`.
    const NAME: &'static str;
    /// The queue the task is routed to when a producer or schedule names none.
    const QUEUE: &'static str;
    /// One line for `worker tasks` and the README.
    const DESCRIPTION: &'static str;
    /// Retries of transient errors (and of requested retries) before FAILURE.
    const MAX_RETRIES: u32 = 5;

    type Args: JobArgs + Send;
    type Output: Serialize + Send;

    fn run(
        &self,
        args: Self::Args,
        ctx: JobContext,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// A registered job with its types erased.
pub(crate) trait ErasedJob: Send + Sync {
    fn name(&self) -> &'static str;
    fn queue(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn max_retries(&self) -> u32;
    /// Bind the call to the job's parameters without running it.
    fn bind(&self, call: &CallArgs) -> Result<(), TaskError>;
    fn call(&self, call: CallArgs, ctx: JobContext)
    -> BoxFuture<'static, Result<Value, TaskError>>;
}

struct Registered<J>(Arc<J>);

impl<J: Job> ErasedJob for Registered<J> {
    fn name(&self) -> &'static str {
        J::NAME
    }
    fn queue(&self) -> &'static str {
        J::QUEUE
    }
    fn description(&self) -> &'static str {
        J::DESCRIPTION
    }
    fn max_retries(&self) -> u32 {
        J::MAX_RETRIES
    }
    fn bind(&self, call: &CallArgs) -> Result<(), TaskError> {
        J::Args::bind(J::NAME, call).map(drop)
    }
    fn call(
        &self,
        call: CallArgs,
        ctx: JobContext,
    ) -> BoxFuture<'static, Result<Value, TaskError>> {
        let job = Arc::clone(&self.0);
        async move {
            let args = J::Args::bind(J::NAME, &call)?;
            let output = job.run(args, ctx).await?;
            serde_json::to_value(output).map_err(|e| {
                TaskError::runtime_error(format!("{}: result is not JSON: {e}", J::NAME))
            })
        }
        .boxed()
    }
}

/// Celery task name -> job.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    jobs: BTreeMap<&'static str, Arc<dyn ErasedJob>>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Register a job; a second job with the same name replaces the first.
    pub(crate) fn register<J: Job>(&mut self, job: J) -> &mut Self {
        self.jobs
            .insert(J::NAME, Arc::new(Registered(Arc::new(job))));
        self
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn ErasedJob>> {
        self.jobs.get(name).cloned()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn ErasedJob>> {
        self.jobs.values()
    }

    /// Task name -> default queue, for the scheduler's routing and validation.
    pub(crate) fn routes(&self) -> std::collections::HashMap<String, String> {
        self.jobs
            .values()
            .map(|j| (j.name().to_owned(), j.queue().to_owned()))
            .collect()
    }
}

/// Every job this binary runs: the diagnostic tasks, then StaffProBot's. Without a job context
/// the registry can name and route tasks but not run StaffProBot's.
/// The diagnostic tasks only when `diagnostics` is set (`WORKER_DIAGNOSTIC_TASKS`).
pub(crate) fn registry(jobs: Option<Arc<jobs::Context>>, diagnostics: bool) -> Registry {
    let mut registry = Registry::new();
    if diagnostics {
        diagnostic::register(&mut registry);
    }
    staffprobot::register(&mut registry, jobs);
    registry
}

/// Every task name this binary knows, for naming and routing (`worker send`, `tasks`, the
/// scheduler's validation), whether or not a running worker enables the diagnostic ones.
pub(crate) fn catalogue() -> Registry {
    registry(None, true)
}
