//! The scheduler's commands: `worker check-schedules [FILE]`, `worker schedules [--json]`, and
//! `worker scheduler` (the scheduler alone, without consuming, built by the same composition
//! root as `worker run`).

use std::path::Path;

use chrono::Utc;
use clap::Args;
use tracing::warn;

use super::Outcome;
use crate::adapters::redis_conn;
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
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub schedules: ScheduleSettings,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
    let schedules = load(&args.schedules.schedules_file, conn)?;
    let mut redis = redis_conn::connect(&redis_conn::RedisTarget::new(conn), Some(3)).await?;
    let status = scheduler::status(&schedules, &mut redis, &conn.key_prefix, Utc::now()).await?;
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
