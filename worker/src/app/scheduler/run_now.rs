//! "Run now": one schedule's task published once, at once, outside its timing — the status
//! page's button and `worker schedules run NAME`.
//!
//! It goes through the same [`TickPublisher`] as the scheduler's ticks, so the message is the
//! one a tick would publish (task, queue, args, kwargs, the beat headers), with the tick time
//! set to now. It claims nothing and records no last run: the regular ticks go on as before.

use chrono::Utc;

use super::{BoxError, Schedule, TickMessage, TickPublisher};

/// Why a schedule could not be run now.
#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    #[error("no schedule named {0:?} in the schedules file")]
    Unknown(String),
    #[error("publishing the task failed: {0}")]
    Publish(BoxError),
}

/// Publish schedule `name`'s task once; returns the message published (its `task_id`).
pub async fn run_now(
    schedules: &[Schedule],
    name: &str,
    publisher: &dyn TickPublisher,
) -> Result<TickMessage, RunNowError> {
    let schedule = schedules
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| RunNowError::Unknown(name.chars().take(200).collect()))?;
    let tick = Utc::now();
    let message = TickMessage {
        task_id: uuid::Uuid::new_v4().to_string(),
        task: schedule.task.clone(),
        queue: schedule.queue.clone(),
        args: schedule.args.clone(),
        kwargs: schedule.kwargs.clone(),
        expires: schedule
            .expires
            .and_then(|expires| tick.checked_add_signed(expires)),
        schedule: schedule.name.clone(),
        tick,
    };
    publisher
        .publish(&message)
        .await
        .map_err(RunNowError::Publish)?;
    Ok(message)
}
