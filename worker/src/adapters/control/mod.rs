//! Celery's remote control over RabbitMQ, as kombu's `Mailbox` speaks it (the message shapes
//! are in [`crate::wire::control`], the commands in `app::control`):
//!
//! - [`mailbox`]: the worker's node: its own connection and queue, requests in, replies out;
//! - [`client`]: broadcasting a command and gathering the replies (`worker inspect`,
//!   `worker revoke`), against our workers and Python's alike;
//! - [`store`]: the revoked ids kept in Redis, so that they survive a restart.

pub(crate) mod client;
pub(crate) mod mailbox;
pub(crate) mod store;

use serde_json::{Value, json};

use crate::adapters::broker::connection;

/// `stats()["broker"]` for RABBITMQ_URL (its first broker when it lists several): where and
/// who, never the password.
pub(crate) fn broker_facts(url: &str) -> Value {
    match connection::parse_urls(url).map(|uris| uris.into_iter().next()) {
        Ok(Some(uri)) => json!({
            "hostname": uri.authority.host,
            "port": uri.authority.port,
            "userid": uri.authority.userinfo.username,
            "virtual_host": uri.vhost,
            "transport": "amqp",
            "ssl": matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS),
            "heartbeat": uri.query.heartbeat,
        }),
        Ok(None) | Err(_) => Value::Null,
    }
}
