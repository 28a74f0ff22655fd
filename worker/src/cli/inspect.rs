//! `worker inspect ping|active|reserved|scheduled|registered|stats|revoked|active_queues|conf`:
//! Celery's `celery inspect` for operators without Python. It speaks kombu's mailbox protocol
//! (see `adapters::control::client`), so Python Celery workers answer it too.
//!
//! Text output is one block per node (`-> node: OK` and the reply); `--json` prints one object
//! `{node: reply}`. Exit 0 when a node replied, 2 when none did within `--timeout`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use super::Outcome;
use crate::adapters::control::client::{self, Call};
use crate::settings::ConnectionSettings;
use crate::wire::control::MailboxNames;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum Method {
    Ping,
    Active,
    Reserved,
    Scheduled,
    Registered,
    Stats,
    Revoked,
    ActiveQueues,
    Conf,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Active => "active",
            Self::Reserved => "reserved",
            Self::Scheduled => "scheduled",
            Self::Registered => "registered",
            Self::Stats => "stats",
            Self::Revoked => "revoked",
            Self::ActiveQueues => "active_queues",
            Self::Conf => "conf",
        }
    }
}

/// Who is asked and how long replies are waited for; shared with `worker revoke`.
#[derive(Debug, Clone, Args)]
pub(crate) struct Target {
    /// Only these nodes (comma-separated node names, e.g. celery@host1); default: all.
    #[arg(long, short = 'd', value_delimiter = ',')]
    pub destination: Vec<String>,
    /// Seconds to wait for the next reply (kombu's rule: each reply restarts the wait).
    #[arg(long, default_value_t = 1.0)]
    pub timeout: f64,
    /// Print `{node: reply}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The inspect command, as `celery inspect` names it.
    pub method: Method,
    #[command(flatten)]
    pub target: Target,
}

pub(crate) async fn inspect(conn: &ConnectionSettings, a: InspectArgs) -> anyhow::Result<Outcome> {
    broadcast(conn, a.method.name(), Map::new(), &a.target).await
}

/// Send `method` to the target nodes, print the replies, and say whether any came.
pub(crate) async fn broadcast(
    conn: &ConnectionSettings,
    method: &str,
    arguments: Map<String, Value>,
    target: &Target,
) -> anyhow::Result<Outcome> {
    let timeout = Duration::try_from_secs_f64(target.timeout)
        .ok()
        .filter(|t| !t.is_zero() && *t <= Duration::from_secs(3600))
        .context("--timeout must be a number of seconds above 0 and at most 3600")?;
    let call = Call {
        method: method.to_owned(),
        arguments,
        destination: (!target.destination.is_empty()).then(|| target.destination.clone()),
        timeout,
    };
    let names = MailboxNames::new(&conn.control_exchange);
    let replies = client::call(&conn.rabbitmq_url, &names, &call)
        .await
        .context("asking the workers")?;
    if target.json {
        let doc: Map<String, Value> = replies.iter().cloned().collect();
        println!("{}", Value::Object(doc));
    } else {
        for (node, reply) in &replies {
            print_reply(node, reply);
        }
    }
    if replies.is_empty() {
        eprintln!("Error: No nodes replied within time constraint");
        return Ok(Outcome::Unknown);
    }
    if !target.json {
        let n = replies.len();
        println!("\n{n} node{} online.", if n == 1 { "" } else { "s" });
    }
    Ok(Outcome::Success)
}

/// `celery inspect`'s layout: `{"ok": text}` as the text, `{"error": text}` as an error, any
/// other reply as indented JSON.
fn print_reply(node: &str, reply: &Value) {
    match reply {
        Value::Object(m) if m.len() == 1 && m.get("ok").is_some_and(Value::is_string) => {
            println!("->  {node}: OK");
            println!("        {}", m["ok"].as_str().unwrap_or_default());
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("error") => {
            println!("->  {node}: ERROR");
            println!("        {}", plain(&m["error"]));
        }
        Value::Array(items) if items.is_empty() => {
            println!("->  {node}: OK");
            println!("    - empty -");
        }
        other => {
            println!("->  {node}: OK");
            let text = serde_json::to_string_pretty(other).unwrap_or_default();
            for line in text.lines() {
                println!("    {line}");
            }
        }
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
