//! The client's side of the mailbox, for `worker inspect` and `worker revoke`: what
//! `app.control.broadcast(..., reply=True)` does in kombu's `Mailbox._broadcast` and
//! `_collect`. It declares its reply queue `<oid>.reply.<namespace>.pidbox` bound to the reply
//! exchange with its oid, publishes the request to the fanout exchange, and gathers the
//! replies that carry its ticket until none has come for `timeout` (kombu's rule: each reply
//! restarts the wait) or `limit` arrived. So it works against Python Celery workers as well
//! as ours.

use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};

use crate::adapters::broker::{BrokerError, connection};
use crate::wire::control::{ControlMessage, MailboxNames, queue_arguments};

/// The most replies gathered, whatever `limit` says.
const MAX_REPLIES: usize = 10_000;
/// The longest the gathering goes on, however often replies come.
const MAX_COLLECT: Duration = Duration::from_secs(120);

/// One broadcast with replies.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: String,
    pub arguments: Map<String, Value>,
    /// Only these nodes (and stop once each has replied); `None`: every node.
    pub destination: Option<Vec<String>>,
    pub timeout: Duration,
}

/// Send `call` and return the replies, `(node, reply)` in arrival order.
pub(crate) async fn call(
    url: &str,
    names: &MailboxNames,
    call: &Call,
) -> Result<Vec<(String, Value)>, BrokerError> {
    let conn = connection::connect(url).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    let oid = uuid::Uuid::new_v4().to_string();
    let ticket = uuid::Uuid::new_v4().to_string();
    let reply_queue = names.reply_queue(&oid);
    super::declare_exchanges(&channel, names).await?;
    channel
        .queue_declare(
            reply_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(),
        )
        .await
        .map_err(BrokerError::amqp("queue.declare reply queue"))?;
    channel
        .queue_bind(
            reply_queue.as_str().into(),
            names.reply_exchange().as_str().into(),
            oid.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.bind reply queue"))?;
    let mut consumer = channel
        .basic_consume(
            reply_queue.as_str().into(),
            oid.as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("basic.consume reply queue"))?;

    let expires = chrono::Utc::now().timestamp_micros() as f64 / 1e6 + call.timeout.as_secs_f64();
    let request = ControlMessage::request(
        names,
        &call.method,
        &call.arguments,
        call.destination.as_deref(),
        Some((&oid, &ticket)),
        expires,
    );
    channel
        .basic_publish(
            request.exchange.as_str().into(),
            request.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &request.body,
            BasicProperties::from(request.properties),
        )
        .await
        .map_err(BrokerError::amqp("basic.publish control request"))?;

    let limit = call
        .destination
        .as_ref()
        .map_or(MAX_REPLIES, |d| d.len().min(MAX_REPLIES));
    let mut replies = Vec::new();
    let deadline = tokio::time::Instant::now() + MAX_COLLECT;
    while replies.len() < limit && tokio::time::Instant::now() < deadline {
        let next = tokio::time::timeout(call.timeout, consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(BrokerError::amqp("consume replies")(e)),
            Ok(None) | Err(_) => break,
        };
        if header_text(&delivery.properties, "ticket").as_deref() != Some(ticket.as_str()) {
            continue;
        }
        if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&delivery.data) {
            replies.extend(body);
        }
    }
    replies.truncate(MAX_REPLIES);
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(replies)
}

fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
