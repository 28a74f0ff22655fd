//! `worker send TASK`: publish the same Celery v2 message a Python producer sends.

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;
use serde_json::{Map, Value};

use super::Outcome;
use super::result::{open_results, show};
use crate::adapters::broker::publisher::Publisher;
use crate::app::registry::catalogue;
use crate::settings::{ConnectionSettings, hostname};
use crate::wire::OutgoingTask;

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Celery task name, e.g. core.celery.tasks.shift_tasks.auto_close_shifts or worker.ping.
    pub task: String,
    /// Positional arguments as a JSON list.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Queue to publish to (default: the task's registered queue).
    #[arg(long)]
    pub queue: Option<String>,
    /// Run no earlier than this many seconds from now.
    #[arg(long)]
    pub countdown: Option<f64>,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// With --wait, print the stored JSON document.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn send(conn: &ConnectionSettings, a: SendArgs) -> anyhow::Result<Outcome> {
    let args: Vec<Value> =
        serde_json::from_str(&a.args).context("--args must be a JSON list, e.g. '[1, \"x\"]'")?;
    let kwargs: Map<String, Value> = serde_json::from_str(&a.kwargs)
        .context("--kwargs must be a JSON object, e.g. '{\"user_id\": 1}'")?;
    let queue = match a.queue {
        Some(q) => q,
        None => match catalogue().get(&a.task) {
            Some(job) => job.queue().to_owned(),
            None => bail!(
                "{} is not a task this worker knows; pass --queue to send it anyway",
                a.task
            ),
        },
    };
    let mut task = OutgoingTask::new(a.task, args, kwargs);
    if let Some(countdown) = a.countdown {
        let max = crate::wire::outgoing::MAX_DELAY;
        let delay = std::time::Duration::try_from_secs_f64(countdown)
            .ok()
            .filter(|d| *d <= max)
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .with_context(|| {
                format!(
                    "--countdown must be a number of seconds from 0 to {} (about 8.5 years), got {countdown}",
                    max.as_secs()
                )
            })?;
        task.eta = Utc::now().checked_add_signed(delay);
    }
    let publisher = Publisher::new(&conn.rabbitmq_url, &cli_origin());
    // Open Redis first with --wait so that a result can never be missed.
    let store = if a.wait {
        Some(open_results(conn).await?)
    } else {
        None
    };
    publisher
        .send_task(&queue, &task)
        .await
        .context("publishing the task")?;
    match store {
        None => {
            println!("{}", task.id);
            Ok(Outcome::Success)
        }
        Some(store) => show(&store, &task.id, true, a.timeout, a.json).await,
    }
}

/// The `origin` header of what the CLI publishes, as Celery writes it for a producer.
pub(crate) fn cli_origin() -> String {
    format!("gen{}@{}", std::process::id(), hostname())
}
