//! Confirmed publishing. A publish returns only once RabbitMQ has taken responsibility for the
//! message (publisher confirms), so a caller that acks something else afterwards — a dead-lettered
//! delivery, a replayed dead letter — never loses the message in between.
//!
//! Delayed messages (published to the delay topology's `celery_delayed_27`) are mandatory: a
//! topology that is missing a binding returns the message instead of dropping it silently.
//!
//! The publisher owns its own connection, opened on first use and re-opened after a failure,
//! so it survives broker restarts without the caller noticing more than one failed attempt.

use std::collections::HashSet;

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use super::{BrokerError, connection, topology};
use crate::settings::DelayQueueType;
use crate::wire::{OutgoingMessage, OutgoingTask};

/// Whether the routing key is a Celery queue to declare (once per connection) before publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declare {
    /// A task queue: declared as Celery declares it.
    CeleryQueue,
    /// Declared by someone else (a dead-letter queue declared with its queue), and published
    /// to as mandatory: a classic queue whose cluster node is down takes nothing, yet RabbitMQ
    /// confirms the publish (checked on 3.10: acked and dropped) unless it is mandatory, when
    /// the message comes back and the caller keeps the original.
    Nothing,
    /// One of our own durable queues (undelivered results), declared once per connection and
    /// published to as mandatory: a message no queue takes comes back as an error, not lost.
    OwnQueue,
    /// Into the delay topology: the topology (of this queue type) is declared once per
    /// connection, and the destination queue declared as Celery does and bound to
    /// `celery_delayed_delivery`, so that the message has a way home.
    Delayed(DelayQueueType),
}

struct Open {
    _conn: Connection,
    channel: Channel,
    declared: HashSet<String>,
    /// Whether the delay topology was declared on this connection.
    topology: bool,
    /// Queues bound to `celery_delayed_delivery` on this connection.
    bound: HashSet<String>,
}

pub(crate) struct Publisher {
    url: String,
    /// `gen<pid>@<host>`: the `origin` header of the tasks this publisher creates.
    origin: String,
    open: Mutex<Option<Open>>,
}

impl Publisher {
    /// A publisher that connects lazily.
    pub(crate) fn new(url: &str, origin: &str) -> Self {
        Self {
            url: url.to_owned(),
            origin: origin.to_owned(),
            open: Mutex::new(None),
        }
    }

    /// `gen<pid>@<host>`: the `origin` header of the tasks this publisher creates.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Publish a new Celery task to `queue`, declaring the queue as Celery does on first use.
    pub(crate) async fn send_task(
        &self,
        queue: &str,
        task: &OutgoingTask,
    ) -> Result<(), BrokerError> {
        let message = OutgoingMessage::task(queue, task, &self.origin, Utc::now());
        self.publish(&message, Declare::CeleryQueue).await
    }

    /// Publish `message` and wait for RabbitMQ's confirm.
    pub(crate) async fn publish(
        &self,
        message: &OutgoingMessage,
        declare: Declare,
    ) -> Result<(), BrokerError> {
        // One retry on a fresh connection covers a broker restart since the last publish.
        match self.try_publish(message, declare).await {
            Ok(()) => Ok(()),
            Err(_) => {
                *self.open.lock().await = None;
                self.try_publish(message, declare).await
            }
        }
    }

    /// Whether the publishing connection can be opened (readiness of `worker scheduler`).
    pub(crate) async fn check(&self) -> Result<(), BrokerError> {
        let mut guard = self.open.lock().await;
        self.ensure_open(&mut guard).await.map(|_| ())
    }

    async fn try_publish(
        &self,
        message: &OutgoingMessage,
        declare: Declare,
    ) -> Result<(), BrokerError> {
        let routing_key = message.routing_key.as_str();
        let mut guard = self.open.lock().await;
        let open = self.ensure_open(&mut guard).await?;
        let queue = match declare {
            Declare::Delayed(queue_type) => {
                if !open.topology {
                    topology::declare_delay_topology(&open.channel, queue_type).await?;
                    open.topology = true;
                }
                let queue = message.destination_queue();
                if !open.bound.contains(queue) {
                    if !open.declared.contains(queue) {
                        topology::declare_celery_queue(&open.channel, queue).await?;
                        open.declared.insert(queue.to_owned());
                    }
                    topology::bind_to_delayed_delivery(&open.channel, queue).await?;
                    open.bound.insert(queue.to_owned());
                }
                None
            }
            Declare::CeleryQueue => Some(routing_key),
            Declare::Nothing => None,
            Declare::OwnQueue => {
                if !open.declared.contains(routing_key) {
                    topology::declare_own_queue(&open.channel, routing_key).await?;
                    open.declared.insert(routing_key.to_owned());
                }
                None
            }
        };
        if let Some(queue) = queue
            && !open.declared.contains(queue)
        {
            topology::declare_celery_queue(&open.channel, queue).await?;
            open.declared.insert(queue.to_owned());
        }
        let options = BasicPublishOptions {
            mandatory: matches!(
                declare,
                Declare::Delayed(_) | Declare::OwnQueue | Declare::Nothing
            ),
            ..BasicPublishOptions::default()
        };
        let confirm = open
            .channel
            .basic_publish(
                message.exchange.as_str().into(),
                routing_key.into(),
                options,
                &message.body,
                message.amqp_properties(),
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
        if confirm.take_message().is_some() {
            return Err(BrokerError::Unroutable {
                exchange: message.exchange.clone(),
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }

    async fn ensure_open<'a>(
        &self,
        guard: &'a mut Option<Open>,
    ) -> Result<&'a mut Open, BrokerError> {
        let open = match guard.take() {
            Some(open) if open.channel.status().connected() => open,
            _ => {
                let conn = connection::connect(&self.url).await?;
                let channel = conn
                    .create_channel()
                    .await
                    .map_err(BrokerError::amqp("channel.open"))?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(BrokerError::amqp("confirm.select"))?;
                Open {
                    _conn: conn,
                    channel,
                    declared: HashSet::new(),
                    topology: false,
                    bound: HashSet::new(),
                }
            }
        };
        Ok(guard.insert(open))
    }
}
