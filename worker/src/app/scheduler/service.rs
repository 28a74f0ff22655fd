//! The scheduler as one part of the running service: the file is validated before anything
//! starts, the loops run until the service stops, and [`StatusReporter`] produces what
//! `/schedules` shows while keeping the schedule gauges of `/metrics` current.
//!
//! The composition root (`startup`) builds it for `worker run` and `worker scheduler` alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::adapters::redis_conn::RedisConn;
use chrono::Utc;
use chrono_tz::Tz;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{ScheduleFileError, SchedulerSettings, TickPublisher, check_file, status};
use crate::metrics::METRICS;

/// A validated scheduler, ready to run.
pub(crate) struct SchedulerService {
    settings: SchedulerSettings,
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
            redis,
            publisher,
        })
    }

    /// What `/schedules` asks.
    pub(crate) fn reporter(&self) -> StatusReporter {
        StatusReporter {
            path: self.settings.path.clone(),
            default_timezone: self.settings.default_timezone,
            key_prefix: self.settings.key_prefix.clone(),
            known_tasks: self.settings.known_tasks.clone(),
            redis: self.redis.clone(),
        }
    }

    /// Run until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        if let Err(e) = super::run(self.settings, self.redis, self.publisher, stop).await {
            error!(error = %e, "the scheduler stopped");
        }
    }
}

/// Reads the schedules and their last runs for `/schedules`.
#[derive(Clone)]
pub(crate) struct StatusReporter {
    path: PathBuf,
    default_timezone: Tz,
    key_prefix: String,
    known_tasks: HashMap<String, String>,
    redis: RedisConn,
}

impl StatusReporter {
    /// The listing `worker schedules --json` prints, or `{"error": ...}`.
    pub(crate) async fn report(&self) -> Value {
        let schedules = match check_file(&self.path, self.default_timezone, &self.known_tasks) {
            Ok((s, _)) => s,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let mut redis = self.redis.clone();
        match status(&schedules, &mut redis, &self.key_prefix, Utc::now()).await {
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
            Err(e) => json!({"error": format!("Redis: {e}")}),
        }
    }
}
