//! How deep a queue is and who consumes it, by a passive `queue.declare`: it answers with the
//! message and consumer counts and never creates the queue. Looking must not change what is
//! looked at — a queue created by a typo'd `--queue` would sit there forever.
//!
//! A missing queue closes the channel with 404 NOT_FOUND, so each look takes its own channel.

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use serde::Serialize;

use super::BrokerError;

/// A queue's counts, as RabbitMQ reports them at the moment asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Depth {
    /// Messages ready for delivery (not those delivered and unacked).
    pub messages: u32,
    pub consumers: u32,
}

/// `queue`'s counts, `None` when it does not exist.
pub(crate) async fn depth(conn: &Connection, queue: &str) -> Result<Option<Depth>, BrokerError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(q) => {
            let _ = channel.close(200, "looked".into()).await;
            Ok(Some(Depth {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            }))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(BrokerError::amqp("queue.declare passive")(e)),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}
