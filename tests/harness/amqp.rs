//! RabbitMQ for tests: connections, raw publishing (as a Python producer would), reading and
//! deleting test queues.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use worker::wire::{OutgoingMessage, OutgoingTask};

use super::RABBITMQ_URL;

/// A connection and a channel in confirm mode.
pub async fn amqp() -> (Connection, Channel) {
    let conn = Connection::connect(RABBITMQ_URL, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("open channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, channel)
}

/// Publish raw bytes to `queue` through the default exchange and wait for the confirm.
pub async fn publish_raw(channel: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

/// Take every message of `queue` (acking it) and return (headers as JSON, body).
pub async fn drain(
    channel: &Channel,
    queue: &str,
) -> Vec<(serde_json::Map<String, Value>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(msg) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let headers = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .map(worker::wire::table_to_json)
            .unwrap_or_default();
        out.push((headers, msg.delivery.data.clone()));
    }
    out
}

/// Delete a test queue, its exchange and its dead-letter queue.
pub async fn delete_queue(channel: &Channel, queue: &str) {
    for q in [queue.to_owned(), format!("{queue}.dead")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(queue.into(), ExchangeDeleteOptions::default())
        .await;
}

/// A channel without confirms.
pub async fn amqp_channel() -> (Connection, Channel) {
    let connection = Connection::connect(RABBITMQ_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on localhost:5672 (guest/guest)");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// The message a Python producer publishes for `task` on `queue`.
pub fn task_message(queue: &str, task: &OutgoingTask) -> OutgoingMessage {
    OutgoingMessage::task(queue, task, "gen0@test", chrono::Utc::now())
}

/// Publish `task` to `queue` as a Python producer would, and wait for the confirm.
pub async fn publish_task(channel: &Channel, queue: &str, task: &OutgoingTask) {
    let message = task_message(queue, task);
    publish_raw(channel, queue, &message.body, message.amqp_properties()).await;
}

/// Count messages in `queue` without consuming them.
pub async fn message_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0)
}
