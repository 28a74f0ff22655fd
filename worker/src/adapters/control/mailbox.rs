//! The worker's side of the mailbox: a connection of its own (so remote control answers even
//! when every task slot is busy), the node queue `<node>.<namespace>.pidbox` declared as
//! kombu's `Node` declares it and bound to the fanout exchange, each request handed to the
//! [`Panel`] one at a time, and the reply published to the reply exchange.
//!
//! kombu consumes with `no_ack`; we ack after handling, under a prefetch of
//! [`PREFETCH`], so a flood of requests waits in RabbitMQ (300 s message TTL) instead of in
//! our memory (lapin still reads a message whole before we can look at its size, so a
//! prefetch of a few keeps that to a few messages). Each (re)connection first reloads the
//! revoked ids from Redis: a revoke broadcast while this node was away is not missed. Replies go only to `reply.<namespace>.pidbox`: a request naming another
//! exchange would have us declare or publish wherever an attacker points, so it gets none.
//! Anything unreadable is logged and dropped; nothing a request holds ends the loop.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tracing::{debug, info, warn};

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::connection::{self, OnRefusal};
use crate::app::control::Panel;
use crate::shutdown::{Phase, Shutdown};
use crate::wire::control::{ControlMessage, ControlRequest, MailboxNames, queue_arguments};

/// Requests handled at once per node (they are handled one after the other).
const PREFETCH: u16 = 4;

/// Serve remote control for `panel.node` until the shutdown reaches its background phase.
pub(crate) async fn run(url: String, names: MailboxNames, panel: Arc<Panel>, shutdown: Shutdown) {
    let mut failures = 0u32;
    loop {
        let conn = match connection::connect_with_backoff(&url, &shutdown, OnRefusal::Retry).await {
            Ok(Some(conn)) => conn,
            // The consumer reports a refused login; the mailbox just stops.
            Ok(None) | Err(_) => return,
        };
        let served = tokio::select! {
            served = serve(&conn, &names, &panel) => served,
            () = shutdown.reached(Phase::StopBackground) => {
                let _ = conn.close(200, "worker shutting down".into()).await;
                return;
            }
        };
        if let Err(e) = served {
            failures = failures.saturating_add(1);
            warn!(node = %panel.node, error = %e, "remote control mailbox failed; reconnecting");
        }
        let _ = conn.close(320, "reconnecting".into()).await;
        let wait = crate::backoff::backoff(failures, Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.reached(Phase::StopBackground) => return,
        }
    }
}

/// Declare, consume and answer until the connection or the consumer ends.
async fn serve(conn: &Connection, names: &MailboxNames, panel: &Panel) -> Result<(), BrokerError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(BrokerError::amqp("basic.qos"))?;
    let queue = names.node_queue(&panel.node);
    declare(&channel, names, &queue).await?;
    // Revokes broadcast while this node was not listening reached the others, and Redis.
    panel.load_revoked().await;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("{}-pidbox-{}", panel.node, uuid::Uuid::new_v4())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("basic.consume"))?;
    info!(node = %panel.node, queue = %queue, exchange = %names.exchange(), "remote control mailbox listening");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(BrokerError::amqp("consume pidbox"))?;
        if let Some(reply) = answer(panel, names, &delivery.data).await {
            channel
                .basic_publish(
                    reply.exchange.as_str().into(),
                    reply.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &reply.body,
                    BasicProperties::from(reply.properties),
                )
                .await
                .map_err(BrokerError::amqp("basic.publish reply"))?;
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp("basic.ack"))?;
    }
    Ok(())
}

/// The fanout exchange, the node queue and its binding, the reply exchange; as kombu declares
/// them (not durable; the node queue exclusive and auto-delete with kombu's TTL and expiry).
async fn declare(channel: &Channel, names: &MailboxNames, queue: &str) -> Result<(), BrokerError> {
    super::declare_exchanges(channel, names).await?;
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    // RESOURCE_LOCKED here means another live worker has the same node name.
    channel
        .queue_declare(queue.into(), options, queue_arguments())
        .await
        .map_err(BrokerError::amqp(
            "queue.declare node pidbox (is another worker running with this WORKER_HOSTNAME?)",
        ))?;
    channel
        .queue_bind(
            queue.into(),
            names.exchange().as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("queue.bind node pidbox"))?;
    Ok(())
}

/// Handle one request body; the reply to publish, if one is due.
async fn answer(panel: &Panel, names: &MailboxNames, body: &[u8]) -> Option<ControlMessage> {
    let clock = panel.tick();
    let request = match ControlRequest::parse(body) {
        Ok(r) => r,
        Err(e) => {
            warn!(node = %panel.node, error = %e, "ignoring an unreadable remote control message");
            return None;
        }
    };
    if !request.is_for(&panel.node) {
        return None;
    }
    debug!(method = %request.method, "remote control command");
    let reply = panel.handle(&request.method, &request.arguments).await;
    let (reply_to, ticket) = request.reply?;
    if reply_to.exchange != names.reply_exchange() {
        warn!(method = %request.method, exchange = %reply_to.exchange, expected = %names.reply_exchange(), "not replying to a remote control request that names another reply exchange");
        return None;
    }
    Some(ControlMessage::reply(
        &reply_to,
        &ticket,
        &panel.node,
        &reply,
        clock,
    ))
}
