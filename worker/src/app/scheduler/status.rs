//! What `worker schedules [--json]` shows: each schedule, its next fire times, and its last run
//! with the state of that run's result.
//!
//! The last run comes from the scheduler's table in PostgreSQL (see `store`); the result state
//! from the Celery result key `celery-task-meta-<task id>` in Redis (a missing key reads as
//! `PENDING`, exactly as Celery's `AsyncResult.state` does).

use std::fmt;

use chrono::{DateTime, FixedOffset, Utc};
use redis::aio::ConnectionLike;
use serde::Serialize;
use sqlx::PgPool;

use super::duration::format_duration;
use super::schedule::{CatchUp, FirstStart, Schedule, Timing};
use super::store::read_last_run;

/// How many upcoming fire times a listing shows.
pub const UPCOMING: usize = 3;

/// One schedule as `worker schedules` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub task: String,
    pub queue: String,
    /// The crontab expression, for `cron` schedules.
    pub cron: Option<String>,
    /// The interval (`"30m"`), for `every` schedules.
    pub every: Option<String>,
    pub timezone: String,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub catch_up_window: String,
    pub on_first_start: FirstStart,
    /// The next fire times (empty for a disabled schedule).
    pub next: Vec<FireTime>,
    pub last_run: Option<LastRunStatus>,
}

/// A fire time in the schedule's timezone and in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FireTime {
    pub local: DateTime<FixedOffset>,
    pub utc: DateTime<Utc>,
}

/// The last tick published for a schedule, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRunStatus {
    pub tick: FireTime,
    pub task_id: String,
    pub published_at: DateTime<Utc>,
    /// Celery state of the result: PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, ...
    pub state: String,
}

/// Why the listing could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Builds the listing. `key_prefix` is the scheduler's key prefix (`SchedulerSettings`); the last
/// runs are read from `postgres`, their results' states from `redis`.
pub async fn status<C: ConnectionLike + Send>(
    schedules: &[Schedule],
    postgres: &PgPool,
    redis: &mut C,
    key_prefix: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleStatus>, StatusError> {
    let mut out = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        let mut listed = describe(schedule, now);
        if let Some(run) = read_last_run(postgres, key_prefix, &schedule.name).await? {
            listed.last_run = Some(LastRunStatus {
                tick: fire_time(schedule, run.tick),
                state: result_state(redis, &run.task_id).await?,
                task_id: run.task_id,
                published_at: run.published_at,
            });
        }
        out.push(listed);
    }
    Ok(out)
}

/// A schedule and its next fire times, without reading any state (`last_run` is `None`): what
/// `worker check-schedules` prints.
pub fn describe(schedule: &Schedule, now: DateTime<Utc>) -> ScheduleStatus {
    let next = if schedule.enabled {
        schedule
            .upcoming(now, UPCOMING)
            .into_iter()
            .map(|at| fire_time(schedule, at))
            .collect()
    } else {
        Vec::new()
    };
    let (cron, every) = match &schedule.timing {
        Timing::Cron(expr) => (Some(expr.source().to_owned()), None),
        Timing::Every(interval) => (None, Some(format_duration(*interval))),
    };
    ScheduleStatus {
        name: schedule.name.clone(),
        task: schedule.task.clone(),
        queue: schedule.queue.clone(),
        cron,
        every,
        timezone: schedule.timezone.name().to_owned(),
        enabled: schedule.enabled,
        catch_up: schedule.catch_up,
        catch_up_window: format_duration(schedule.catch_up_window),
        on_first_start: schedule.on_first_start,
        next,
        last_run: None,
    }
}

fn fire_time(schedule: &Schedule, utc: DateTime<Utc>) -> FireTime {
    FireTime {
        local: utc.with_timezone(&schedule.timezone).fixed_offset(),
        utc,
    }
}

/// The Celery state stored for a task id; a missing key is PENDING, as in Celery.
async fn result_state<C: ConnectionLike + Send>(
    redis: &mut C,
    task_id: &str,
) -> redis::RedisResult<String> {
    let stored: Option<String> = redis::cmd("GET")
        .arg(format!("celery-task-meta-{task_id}"))
        .query_async(redis)
        .await?;
    Ok(match stored {
        None => "PENDING".to_owned(),
        Some(json) => serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|value| value.get("status")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "UNKNOWN".to_owned()),
    })
}

impl fmt::Display for ScheduleStatus {
    /// A human-readable block for the text listing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timing = match (&self.cron, &self.every) {
            (Some(cron), _) => format!("cron \"{cron}\""),
            (None, Some(every)) => format!("every {every}"),
            (None, None) => String::new(),
        };
        let disabled = if self.enabled { "" } else { "  (disabled)" };
        writeln!(f, "{}{disabled}", self.name)?;
        writeln!(f, "  task      {}  -> queue {}", self.task, self.queue)?;
        writeln!(f, "  when      {timing}  ({})", self.timezone)?;
        for (index, fire) in self.next.iter().enumerate() {
            let label = if index == 0 { "next" } else { "" };
            writeln!(
                f,
                "  {label:<9} {}  ({} UTC)",
                fire.local.format("%Y-%m-%d %H:%M:%S %:z"),
                fire.utc.format("%Y-%m-%d %H:%M:%S")
            )?;
        }
        match &self.last_run {
            Some(run) => write!(
                f,
                "  last run  {}  id {}  {} (published {} UTC)",
                run.tick.local.format("%Y-%m-%d %H:%M:%S %:z"),
                run.task_id,
                run.state,
                run.published_at.format("%Y-%m-%d %H:%M:%S")
            ),
            None => write!(f, "  last run  never"),
        }
    }
}
