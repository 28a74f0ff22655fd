//! The scheduler: Celery beat's replacement, running inside every worker replica.
//!
//! Each entry of `schedules.toml` ticks on a crontab expression or a fixed interval; every tick
//! becomes one ordinary Celery v2 task message, published through a [`TickPublisher`] to the
//! schedule's queue, so a scheduled run is queued, retried, traced and inspected like any task.
//!
//! # Design decision: our own scheduler over `cron` 0.17 + `chrono-tz`, not apalis-cron
//!
//! apalis-cron 1.0 covers none of what beat's replacement must do: it has no catch-up after
//! downtime, no de-duplication across replicas (apalis#281: every replica would publish every
//! tick), and a tick polled late returns `OutOfRange`, which ends the worker for good
//! (apalis#334). Wrapping it would mean rebuilding all three around it. What is left of
//! scheduling — "when is the next tick" — is what the `cron` crate (the one apalis-cron uses)
//! already answers, so this module is a small loop over it:
//!
//! * **Exactly once across replicas, no leader.** Tick times are a pure function of the schedule
//!   (see `schedule`), so all replicas agree on them; each tick is claimed with
//!   `SET {prefix}schedule:{name}:tick:{unix_ts} NX PX <lease>` and only the claimer publishes.
//!   A failed publish releases the claim and a dead claimer's lease runs out, so no tick is lost
//!   and no failover wait exists (RedBeat's leader lock can take 25 minutes). See `store`.
//! * **Missed ticks.** `catch_up = "latest"` publishes the most recent missed tick once, within
//!   `catch_up_window`; `"skip"` publishes none; never a burst (see `decide`).
//! * **DST.** Crontab fields match wall-clock time in the schedule's timezone; a repeated local
//!   time fires once (first occurrence), a skipped one fires once at the end of the gap. The
//!   `cron` crate's own timezone iteration does neither, so this module maps wall-clock
//!   candidates to instants itself.
//! * **Crontab as operators know it.** 5-field expressions (6 with leading seconds), crontab(5)
//!   day-of-week numbering and day-of-month/day-of-week "either" rule (see `cron_expr`).
//! * **Hot reload** by polling the file and on SIGHUP; an invalid edit is refused and the running
//!   schedules continue (see `supervisor`).
//!
//! Beat semantics kept on purpose: crontab fields are matched in the schedule's timezone
//! (`DEFAULT_TIMEZONE` unless set) and an overdue entry fires once after a restart. Changed on
//! purpose: `every` ticks are aligned to the Unix epoch, not counted from process start, so that
//! all replicas compute the same tick times.
//!
//! Entry points: [`run`] (the scheduler loop), [`check_file`] (validation for
//! `worker check-schedules` and startup), [`status`] (the `worker schedules` listing).

mod cron_expr;
mod decide;
mod duration;
mod file;
mod runner;
mod schedule;
pub(crate) mod service;
mod status;
mod store;
mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use file::{ScheduleFileError, check_file, parse_schedules};
pub use schedule::{CatchUp, Schedule, Timing};
pub use status::{ScheduleStatus, describe, status};

/// Errors a publisher may return; the scheduler only logs them and retries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Publishes tick messages; the worker implements it over its RabbitMQ connection.
pub trait TickPublisher: Send + Sync + 'static {
    /// Publish one Celery v2 task message; `task_id` is chosen by the scheduler. Return only
    /// once the broker has the message (publisher confirm): an `Ok` makes the tick final.
    fn publish<'a>(&'a self, tick: &'a TickMessage) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// One tick, to be published as a Celery v2 task message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickMessage {
    /// The Celery task id (UUID), also the result key.
    pub task_id: String,
    /// Registered Celery task name.
    pub task: String,
    /// Routing: the queue (= routing key, Celery's default-exchange routing).
    pub queue: String,
    /// JSON array.
    pub args: serde_json::Value,
    /// JSON object.
    pub kwargs: serde_json::Value,
    /// When set, the message must not run after this instant (Celery's `expires`).
    pub expires: Option<DateTime<Utc>>,
    /// Name of the schedule that produced the tick.
    pub schedule: String,
    /// The tick time (the scheduled instant, not the publish time).
    pub tick: DateTime<Utc>,
}

/// How the scheduler is set up.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The schedules file (`schedules.toml`).
    pub path: PathBuf,
    /// Timezone for entries without `timezone` (the app's `DEFAULT_TIMEZONE`).
    pub default_timezone: chrono_tz::Tz,
    /// Prefix of every Redis key the scheduler writes; tests use a unique one each.
    pub key_prefix: String,
    /// Celery task names this worker registers -> their default queue.
    pub known_tasks: HashMap<String, String>,
    /// How often the file is re-read for hot reload; `None` reloads on SIGHUP only.
    pub poll_interval: Option<Duration>,
}

/// Default [`SchedulerSettings::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "worker:";

impl SchedulerSettings {
    /// Settings with the default key prefix (`worker:`) and a one-second file poll.
    pub fn new(
        path: impl Into<PathBuf>,
        default_timezone: chrono_tz::Tz,
        known_tasks: HashMap<String, String>,
    ) -> Self {
        Self {
            path: path.into(),
            default_timezone,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            known_tasks,
            poll_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Why the scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The schedules file is unreadable or invalid at startup (later edits are only logged).
    #[error(transparent)]
    File(#[from] ScheduleFileError),
}

/// Runs the scheduler until `shutdown` is cancelled.
///
/// Fails at once if the schedules file is invalid at startup. Afterwards it never fails: Redis
/// or broker errors are logged and retried, invalid edits are logged and ignored.
pub async fn run(
    settings: SchedulerSettings,
    redis: crate::adapters::redis_conn::RedisConn,
    publisher: Arc<dyn TickPublisher>,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let shared = runner::Shared {
        redis,
        publisher,
        key_prefix: settings.key_prefix.clone(),
        instance: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
    };
    supervisor::run(settings, shared, shutdown).await
}
