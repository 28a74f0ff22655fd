//! The scheduler's commands: `worker check-schedules [FILE]`, `worker schedules [--json]`, and
//! `worker scheduler` (the scheduler alone, without consuming). `worker run` starts the same
//! scheduler through [`start`].

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use clap::Args;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Outcome;
use crate::broker::publisher::Publisher;
use crate::config::{ConnectionSettings, ScheduleSettings};
use crate::http::SchedulesSource;
use crate::metrics::METRICS;
use crate::registry::catalogue;
use crate::results::connect_redis;
use crate::scheduler::{self, Schedule, SchedulerSettings, TickPublisher};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The file to check (default: SCHEDULES_FILE, else schedules.toml).
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub schedules: ScheduleSettings,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Prefix of the worker's Redis keys (must match the workers').
    #[arg(long, env = "WORKER_KEY_PREFIX", default_value = "worker:")]
    pub key_prefix: String,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub schedules: ScheduleSettings,
    /// Prefix of the worker's Redis keys (claims and state).
    #[arg(long, env = "WORKER_KEY_PREFIX", default_value = "worker:")]
    pub key_prefix: String,
}

fn load(path: &Path, conn: &ConnectionSettings) -> anyhow::Result<Vec<Schedule>> {
    let (schedules, warnings) =
        scheduler::check_file(path, conn.default_timezone, &catalogue().routes())?;
    for w in warnings {
        warn!("{w}");
    }
    Ok(schedules)
}

pub fn check(conn: &ConnectionSettings, args: CheckArgs) -> anyhow::Result<Outcome> {
    let path = args
        .file
        .or_else(|| std::env::var_os("SCHEDULES_FILE").map(Into::into))
        .unwrap_or_else(|| "schedules.toml".into());
    match scheduler::check_file(&path, conn.default_timezone, &catalogue().routes()) {
        Ok((schedules, warnings)) => {
            for w in &warnings {
                println!("warning: {w}");
            }
            for s in &schedules {
                println!("{}", scheduler::describe(s, Utc::now()));
            }
            println!("{}: {} schedules, ok", path.display(), schedules.len());
            Ok(Outcome::Success)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(Outcome::Failed)
        }
    }
}

pub async fn list(conn: &ConnectionSettings, args: ListArgs) -> anyhow::Result<Outcome> {
    let schedules = load(&args.schedules.schedules_file, conn)?;
    let (_, mut redis) = connect_redis(&conn.redis_url_with_db(), Some(3)).await?;
    let status = scheduler::status(&schedules, &mut redis, &args.key_prefix, Utc::now()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        for s in &status {
            println!("{s}");
        }
    }
    Ok(Outcome::Success)
}

/// Validate the file and start the scheduler in the background; the returned source serves
/// `/schedules` and keeps the schedule gauges of `/metrics` current.
pub fn start(
    conn: &ConnectionSettings,
    path: &Path,
    key_prefix: &str,
    known_tasks: std::collections::HashMap<String, String>,
    redis: ConnectionManager,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SchedulesSource)> {
    // The file error already names the file, the line and the problem (and its cause).
    let (schedules, warnings) = scheduler::check_file(path, conn.default_timezone, &known_tasks)
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\n(fix the file, point SCHEDULES_FILE elsewhere, or pass --no-scheduler)"
            )
        })?;
    for w in warnings {
        warn!("{w}");
    }
    info!(file = %path.display(), schedules = schedules.len(), "scheduler starting");
    let mut settings = SchedulerSettings::new(path, conn.default_timezone, known_tasks.clone());
    settings.key_prefix = key_prefix.to_owned();
    let handle = tokio::spawn({
        let redis = redis.clone();
        let publisher: Arc<dyn TickPublisher> = publisher;
        async move {
            if let Err(e) = scheduler::run(settings, redis, publisher, stop).await {
                tracing::error!(error = %e, "the scheduler stopped");
            }
        }
    });
    let path = path.to_owned();
    let tz = conn.default_timezone;
    let prefix = key_prefix.to_owned();
    let source: SchedulesSource = Arc::new(move || {
        let (path, prefix, known, mut redis) = (
            path.clone(),
            prefix.clone(),
            known_tasks.clone(),
            redis.clone(),
        );
        async move {
            let schedules = match scheduler::check_file(&path, tz, &known) {
                Ok((s, _)) => s,
                Err(e) => return serde_json::json!({"error": e.to_string()}),
            };
            match scheduler::status(&schedules, &mut redis, &prefix, Utc::now()).await {
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
                Err(e) => serde_json::json!({"error": format!("Redis: {e}")}),
            }
        }
        .boxed()
    });
    Ok((handle, source))
}

/// `worker scheduler`: only the scheduler, until SIGTERM/SIGINT.
pub async fn run_alone(conn: &ConnectionSettings, args: SchedulerArgs) -> anyhow::Result<Outcome> {
    let (_, redis) = connect_redis(&conn.redis_url_with_db(), None).await?;
    let publisher = Arc::new(Publisher::new(&conn.rabbitmq_url));
    let stop = CancellationToken::new();
    let (handle, _) = start(
        conn,
        &args.schedules.schedules_file,
        &args.key_prefix,
        catalogue().routes(),
        redis,
        publisher,
        stop.clone(),
    )?;
    crate::shutdown::first_signal().await?;
    stop.cancel();
    let _ = handle.await;
    Ok(Outcome::Success)
}
