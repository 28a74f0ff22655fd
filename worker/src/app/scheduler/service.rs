//! The scheduler as one part of the running service: the file is validated before anything
//! starts, the loops run until the service stops, and [`StatusReporter`] produces what
//! `/schedules` shows while keeping the schedule gauges of `/metrics` current.
//!
//! The composition root (`startup`) builds it for `worker run` and `worker scheduler` alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use chrono::Utc;
use chrono_tz::Tz;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ScheduleFileError, SchedulerSettings, TickPublisher, check_file, status, store};
use crate::metrics::METRICS;

/// A validated scheduler, ready to run.
pub(crate) struct SchedulerService {
    settings: SchedulerSettings,
    postgres: PgPool,
    redis: RedisConn,
    publisher: Arc<dyn TickPublisher>,
}

impl SchedulerService {
    /// Validate `path` (an invalid file stops startup, with the file, line and problem) and
    /// prepare the scheduler.
    pub(crate) fn prepare(
        path: &Path,
        default_timezone: Tz,
        key_prefix: &str,
        known_tasks: HashMap<String, String>,
        postgres: PgPool,
        redis: RedisConn,
        publisher: Arc<dyn TickPublisher>,
    ) -> Result<Self, ScheduleFileError> {
        let (schedules, warnings) = check_file(path, default_timezone, &known_tasks)?;
        for w in warnings {
            warn!("{w}");
        }
        info!(file = %path.display(), schedules = schedules.len(), "scheduler starting");
        let mut settings = SchedulerSettings::new(path, default_timezone, known_tasks);
        settings.key_prefix = key_prefix.to_owned();
        Ok(Self {
            settings,
            postgres,
            redis,
            publisher,
        })
    }

    /// Check `pauses` before each tick (see `scheduler::pause`).
    pub(crate) fn with_pauses(mut self, pauses: Arc<super::Pauses>) -> Self {
        self.settings.pauses = Some(pauses);
        self
    }

    /// What `/schedules` asks.
    pub(crate) fn reporter(&self) -> StatusReporter {
        StatusReporter {
            path: self.settings.path.clone(),
            default_timezone: self.settings.default_timezone,
            key_prefix: self.settings.key_prefix.clone(),
            known_tasks: self.settings.known_tasks.clone(),
            postgres: self.postgres.clone(),
            redis: self.redis.clone(),
        }
    }

    /// Run until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        if !self.import_legacy_state(&stop).await {
            return;
        }
        if let Err(e) = super::run(self.settings, self.postgres, self.publisher, stop).await {
            error!(error = %e, "the scheduler stopped");
        }
    }
}

impl SchedulerService {
    /// Copies the last runs the previous release kept in Redis into PostgreSQL, before any
    /// schedule loop reads its history (see `store::import_legacy_last_run`). PostgreSQL is
    /// waited for, as the loops would wait; Redis errors only skip the import. Returns false
    /// when stopped first.
    async fn import_legacy_state(&self, stop: &CancellationToken) -> bool {
        let Ok((schedules, _)) = check_file(
            &self.settings.path,
            self.settings.default_timezone,
            &self.settings.known_tasks,
        ) else {
            // The scheduler itself reports the file.
            return true;
        };
        let prefix = &self.settings.key_prefix;
        let mut redis = self.redis.clone();
        let mut failures: u32 = 0;
        'retry: loop {
            if let Err(e) = store::ensure_table(&self.postgres).await {
                failures = failures.saturating_add(1);
                warn!(error = %e, "cannot prepare the scheduler's table in PostgreSQL; retrying");
                if !pause(stop, failures).await {
                    return false;
                }
                continue;
            }
            for schedule in &schedules {
                let name = schedule.name.as_str();
                match store::import_legacy_last_run(&mut redis, &self.postgres, prefix, name).await
                {
                    Ok(Some(tick)) => {
                        info!(schedule = name, tick = %tick, "last run imported from Redis into PostgreSQL")
                    }
                    Ok(None) => {}
                    Err(store::ImportError::Redis(e)) => {
                        warn!(schedule = name, error = %e, "cannot read the previous release's schedule state from Redis; not imported");
                    }
                    Err(store::ImportError::Postgres(e)) => {
                        failures = failures.saturating_add(1);
                        warn!(schedule = name, error = %e, "cannot import schedule state into PostgreSQL; retrying");
                        if !pause(stop, failures).await {
                            return false;
                        }
                        continue 'retry;
                    }
                }
            }
            return true;
        }
    }
}

/// Waits 1, 2, 4 .. 30 s, unless stopped first (then false).
async fn pause(stop: &CancellationToken, failures: u32) -> bool {
    let wait =
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(30));
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Reads the schedules and their last runs for `/schedules`.
#[derive(Clone)]
pub(crate) struct StatusReporter {
    path: PathBuf,
    default_timezone: Tz,
    key_prefix: String,
    known_tasks: HashMap<String, String>,
    postgres: PgPool,
    redis: RedisConn,
}

impl StatusReporter {
    /// The schedules as the file says now (the status page's "run now" looks them up here).
    pub(crate) fn load(&self) -> Result<Vec<super::Schedule>, ScheduleFileError> {
        check_file(&self.path, self.default_timezone, &self.known_tasks).map(|(s, _)| s)
    }

    /// The listing `worker schedules --json` prints, or `{"error": ...}`.
    pub(crate) async fn report(&self) -> Value {
        let schedules = match check_file(&self.path, self.default_timezone, &self.known_tasks) {
            Ok((s, _)) => s,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let mut redis = self.redis.clone();
        match status(
            &schedules,
            &self.postgres,
            &mut redis,
            &self.key_prefix,
            Utc::now(),
        )
        .await
        {
            Ok(status) => {
                for s in &status {
                    if let Some(next) = s.next.first() {
                        METRICS
                            .schedule_next_tick
                            .with_label_values(&[s.name.as_str()])
                            .set(next.utc.timestamp() as f64);
                    }
                    if let Some(last) = &s.last_run {
                        METRICS
                            .schedule_last_tick
                            .with_label_values(&[s.name.as_str()])
                            .set(last.tick.utc.timestamp() as f64);
                    }
                }
                serde_json::to_value(status).unwrap_or(Value::Null)
            }
            // A server's error text could quote a URL: passwords are masked.
            Err(e) => json!({"error": crate::settings::redact_text(&e.to_string())}),
        }
    }
}
