//! The dead-letter queues: `<queue>.dead`.
//!
//! Celery drops what it cannot run (an unknown task, an undecodable body): the message is gone.
//! We move it, byte for byte with its properties, to `<queue>.dead` with headers saying why and
//! when, and only then ack the original — so a message is always in exactly one queue.
//! `worker dead-letters list` shows them; `replay` publishes them back to their queue.

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{FieldTable, ShortString};
use serde::Serialize;
use serde_json::Value;

use super::publisher::Publisher;
use super::topology::dead_letter_queue;
use super::{BrokerError, connection};
use crate::celery::amqp_value::table_to_json;
use crate::celery::encode::header_string;

pub const REASON: &str = "x-dead-letter-reason";
pub const DETAIL: &str = "x-dead-letter-detail";
pub const AT: &str = "x-dead-letter-at";
pub const QUEUE: &str = "x-original-queue";

/// Move one message to `<queue>.dead`. The caller acks the original after this returns Ok.
pub async fn dead_letter(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    properties: &BasicProperties,
    reason: &str,
    detail: &str,
) -> Result<(), BrokerError> {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(REASON.into(), header_string(reason));
    headers.insert(DETAIL.into(), header_string(detail));
    headers.insert(
        AT.into(),
        header_string(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    headers.insert(QUEUE.into(), header_string(queue));
    publisher
        .publish(
            &dead_letter_queue(queue),
            body,
            without_expiration(properties).with_headers(headers),
            false,
        )
        .await
}

/// One dead letter as `worker dead-letters list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
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
        reason: s(REASON),
        detail: s(DETAIL),
        at: s(AT),
        body_bytes: body.len(),
        body_preview: preview,
    }
}

/// Up to `limit` dead letters of `queue`, left in place.
pub async fn list(url: &str, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
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
pub async fn replay(
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
        let props = without_dead_letter_headers(&d.properties);
        if let Err(e) = publisher.publish(queue, &d.data, props, true).await {
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

/// The same properties, persistent and without a per-message TTL, which would silently delete
/// the dead letter.
fn without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    out
}

fn without_dead_letter_headers(props: &BasicProperties) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            if ![REASON, DETAIL, AT, QUEUE].contains(&k.as_str()) {
                table.insert(ShortString::from(k.as_str()), v.clone());
            }
        }
    }
    props.clone().with_headers(table)
}
