//! RabbitMQ, spoken the way Celery speaks it, on lapin.
//!
//! - [`connection`]: parsing RABBITMQ_URL, connecting with capped backoff and a redacted URL in
//!   every log line, telling a refused login from a broker that is down;
//! - [`topology`]: declaring queues exactly as Celery does, plus our `<queue>.dead` queues, and
//!   the delay topology exactly as kombu does;
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
pub(crate) mod depth;
pub(crate) mod publisher;
pub(crate) mod settle;
mod tick;
pub mod topology;

/// Errors talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "RABBITMQ_URL is not a valid AMQP URL ({reason}); expected amqp://user:password@host:5672/vhost (or amqps://), with any / ? # @ : % in the password percent-encoded"
    )]
    InvalidUrl { reason: String },
    #[error("RabbitMQ authentication failed for user {user} at {host}:{port}: check RABBITMQ_URL")]
    Authentication {
        user: String,
        host: String,
        port: u16,
    },
    #[error(
        "RabbitMQ at {host}:{port} refused user {user} the vhost {vhost:?} (missing, or no permission): check the vhost in RABBITMQ_URL"
    )]
    VhostRefused {
        user: String,
        vhost: String,
        host: String,
        port: u16,
    },
    /// The broker's TLS certificate does not verify against WORKER_RABBITMQ_CA_FILE (or the
    /// system roots): a setting to fix, like a refused login.
    #[error(
        "RabbitMQ at {url}: TLS certificate verify failed ({reason}); check WORKER_RABBITMQ_CA_FILE and the broker's certificate"
    )]
    CertificateVerifyFailed { url: String, reason: String },
    #[error("reading {what} {path}: {reason}")]
    TlsFile {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ at {url} did not answer within {after:?}")]
    Timeout {
        url: String,
        after: std::time::Duration,
    },
    #[error("RabbitMQ operation `{op}` failed: {source}")]
    Amqp {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ refused to take the message published to {routing_key:?} (nack)")]
    Nacked { routing_key: String },
    #[error(
        "RabbitMQ returned the message published to exchange {exchange:?} with routing key {routing_key:?}: no queue is bound for it"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl BrokerError {
    /// The broker answered and refused who we are (login or vhost): retrying the same URL
    /// cannot help.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Authentication { .. }
                | Self::VhostRefused { .. }
                | Self::CertificateVerifyFailed { .. }
        )
    }

    pub fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { op, source }
    }
}
