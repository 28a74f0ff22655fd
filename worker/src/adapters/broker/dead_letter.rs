//! The dead-letter queues: `<queue>.dead`.
//!
//! Celery drops what it cannot run (an unknown task, an undecodable body): the message is gone.
//! We move it, byte for byte with its properties, to `<queue>.dead` with headers saying why and
//! when, and only then ack the original — so a message is always in exactly one queue.
//! `worker dead-letters list` shows them (never creating a queue); `replay` publishes them back
//! to their queue; `delete` and `purge` remove them. The status page does the same by task id.

use chrono::Utc;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use serde::Serialize;
use serde_json::Value;

use super::publisher::{Declare, Publisher};
use super::topology::dead_letter_queue;
use super::{BrokerError, connection, depth};
use crate::wire::Properties;
use crate::wire::amqp_value::table_to_json;
use crate::wire::outgoing::{
    DEAD_LETTER_AT, DEAD_LETTER_DETAIL, DEAD_LETTER_REASON, DeadLetterNote, OutgoingMessage,
};

/// Move one message to `<queue>.dead`. The caller acks the original after this returns Ok.
pub(crate) async fn dead_letter(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    properties: &BasicProperties,
    reason: &str,
    detail: &str,
) -> Result<(), BrokerError> {
    let note = DeadLetterNote {
        queue,
        reason,
        detail,
        at: Utc::now(),
    };
    let message = OutgoingMessage::dead_letter(
        &dead_letter_queue(queue),
        body,
        &Properties::from(properties),
        note,
    );
    publisher.publish(&message, Declare::Nothing).await
}

/// One dead letter as `worker dead-letters list` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetter {
    pub queue: String,
    pub task_id: Option<String>,
    pub task: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub at: Option<String>,
    pub body_bytes: usize,
    pub body_preview: String,
}

fn describe(queue: &str, props: &BasicProperties, body: &[u8]) -> DeadLetter {
    let headers = props
        .headers()
        .as_ref()
        .map(table_to_json)
        .unwrap_or_default();
    let s = |k: &str| headers.get(k).and_then(Value::as_str).map(str::to_owned);
    let preview: String = String::from_utf8_lossy(&body[..body.len().min(120)]).into();
    DeadLetter {
        queue: queue.to_owned(),
        task_id: s("id").or_else(|| {
            props
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned())
        }),
        task: s("task"),
        reason: s(DEAD_LETTER_REASON),
        detail: s(DEAD_LETTER_DETAIL),
        at: s(DEAD_LETTER_AT),
        body_bytes: body.len(),
        body_preview: preview,
    }
}

/// Which dead letters an action takes: all of them (up to a limit), or only these task ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pick {
    /// Only letters whose task id is one of these; empty: every letter.
    pub task_ids: Vec<String>,
}

impl Pick {
    fn takes(&self, letter: &DeadLetter) -> bool {
        self.task_ids.is_empty()
            || letter
                .task_id
                .as_ref()
                .is_some_and(|id| self.task_ids.iter().any(|want| want == id))
    }
}

/// Up to `limit` dead letters of `queue`, left in place; `None` when `queue.dead` does not
/// exist (it is never created by looking).
pub(crate) async fn list(
    url: &str,
    queue: &str,
    limit: usize,
) -> Result<Option<Vec<DeadLetter>>, BrokerError> {
    let conn = connection::connect(url).await?;
    let dead = dead_letter_queue(queue);
    if depth::depth(&conn, &dead).await?.is_none() {
        let _ = conn.close(200, "listed".into()).await;
        return Ok(None);
    }
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(msg) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::amqp("basic.get"))?
        else {
            break;
        };
        out.push(describe(
            queue,
            &msg.delivery.properties,
            &msg.delivery.data,
        ));
    }
    // Closing the channel returns every fetched message to the queue, in order.
    let _ = channel.close(200, "listed".into()).await;
    let _ = conn.close(200, "listed".into()).await;
    Ok(Some(out))
}

/// What to do with each picked letter.
enum Action<'a> {
    Replay(&'a Publisher),
    Delete,
}

/// Publish the picked dead letters (at most `limit`) of those `queue.dead` has now back to
/// `queue`; returns them. `None` when `queue.dead` does not exist.
pub(crate) async fn replay(
    url: &str,
    publisher: &Publisher,
    queue: &str,
    pick: &Pick,
    limit: usize,
) -> Result<Option<Vec<DeadLetter>>, BrokerError> {
    take(url, queue, pick, limit, Action::Replay(publisher)).await
}

/// Remove the picked dead letters (at most `limit`) for good; returns them. `None` when
/// `queue.dead` does not exist.
pub(crate) async fn delete(
    url: &str,
    queue: &str,
    pick: &Pick,
    limit: usize,
) -> Result<Option<Vec<DeadLetter>>, BrokerError> {
    take(url, queue, pick, limit, Action::Delete).await
}

/// Remove every dead letter of `queue`; the count removed, `None` when `queue.dead` does not
/// exist.
pub(crate) async fn purge(url: &str, queue: &str) -> Result<Option<u32>, BrokerError> {
    let conn = connection::connect(url).await?;
    let dead = dead_letter_queue(queue);
    if depth::depth(&conn, &dead).await?.is_none() {
        let _ = conn.close(200, "purged".into()).await;
        return Ok(None);
    }
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    let purged = channel
        .queue_purge(dead.as_str().into(), QueuePurgeOptions::default())
        .await
        .map_err(BrokerError::amqp("queue.purge"))?;
    let _ = conn.close(200, "purged".into()).await;
    Ok(Some(purged))
}

async fn take(
    url: &str,
    queue: &str,
    pick: &Pick,
    limit: usize,
    action: Action<'_>,
) -> Result<Option<Vec<DeadLetter>>, BrokerError> {
    let conn = connection::connect(url).await?;
    let dead = dead_letter_queue(queue);
    // Only what was there when we started: a replayed message that fails again comes back to
    // the dead-letter queue and must not be replayed in a loop.
    let Some(present) = depth::depth(&conn, &dead).await? else {
        let _ = conn.close(200, "nothing".into()).await;
        return Ok(None);
    };
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    if matches!(action, Action::Replay(_)) {
        super::topology::declare_with_dead_letter(&channel, queue).await?;
    }
    let mut taken = Vec::new();
    let mut looked: u32 = 0;
    while taken.len() < limit && looked < present.messages {
        let Some(msg) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::amqp("basic.get"))?
        else {
            break;
        };
        looked = looked.saturating_add(1);
        let d = msg.delivery;
        let info = describe(queue, &d.properties, &d.data);
        // Letters not picked stay unacked until the channel closes, which returns them in order.
        if !pick.takes(&info) {
            continue;
        }
        if let Action::Replay(publisher) = action {
            let message =
                OutgoingMessage::replayed(queue, &d.data, &Properties::from(&d.properties));
            if let Err(e) = publisher.publish(&message, Declare::CeleryQueue).await {
                let _ = d
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
                let _ = conn.close(200, "failed".into()).await;
                return Err(e);
            }
        }
        d.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.ack"))?;
        taken.push(info);
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(Some(taken))
}
