//! The dead-letter queues: `<queue>.dead`.
//!
//! Celery drops what it cannot run (an unknown task, an undecodable body): the message is gone.
//! We move it, byte for byte with its properties, to `<queue>.dead` with headers saying why and
//! when, and only then ack the original — so a message is always in exactly one queue.
//! `worker dead-letters list` shows them; `replay` publishes them back to their queue.

use chrono::Utc;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use serde_json::Value;

use super::publisher::{Declare, Publisher};
use super::topology::dead_letter_queue;
use super::{BrokerError, connection};
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

/// Up to `limit` dead letters of `queue`, left in place.
pub(crate) async fn list(
    url: &str,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let conn = connection::connect(url).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    super::topology::declare_with_dead_letter(&channel, queue).await?;
    let mut out = Vec::new();
    let dead = dead_letter_queue(queue);
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
    Ok(out)
}

/// Publish up to `limit` of the dead letters `queue` has now back to it; returns them.
pub(crate) async fn replay(
    url: &str,
    publisher: &Publisher,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let conn = connection::connect(url).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    super::topology::declare_with_dead_letter(&channel, queue).await?;
    let dead = dead_letter_queue(queue);
    // Replay only what was there when we started: a message that fails again comes back to the
    // dead-letter queue and must not be replayed in a loop.
    let present = channel
        .queue_declare(
            dead.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.declare"))?
        .message_count();
    let limit = limit.min(usize::try_from(present).unwrap_or(usize::MAX));
    let mut replayed = Vec::new();
    while replayed.len() < limit {
        let Some(msg) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::amqp("basic.get"))?
        else {
            break;
        };
        let d = msg.delivery;
        let info = describe(queue, &d.properties, &d.data);
        let message = OutgoingMessage::replayed(queue, &d.data, &Properties::from(&d.properties));
        if let Err(e) = publisher.publish(&message, Declare::CeleryQueue).await {
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            return Err(e);
        }
        d.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.ack"))?;
        replayed.push(info);
    }
    let _ = conn.close(200, "replayed".into()).await;
    Ok(replayed)
}
