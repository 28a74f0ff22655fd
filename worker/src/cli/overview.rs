//! `worker queues` and `worker failures`: the status page's queue table and recent failures on
//! the command line.

use anyhow::Context;
use chrono::Utc;
use clap::Args;

use super::Outcome;
use crate::adapters::failures::{FailureLog, Kind};
use crate::adapters::overview::{self, QueueRow};
use crate::adapters::redis_conn;
use crate::app::scheduler::parse_duration;
use crate::settings::ConnectionSettings;

#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    /// The task queues (each with its `.dead`); default: the worker's queues.
    #[arg(
        long = "queue",
        env = "WORKER_QUEUES",
        value_delimiter = ',',
        default_value = "notifications,shifts,analytics"
    )]
    pub queues: Vec<String>,
    /// The undelivered-results queue.
    #[arg(
        long,
        env = "WORKER_UNDELIVERED_RESULTS_QUEUE",
        default_value = "worker.results.undelivered"
    )]
    pub undelivered_results_queue: String,
    /// Also list the delay levels that do not exist.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn queues(conn: &ConnectionSettings, args: QueuesArgs) -> anyhow::Result<Outcome> {
    let watched = overview::watched(&args.queues, &args.undelivered_results_queue);
    let rows = overview::depths(&conn.rabbitmq_url, &watched)
        .await
        .context("reading the queues")?;
    let rows: Vec<QueueRow> = rows
        .into_iter()
        .filter(|r| args.all || r.depth.is_some() || r.role != overview::Role::Delayed)
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Success);
    }
    println!(
        "{:<48} {:>10} {:>10}  role",
        "queue", "messages", "consumers"
    );
    for r in &rows {
        let (m, c) = match r.depth {
            Some(d) => (d.messages.to_string(), d.consumers.to_string()),
            None => ("missing".to_owned(), "-".to_owned()),
        };
        let role = serde_json::to_value(r.role)?;
        println!(
            "{:<48} {m:>10} {c:>10}  {}",
            r.name,
            role.as_str().unwrap_or("")
        );
    }
    Ok(Outcome::Success)
}

#[derive(Debug, Args)]
pub(crate) struct FailuresArgs {
    /// How far back (`30m`, `1h`, `7d`).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn failures(
    conn: &ConnectionSettings,
    args: FailuresArgs,
) -> anyhow::Result<Outcome> {
    let back = parse_duration(&args.since).context("--since")?;
    let since = Utc::now()
        .checked_sub_signed(back)
        .context("--since is too far back")?;
    let redis = redis_conn::connect(&redis_conn::RedisTarget::new(conn), Some(3)).await?;
    let log = FailureLog::new(redis, &conn.key_prefix);
    let entries = log.since(since, args.limit).await?;
    for e in &entries {
        if args.json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            let kind = match e.kind {
                Kind::Failure => "FAILURE",
                Kind::Retry => "RETRY",
            };
            println!(
                "{}  {kind:<7}  {}  {}  queue={} worker={} retries={}\n    {}: {}",
                e.at.format("%Y-%m-%d %H:%M:%S UTC"),
                e.task,
                e.task_id,
                e.queue,
                e.worker,
                e.retries,
                e.exc_type,
                e.exception.replace('\n', "\n    "),
            );
        }
    }
    if !args.json {
        println!("{} in the last {}", entries.len(), args.since);
    }
    Ok(Outcome::Success)
}
