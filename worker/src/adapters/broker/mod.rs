//! RabbitMQ, spoken the way Celery speaks it, on lapin.
//!
//! - [`connection`]: connecting with capped backoff and a redacted URL in every log line;
//! - [`topology`]: declaring queues exactly as Celery does, plus our `<queue>.dead` queues;
//! - [`consumer`]: the consuming connection, reconnected forever, feeding one apalis backend
//!   per queue ([`backend::CeleryBackend`]);
//! - [`settle`]: acks and requeues of finished deliveries, acks batched per channel;
//! - [`publisher`]: confirmed publishing (sends, ticks, dead letters);
//! - `tick`: the scheduler's ticks, published through the same publisher;
//! - [`dead_letter`]: where messages that cannot run go, and how they come back.

pub(crate) mod backend;
pub(crate) mod connection;
pub(crate) mod consumer;
pub(crate) mod dead_letter;
pub(crate) mod publisher;
pub(crate) mod settle;
mod tick;
pub mod topology;

/// Errors talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ operation `{op}` failed: {source}")]
    Amqp {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ refused to take the message published to {routing_key:?} (nack)")]
    Nacked { routing_key: String },
}

impl BrokerError {
    pub fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { op, source }
    }
}
