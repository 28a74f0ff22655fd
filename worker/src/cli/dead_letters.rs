//! `worker dead-letters list|replay`: what went to `<queue>.dead`, and sending it back.

use clap::{Args, Subcommand};

use super::Outcome;
use crate::adapters::broker::dead_letter::{self, DeadLetter};
use crate::adapters::broker::publisher::Publisher;
use crate::settings::ConnectionSettings;

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Show dead letters without removing them.
    List(Selection),
    /// Publish dead letters back to their queue (and remove them from the dead-letter queue).
    Replay(Selection),
}

#[derive(Debug, Args)]
pub(crate) struct Selection {
    /// Queues to look at (repeatable; default: the worker's queues).
    #[arg(
        long = "queue",
        env = "WORKER_QUEUES",
        value_delimiter = ',',
        default_value = "notifications,shifts,analytics"
    )]
    pub queues: Vec<String>,
    /// At most this many messages per queue.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn dead_letters(
    conn: &ConnectionSettings,
    cmd: DeadLettersCommand,
) -> anyhow::Result<Outcome> {
    match cmd {
        DeadLettersCommand::List(sel) => {
            for queue in &sel.queues {
                let letters = dead_letter::list(&conn.rabbitmq_url, queue, sel.limit).await?;
                print_letters(&letters, sel.json);
                if !sel.json {
                    println!("{queue}.dead: {} shown", letters.len());
                }
            }
        }
        DeadLettersCommand::Replay(sel) => {
            let publisher = Publisher::new(&conn.rabbitmq_url, &super::send::cli_origin());
            for queue in &sel.queues {
                let letters =
                    dead_letter::replay(&conn.rabbitmq_url, &publisher, queue, sel.limit).await?;
                print_letters(&letters, sel.json);
                if !sel.json {
                    println!("{queue}.dead: {} replayed to {queue}", letters.len());
                }
            }
        }
    }
    Ok(Outcome::Success)
}

fn print_letters(letters: &[DeadLetter], json: bool) {
    for l in letters {
        if json {
            println!("{}", serde_json::to_string(l).unwrap_or_default());
        } else {
            println!(
                "{}  {}  {}  reason={} at={}  ({} bytes) {}",
                l.queue,
                l.task_id.as_deref().unwrap_or("-"),
                l.task.as_deref().unwrap_or("-"),
                l.reason.as_deref().unwrap_or("-"),
                l.at.as_deref().unwrap_or("-"),
                l.body_bytes,
                l.detail.as_deref().unwrap_or(""),
            );
        }
    }
}
