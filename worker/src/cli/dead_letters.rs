//! `worker dead-letters list|replay|delete|purge`: what went to `<queue>.dead`, sending it
//! back, and removing it. None of them creates a queue: a missing `<queue>.dead` is reported.
//! `delete` and `purge` lose messages for good, so they need `--yes`.

use anyhow::bail;
use clap::{Args, Subcommand};

use super::Outcome;
use crate::adapters::broker::dead_letter::{self, DeadLetter, Pick};
use crate::adapters::broker::publisher::Publisher;
use crate::settings::ConnectionSettings;

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// Show dead letters without removing them.
    List(Selection),
    /// Publish dead letters back to their queue (and remove them from the dead-letter queue).
    Replay(Selection),
    /// Remove dead letters for good (all, up to --limit, or those named by --id); needs --yes.
    Delete(Destructive),
    /// Remove every dead letter of the queues for good; needs --yes.
    Purge(Destructive),
}

#[derive(Debug, Args)]
pub(crate) struct Destructive {
    #[command(flatten)]
    pub selection: Selection,
    /// Confirm that the messages are to be removed for good.
    #[arg(long)]
    pub yes: bool,
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
    /// Only the letters of these task ids (repeatable; not for `list` and `purge`).
    #[arg(long = "id", value_delimiter = ',')]
    pub ids: Vec<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn dead_letters(
    conn: &ConnectionSettings,
    cmd: DeadLettersCommand,
) -> anyhow::Result<Outcome> {
    let url = conn.rabbitmq_url.as_str();
    match cmd {
        DeadLettersCommand::List(sel) => {
            for queue in &sel.queues {
                match dead_letter::list(url, queue, sel.limit).await? {
                    Some(letters) => {
                        print_letters(&letters, sel.json);
                        if !sel.json {
                            println!("{queue}.dead: {} shown", letters.len());
                        }
                    }
                    None => report_missing(queue),
                }
            }
        }
        DeadLettersCommand::Replay(sel) => {
            let publisher = Publisher::new(url, &super::send::cli_origin());
            let pick = Pick {
                task_ids: sel.ids.clone(),
            };
            for queue in &sel.queues {
                match dead_letter::replay(url, &publisher, queue, &pick, sel.limit).await? {
                    Some(letters) => {
                        print_letters(&letters, sel.json);
                        if !sel.json {
                            println!("{queue}.dead: {} replayed to {queue}", letters.len());
                        }
                    }
                    None => report_missing(queue),
                }
            }
        }
        DeadLettersCommand::Delete(d) => {
            if !d.yes {
                bail!("`dead-letters delete` removes messages for good: add --yes to confirm");
            }
            let sel = d.selection;
            let pick = Pick {
                task_ids: sel.ids.clone(),
            };
            for queue in &sel.queues {
                match dead_letter::delete(url, queue, &pick, sel.limit).await? {
                    Some(letters) => {
                        print_letters(&letters, sel.json);
                        if !sel.json {
                            println!("{queue}.dead: {} deleted", letters.len());
                        }
                    }
                    None => report_missing(queue),
                }
            }
        }
        DeadLettersCommand::Purge(d) => {
            if !d.yes {
                bail!(
                    "`dead-letters purge` removes every dead letter for good: add --yes to confirm"
                );
            }
            for queue in &d.selection.queues {
                match dead_letter::purge(url, queue).await? {
                    Some(n) => println!("{queue}.dead: {n} purged"),
                    None => report_missing(queue),
                }
            }
        }
    }
    Ok(Outcome::Success)
}

/// Say that `queue.dead` does not exist (on stderr, so `--json` output stays one object a line).
fn report_missing(queue: &str) {
    eprintln!("{queue}.dead: no such queue (nothing was ever dead-lettered there; not created)");
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
