//! Confirmed publishing. A publish returns only once RabbitMQ has taken responsibility for the
//! message (publisher confirms), so a caller that acks something else afterwards — a dead-lettered
//! delivery, a replayed dead letter — never loses the message in between.
//!
//! The publisher owns its own connection, opened on first use and re-opened after a failure,
//! so it survives broker restarts without the caller noticing more than one failed attempt.

use std::collections::HashSet;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::{BrokerError, connection, topology};
use crate::celery::OutgoingTask;

struct Open {
    _conn: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

pub struct Publisher {
    url: String,
    open: Mutex<Option<Open>>,
}

impl Publisher {
    /// A publisher that connects lazily.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            open: Mutex::new(None),
        }
    }

    /// Publish a Celery task to `queue`, declaring the queue as Celery does on first use.
    pub async fn send_task(&self, queue: &str, task: &OutgoingTask) -> Result<(), BrokerError> {
        self.publish(queue, &task.body(), task.properties(), true)
            .await
    }

    /// Publish raw bytes to `routing_key` on the default exchange. With `celery_queue`, the
    /// routing key is a Celery queue and is declared (once per connection) before publishing.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        celery_queue: bool,
    ) -> Result<(), BrokerError> {
        // One retry on a fresh connection covers a broker restart since the last publish.
        match self
            .try_publish(routing_key, body, properties.clone(), celery_queue)
            .await
        {
            Ok(()) => Ok(()),
            Err(_) => {
                *self.open.lock().await = None;
                self.try_publish(routing_key, body, properties, celery_queue)
                    .await
            }
        }
    }

    /// Declare a queue (and its dead-letter queue) through the publishing channel.
    pub async fn declare(&self, queue: &str) -> Result<(), BrokerError> {
        let mut guard = self.open.lock().await;
        let open = self.ensure_open(&mut guard).await?;
        topology::declare_with_dead_letter(&open.channel, queue).await?;
        open.declared.insert(queue.to_owned());
        Ok(())
    }

    async fn try_publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        celery_queue: bool,
    ) -> Result<(), BrokerError> {
        let mut guard = self.open.lock().await;
        let open = self.ensure_open(&mut guard).await?;
        if celery_queue && !open.declared.contains(routing_key) {
            topology::declare_celery_queue(&open.channel, routing_key).await?;
            open.declared.insert(routing_key.to_owned());
        }
        let confirm = open
            .channel
            .basic_publish(
                "".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(BrokerError::amqp("basic.publish"))?
            .await
            .map_err(BrokerError::amqp("publisher confirm"))?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked {
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }

    async fn ensure_open<'a>(
        &self,
        guard: &'a mut Option<Open>,
    ) -> Result<&'a mut Open, BrokerError> {
        let usable = guard
            .as_ref()
            .is_some_and(|o| o.channel.status().connected());
        if !usable {
            let conn = connection::connect(&self.url).await?;
            let channel = conn
                .create_channel()
                .await
                .map_err(BrokerError::amqp("channel.open"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(BrokerError::amqp("confirm.select"))?;
            *guard = Some(Open {
                _conn: conn,
                channel,
                declared: HashSet::new(),
            });
        }
        guard.as_mut().ok_or(BrokerError::Nacked {
            routing_key: String::new(),
        })
    }
}
