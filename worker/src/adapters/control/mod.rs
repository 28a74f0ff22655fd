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

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use serde_json::{Value, json};

use crate::adapters::broker::{BrokerError, connection};
use crate::wire::control::MailboxNames;

/// The mailbox's two exchanges as kombu declares them, transient: the fanout requests go
/// through and the direct one replies come back on. Node and client both declare them.
pub(crate) async fn declare_exchanges(
    channel: &Channel,
    names: &MailboxNames,
) -> Result<(), BrokerError> {
    let transient = ExchangeDeclareOptions::default();
    channel
        .exchange_declare(
            names.exchange().as_str().into(),
            ExchangeKind::Fanout,
            transient,
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare pidbox"))?;
    channel
        .exchange_declare(
            names.reply_exchange().as_str().into(),
            ExchangeKind::Direct,
            transient,
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("exchange.declare reply pidbox"))?;
    Ok(())
}

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
