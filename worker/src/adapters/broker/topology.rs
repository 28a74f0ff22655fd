//! Queue declarations.
//!
//! Celery declares, per routed queue `Q`, a durable classic queue `Q`, a durable direct exchange
//! `Q` and a binding `Q -> Q` with routing key `Q`, all with empty arguments. We declare exactly
//! that: any difference (an argument, a queue type) makes RabbitMQ answer 406 and close the
//! channel, for us or for the Python producer, whichever comes second. The dead-letter queue
//! `Q.dead` is ours alone, durable, and also argument-free so that operators can re-declare it.
//!
//! The delay topology is Celery 5.5+'s native delayed delivery, declared exactly as kombu 5.7's
//! `declare_native_delayed_delivery_exchanges_and_queues` does (names, arguments, bindings,
//! exchange types), so that a Python worker and this one can declare it in either order. Our
//! queues are bound to `celery_delayed_delivery` by `#.<queue>`: a binding, not an argument, so
//! Celery's own declaration of the queue is untouched.
//!
//! With `WORKER_QUEUE_TYPE=quorum` the task queues carry `x-queue-type=quorum` and nothing else,
//! as Celery 5.7 declares its queues with `task_default_queue_type="quorum"` (and
//! `task_create_missing_queue_type="quorum"` for the others): celery/app/amqp.py gives them
//! `queue_arguments={'x-queue-type': 'quorum'}` and the same durable direct exchange. Celery sets
//! no `x-delivery-limit` (and RabbitMQ 3.x none by default), so the executor enforces a limit
//! of its own from the `x-delivery-count` header quorum queues add. The type is process-wide
//! ([`set_queue_type`] at startup), so that every declaration — consumer, publisher, CLI —
//! says the same thing.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use std::sync::OnceLock;

use super::BrokerError;
use crate::settings::{DelayQueueType, QueueType};

static QUEUE_TYPE: OnceLock<QueueType> = OnceLock::new();

/// Set the type of the task queues for the process (WORKER_QUEUE_TYPE); the first call wins.
pub fn set_queue_type(queue_type: QueueType) {
    let _ = QUEUE_TYPE.set(queue_type);
}

/// The type of the task queues (classic until [`set_queue_type`] says otherwise).
pub fn queue_type() -> QueueType {
    QUEUE_TYPE.get().copied().unwrap_or(QueueType::Classic)
}

/// The arguments Celery gives a task queue of this type: none for classic.
pub fn celery_queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), str_arg("quorum"));
    }
    args
}
use crate::wire::outgoing::{
    DELAY_BITS, DELAYED_DELIVERY_EXCHANGE, delay_level_name, delayed_routing_key,
};

/// kombu's `Exchange(name, type="topic")`: durable, not auto-deleted, no arguments.
async fn declare_topic(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare"))
}

/// An integer argument encoded as py-amqp encodes a Python int: 32 bits when it fits, else 64.
fn int_arg(v: i64) -> AMQPValue {
    match i32::try_from(v) {
        Ok(small) => AMQPValue::LongInt(small),
        Err(_) => AMQPValue::LongLongInt(v),
    }
}

fn str_arg(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// The arguments kombu gives queue `celery_delayed_<level>`.
pub fn delay_queue_arguments(level: u32, queue_type: DelayQueueType) -> FieldTable {
    let next = if level > 0 {
        delay_level_name(level - 1)
    } else {
        DELAYED_DELIVERY_EXCHANGE.to_owned()
    };
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), str_arg(queue_type.as_str()));
    args.insert("x-overflow".into(), str_arg("reject-publish"));
    args.insert("x-message-ttl".into(), int_arg((1i64 << level) * 1000));
    args.insert("x-dead-letter-exchange".into(), str_arg(&next));
    if queue_type == DelayQueueType::Quorum {
        args.insert("x-dead-letter-strategy".into(), str_arg("at-least-once"));
    }
    args
}

/// Declare the delay topology, step for step as kombu 5.7 does.
pub async fn declare_delay_topology(
    channel: &Channel,
    queue_type: DelayQueueType,
) -> Result<(), BrokerError> {
    let top = DELAY_BITS - 1;
    // Level L's queue takes the messages whose bit L is 1: `*.` repeated 27 - L times, `1.#`.
    let mut routing_key = String::from("1.#");
    for level in (0..=top).rev() {
        let name = delay_level_name(level);
        declare_topic(channel, &name).await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                delay_queue_arguments(level, queue_type),
            )
            .await
            .map_err(BrokerError::amqp("queue.declare"))?;
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp("queue.bind"))?;
        routing_key.insert_str(0, "*.");
    }
    // A 0 bit at level L passes the message on to level L - 1's exchange.
    let mut routing_key = String::from("0.#");
    for level in (1..=top).rev() {
        channel
            .exchange_bind(
                delay_level_name(level - 1).as_str().into(),
                delay_level_name(level).as_str().into(),
                routing_key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp("exchange.bind"))?;
        routing_key.insert_str(0, "*.");
    }
    declare_topic(channel, DELAYED_DELIVERY_EXCHANGE).await?;
    channel
        .exchange_bind(
            DELAYED_DELIVERY_EXCHANGE.into(),
            delay_level_name(0).as_str().into(),
            routing_key.as_str().into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.bind"))?;
    Ok(())
}

/// The binding that brings delayed messages for `queue` home: `celery_delayed_delivery` ->
/// `queue` by `#.<queue>`. The queue must exist.
pub async fn bind_to_delayed_delivery(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    // No delayed routing key can name a queue this long (AMQP's 255 bytes): nothing to bind,
    // and its delayed messages are refused where they are built.
    if delayed_routing_key(1, queue).is_err() {
        tracing::warn!(
            queue,
            "queue name too long for delayed delivery; its delays cannot wait in RabbitMQ"
        );
        return Ok(());
    }
    channel
        .queue_bind(
            queue.into(),
            DELAYED_DELIVERY_EXCHANGE.into(),
            format!("#.{queue}").as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.bind"))
}

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declare `queue` as Celery does, of the process's queue type.
pub async fn declare_celery_queue(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            queue.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare"))?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            celery_queue_arguments(queue_type()),
        )
        .await
        .map_err(BrokerError::amqp("queue.declare"))?;
    channel
        .queue_bind(
            queue.into(),
            queue.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.bind"))?;
    Ok(())
}

/// Declare `queue` and its dead-letter queue.
pub async fn declare_with_dead_letter(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    declare_celery_queue(channel, queue).await?;
    declare_dead_letter_queue(channel, queue).await
}

/// Declare `<queue>.dead`: durable, argument-free (classic whatever the task queues are).
pub async fn declare_dead_letter_queue(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            dead_letter_queue(queue).as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.declare"))?;
    Ok(())
}

/// Declare one of our own durable queues (undelivered results): argument-free, so that any
/// replica and an operator's `rabbitmqadmin declare queue` agree on it.
pub async fn declare_own_queue(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.declare"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What celery/app/amqp.py gives its queues: nothing for classic, exactly
    /// `{'x-queue-type': 'quorum'}` for quorum (no delivery limit, no dead-letter exchange).
    #[test]
    fn task_queues_carry_what_celery_declares() {
        assert!(
            celery_queue_arguments(QueueType::Classic)
                .inner()
                .is_empty()
        );
        let quorum = celery_queue_arguments(QueueType::Quorum);
        assert_eq!(quorum.inner().len(), 1);
        assert_eq!(
            quorum.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
    }
}
