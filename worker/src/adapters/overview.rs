//! What an operator looks at, read live for the status page (`/status`, `/api/...`) and for
//! `worker queues`: the queues with their depths and consumers, and the workers online.
//!
//! Queues are looked at with a passive declare only ([`crate::adapters::broker::depth`]): a
//! queue that does not exist is shown as missing, never created. Workers are asked over remote
//! control (`ping`, then `stats` for what each one says of itself), so Python Celery workers on
//! the same broker are listed too.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::adapters::broker::depth::{self, Depth};
use crate::adapters::broker::topology::dead_letter_queue;
use crate::adapters::broker::{BrokerError, connection};
use crate::adapters::control::client::{self, Call};
use crate::wire::control::MailboxNames;
use crate::wire::outgoing::{DELAY_BITS, delay_level_name};

/// What a queue is for, as the page groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    Tasks,
    DeadLetters,
    UndeliveredResults,
    Delayed,
}

/// One queue's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct QueueRow {
    pub name: String,
    pub role: Role,
    /// `None`: the queue does not exist.
    pub depth: Option<Depth>,
}

/// The queues an operator watches: each task queue and its `.dead`, the undelivered-results
/// queue, and the delay levels `celery_delayed_0..27`.
pub(crate) fn watched(queues: &[String], undelivered: &str) -> Vec<(String, Role)> {
    let mut out = Vec::new();
    for q in queues {
        out.push((q.clone(), Role::Tasks));
        out.push((dead_letter_queue(q), Role::DeadLetters));
    }
    if !undelivered.is_empty() {
        out.push((undelivered.to_owned(), Role::UndeliveredResults));
    }
    for level in 0..DELAY_BITS {
        out.push((delay_level_name(level), Role::Delayed));
    }
    out
}

/// The depths of `queues`, on one connection.
pub(crate) async fn depths(
    url: &str,
    queues: &[(String, Role)],
) -> Result<Vec<QueueRow>, BrokerError> {
    let conn = connection::connect(url).await?;
    let mut rows = Vec::with_capacity(queues.len());
    for (name, role) in queues {
        let depth = match depth::depth(&conn, name).await {
            Ok(d) => d,
            Err(e) => {
                let _ = conn.close(200, "looked".into()).await;
                return Err(e);
            }
        };
        rows.push(QueueRow {
            name: name.clone(),
            role: *role,
            depth,
        });
    }
    let _ = conn.close(200, "looked".into()).await;
    Ok(rows)
}

/// One worker that answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WorkerRow {
    pub node: String,
    /// `stats()["pid"]`, when it said.
    pub pid: Option<u64>,
    /// `stats()["uptime"]` in seconds, when it said.
    pub uptime: Option<u64>,
    /// `stats()["pool"]["max-concurrency"]`, when it said.
    pub concurrency: Option<u64>,
    /// `stats()["total"]`: tasks run by name (bounded: the first 50).
    pub total: Map<String, Value>,
}

/// The most task names shown per worker.
const MAX_TOTALS: usize = 50;
/// The longest node name kept (a reply's keys come from whoever replies).
const MAX_NODE: usize = 256;

/// The workers that answer `stats` within `timeout` (kombu's rule: each reply restarts it).
pub(crate) async fn workers(
    url: &str,
    control_exchange: &str,
    timeout: Duration,
) -> Result<Vec<WorkerRow>, BrokerError> {
    let names = MailboxNames::new(control_exchange);
    let call = Call {
        method: "stats".into(),
        arguments: Map::new(),
        destination: None,
        timeout,
    };
    let replies = client::call(url, &names, &call).await?;
    let mut rows: Vec<WorkerRow> = replies
        .into_iter()
        .map(|(node, stats)| {
            let n = |v: &Value| v.as_u64();
            WorkerRow {
                node: node.chars().take(MAX_NODE).collect(),
                pid: stats.get("pid").and_then(n),
                uptime: stats.get("uptime").and_then(n),
                concurrency: stats
                    .get("pool")
                    .and_then(|p| p.get("max-concurrency"))
                    .and_then(n),
                total: stats
                    .get("total")
                    .and_then(Value::as_object)
                    .map(|t| {
                        t.iter()
                            .take(MAX_TOTALS)
                            .map(|(k, v)| (k.chars().take(MAX_NODE).collect(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    // Two processes with one node name both show: Celery warns of that, so must we.
    rows.sort_by(|a, b| a.node.cmp(&b.node).then(a.pid.cmp(&b.pid)));
    Ok(rows)
}
