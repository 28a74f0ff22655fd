//! Queue declarations.
//!
//! Celery declares, per routed queue `Q`, a durable classic queue `Q`, a durable direct exchange
//! `Q` and a binding `Q -> Q` with routing key `Q`, all with empty arguments. We declare exactly
//! that: any difference (an argument, a queue type) makes RabbitMQ answer 406 and close the
//! channel, for us or for the Python producer, whichever comes second. The dead-letter queue
//! `Q.dead` is ours alone, durable, and also argument-free so that operators can re-declare it.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

use super::BrokerError;

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declare `queue` as Celery does.
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
            FieldTable::default(),
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
