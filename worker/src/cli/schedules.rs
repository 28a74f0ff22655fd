//! The scheduler's commands: `worker check-schedules [FILE]`, `worker schedules [--json]`,
//! `worker schedules run|pause|resume NAME`, and
//! `worker scheduler` (the scheduler alone, without consuming, built by the same composition
//! root as `worker run`).

use std::path::Path;

use chrono::Utc;
use clap::Args;
use tracing::warn;

use super::Outcome;
use crate::adapters::broker::publisher::Publisher;
use crate::adapters::{postgres, redis_conn};
use crate::app::registry::catalogue;
use crate::app::scheduler::{self, Schedule};
use crate::settings::{ConnectionSettings, ScheduleSettings, ServiceSettings};
use crate::shutdown::Shutdown;
use crate::startup::{Settings, Stopped, Worker};

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The file to check (default: SCHEDULES_FILE, else schedules.toml).
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub schedules: ScheduleSettings,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<ScheduleAction>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleAction {
    /// Publish schedule NAME's task once, now (as its tick would; the regular ticks go on).
    Run {
        #[command(flatten)]
        schedules: ScheduleSettings,
        /// The schedule's name in the schedules file.
        name: String,
    },
    /// Pause schedule NAME on every replica, across restarts, until resumed (PostgreSQL).
    Pause {
        #[command(flatten)]
        schedules: ScheduleSettings,
        name: String,
    },
    /// Resume a paused schedule: it ticks again from its next fire time.
    Resume {
        #[command(flatten)]
        schedules: ScheduleSettings,
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    #[command(flatten)]
    pub schedules: ScheduleSettings,
    #[command(flatten)]
    pub service: ServiceSettings,
}

fn load(path: &Path, conn: &ConnectionSettings) -> anyhow::Result<Vec<Schedule>> {
    let (schedules, warnings) =
        scheduler::check_file(path, conn.default_timezone, &catalogue().routes())?;
    for w in warnings {
        warn!("{w}");
    }
    Ok(schedules)
}

pub(crate) fn check(conn: &ConnectionSettings, args: CheckArgs) -> anyhow::Result<Outcome> {
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

pub(crate) async fn list(conn: &ConnectionSettings, args: ListArgs) -> anyhow::Result<Outcome> {
    match args.action {
        Some(ScheduleAction::Run { schedules, name }) => {
            return run_now(conn, &schedules, &name).await;
        }
        Some(ScheduleAction::Pause { schedules, name }) => {
            return pause(conn, &schedules, &name, true).await;
        }
        Some(ScheduleAction::Resume { schedules, name }) => {
            return pause(conn, &schedules, &name, false).await;
        }
        None => {}
    }
    let schedules = load(&args.schedules.schedules_file, conn)?;
    let mut redis = redis_conn::connect(&redis_conn::RedisTarget::new(conn), Some(3)).await?;
    // The last runs are in PostgreSQL (the scheduler's table), their results in Redis.
    let pool = postgres::lazy_pool(&conn.database_url_for_sqlx(), 1)?;
    let status =
        scheduler::status(&schedules, &pool, &mut redis, &conn.key_prefix, Utc::now()).await;
    pool.close().await;
    let status = status?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        for s in &status {
            println!("{s}");
        }
    }
    Ok(Outcome::Success)
}

/// `worker scheduler`: only the scheduler (and its HTTP server), until SIGTERM/SIGINT.
pub(crate) async fn run_alone(
    conn: &ConnectionSettings,
    args: SchedulerArgs,
) -> anyhow::Result<Outcome> {
    let settings = Settings {
        connections: conn.clone(),
        service: args.service,
        schedules: Some(args.schedules.schedules_file),
        consume: None,
    };
    let worker = Worker::build(settings).await?;
    let shutdown = Shutdown::new();
    shutdown.on_signals()?;
    Ok(match worker.run_until_stopped(shutdown).await? {
        Stopped::Clean => Outcome::Success,
        Stopped::Fatal(_) => Outcome::Failed,
    })
}

/// `worker schedules run NAME`: through the same publisher as the scheduler's ticks.
async fn run_now(
    conn: &ConnectionSettings,
    settings: &ScheduleSettings,
    name: &str,
) -> anyhow::Result<Outcome> {
    let schedules = load(&settings.schedules_file, conn)?;
    let publisher = Publisher::new(&conn.rabbitmq_url, &super::send::cli_origin());
    match scheduler::run_now(&schedules, name, &publisher).await {
        Ok(message) => {
            println!("id: {}", message.task_id);
            println!("{name}: {} published to {}", message.task, message.queue);
            Ok(Outcome::Success)
        }
        Err(e @ scheduler::RunNowError::Unknown(_)) => {
            eprintln!("{e}");
            Ok(Outcome::Failed)
        }
        Err(e) => Err(e.into()),
    }
}

/// `worker schedules pause|resume NAME`: a row in PostgreSQL every replica checks.
async fn pause(
    conn: &ConnectionSettings,
    settings: &ScheduleSettings,
    name: &str,
    pause: bool,
) -> anyhow::Result<Outcome> {
    let schedules = load(&settings.schedules_file, conn)?;
    if !schedules.iter().any(|s| s.name == name) {
        eprintln!(
            "no schedule named {name:?} in {}",
            settings.schedules_file.display()
        );
        return Ok(Outcome::Failed);
    }
    let pauses = scheduler::Pauses::connect_lazy(&conn.database_url_for_sqlx(), &conn.key_prefix)
        .map_err(|_| anyhow::anyhow!("DATABASE_URL cannot be used"))?;
    let changed = if pause {
        pauses.pause(name).await
    } else {
        pauses.resume(name).await
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "PostgreSQL: {}",
            crate::settings::redact_text(&e.to_string())
        )
    })?;
    let state = if pause { "paused" } else { "resumed" };
    let already = if changed { "" } else { " (it already was)" };
    println!("{name}: {state}{already}");
    Ok(Outcome::Success)
}
