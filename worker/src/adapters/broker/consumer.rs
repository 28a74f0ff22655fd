//! The consuming side: one connection and one channel for all queues, kept alive forever.
//!
//! The prefetch is global to the channel (`basic.qos(global=true)`), as Celery sets it, so the
//! worker holds at most `prefetch` unacked messages whatever the number of queues. Deliveries
//! With quorum queues (WORKER_QUEUE_TYPE=quorum) the prefetch is per consumer instead, as Celery
//! does when it detects them: RabbitMQ refuses global QoS on a quorum queue, so each queue's
//! consumer holds at most `prefetch` unacked messages. Deliveries
//! are handed to the per-queue apalis backends through bounded channels. When the connection or
//! a consumer dies, everything is re-opened with backoff; deliveries still held from the dead
//! channel cannot be acked any more, and RabbitMQ redelivers them — at-least-once, never lost.
//! Nothing here ends the stream of deliveries: an apalis backend that yields `None` or an error
//! stops its worker for good.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::connection::OnRefusal;
use super::settle::{Incoming, Settlements};
use super::{BrokerError, connection, topology};
use crate::settings::DelayQueueType;
use crate::shutdown::{Phase, Shutdown};

/// What the consumer is told and what it tells: the shutdown it follows, and whether it
/// consumes now (read by `/readyz` and by the ready file).
#[derive(Clone)]
pub(crate) struct ConsumerControl {
    /// Stop taking deliveries at [`Phase::StopIntake`], send the last acks at
    /// [`Phase::Settle`], close the connection at [`Phase::CloseBroker`].
    pub shutdown: Shutdown,
    /// True while consuming.
    pub consuming: watch::Sender<bool>,
    /// The delay topology's queue type, declared (with our queues' bindings) on every connect.
    pub delayed_queue_type: DelayQueueType,
    /// True once that declaration succeeded on the current connection (read by `/readyz`).
    pub delays_declared: watch::Sender<bool>,
}

/// The consumer's task: it ends with an error only when the broker refused the login or vhost
/// before the first connection (and it then begins the shutdown).
pub(crate) type ConsumerTask = tokio::task::JoinHandle<Result<(), BrokerError>>;

/// Start consuming `queues`; returns the per-queue delivery receivers and the consumer's task.
pub(crate) fn spawn(
    url: String,
    queues: Vec<String>,
    prefetch: u16,
    control: ConsumerControl,
) -> (HashMap<String, mpsc::Receiver<Incoming>>, ConsumerTask) {
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for q in &queues {
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        senders.insert(q.clone(), tx);
        receivers.insert(q.clone(), rx);
    }
    let handle = tokio::spawn(supervise(url, queues, prefetch, senders, control));
    (receivers, handle)
}

async fn supervise(
    url: String,
    queues: Vec<String>,
    prefetch: u16,
    senders: HashMap<String, mpsc::Sender<Incoming>>,
    control: ConsumerControl,
) -> Result<(), BrokerError> {
    let mut failures = 0u32;
    // Until a connection has succeeded once, a refused login or vhost is a wrong RABBITMQ_URL:
    // stop instead of retrying what cannot work. Afterwards it is retried (see `connection`).
    let mut on_refusal = OnRefusal::Fail;
    loop {
        let conn = match connection::connect_with_backoff(&url, &control.shutdown, on_refusal).await
        {
            Ok(Some(conn)) => conn,
            Ok(None) => return Ok(()),
            Err(e) => {
                control.shutdown.begin();
                return Err(e);
            }
        };
        on_refusal = OnRefusal::Retry;
        let ended = consume(&conn, &queues, prefetch, &senders, &control).await;
        control.consuming.send_replace(false);
        match ended {
            Ok(Ended::Closed) => {
                let _ = conn.close(200, "worker shutting down".into()).await;
                return Ok(());
            }
            Ok(Ended::ConsumerLost) => {
                failures = 0;
                warn!("lost the RabbitMQ consumer; reconnecting");
            }
            Err(e) => {
                failures += 1;
                error!(error = %e, "RabbitMQ consumer failed; reconnecting");
            }
        }
        let _ = conn.close(320, "reconnecting".into()).await;
        let wait = crate::backoff::backoff(failures, Duration::from_secs(30));
        tokio::select! {
            _ = control.shutdown.reached(Phase::StopIntake) => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

enum Ended {
    Closed,
    ConsumerLost,
}

async fn consume(
    conn: &Connection,
    queues: &[String],
    prefetch: u16,
    senders: &HashMap<String, mpsc::Sender<Incoming>>,
    control: &ConsumerControl,
) -> Result<Ended, BrokerError> {
    let channel = open_channel(conn, queues, prefetch).await?;
    let declared = declare_delays(conn, queues, control.delayed_queue_type).await;
    control.delays_declared.send_replace(declared);
    let settlements = Settlements::new(channel.clone());
    let acks_stop = CancellationToken::new();
    let acks = tokio::spawn(Arc::clone(&settlements).run(acks_stop.clone()));
    let lost = CancellationToken::new();
    let mut forwarders = Vec::new();
    let mut tags = Vec::new();
    for queue in queues {
        let tag = format!("{}-{}", crate::settings::hostname(), uuid::Uuid::new_v4());
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp("basic.consume"))?;
        tags.push(tag);
        let Some(tx) = senders.get(queue).cloned() else {
            continue;
        };
        let lost = lost.clone();
        let shutdown = control.shutdown.clone();
        let queue = queue.clone();
        let settlements = Arc::clone(&settlements);
        forwarders.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.reached(Phase::StopIntake) => return,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            settlements.delivered(delivery.delivery_tag);
                            let incoming = Incoming { delivery, settlements: Arc::clone(&settlements) };
                            if tx.send(incoming).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            warn!(queue = %queue, error = %e, "consumer stream error");
                            lost.cancel();
                            return;
                        }
                        None => {
                            lost.cancel();
                            return;
                        }
                    }
                }
            }
        }));
    }
    control.consuming.send_replace(true);
    info!(queues = ?queues, prefetch, "consuming");

    tokio::select! {
        _ = lost.cancelled() => {
            forwarders.iter().for_each(|f| f.abort());
            acks_stop.cancel();
            Ok(Ended::ConsumerLost)
        }
        _ = control.shutdown.reached(Phase::StopIntake) => {
            // Stop deliveries but keep the channel open: running tasks still need to ack.
            // Deliveries received and not started stay unacked and return at close.
            for tag in &tags {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            }
            control.shutdown.reached(Phase::Settle).await;
            for f in &forwarders { f.abort(); }
            // The last acks, before the channel goes.
            acks_stop.cancel();
            let _ = acks.await;
            control.shutdown.reached(Phase::CloseBroker).await;
            // Closed before the connection: closing a connection with an open channel makes
            // lapin log a spurious "invalid channel state: Closing" error on every shutdown.
            let _ = channel.close(200, "worker shutting down".into()).await;
            Ok(Ended::Closed)
        }
    }
}

/// Declare the delay topology and bind our queues to it, on a channel of its own: a 406 (a
/// topology declared with another queue type) closes that channel only, and consuming goes on
/// — tasks without a countdown still run, delayed ones go back to their queue and say why.
async fn declare_delays(conn: &Connection, queues: &[String], queue_type: DelayQueueType) -> bool {
    let declared = async {
        let channel = conn
            .create_channel()
            .await
            .map_err(BrokerError::amqp("channel.open"))?;
        topology::declare_delay_topology(&channel, queue_type).await?;
        for q in queues {
            topology::bind_to_delayed_delivery(&channel, q).await?;
        }
        let _ = channel.close(200, "delay topology declared".into()).await;
        Ok::<(), BrokerError>(())
    };
    match declared.await {
        Ok(()) => {
            info!(queue_type = queue_type.as_str(), "delay topology declared");
            true
        }
        Err(e) => {
            error!(
            error = %e,
            queue_type = queue_type.as_str(),
            "cannot declare the delay topology (celery_delayed_*); countdowns and retries cannot wait in RabbitMQ. If it exists with another queue type, set WORKER_DELAYED_QUEUE_TYPE to the broker_native_delayed_delivery_queue_type of the Python workers"
            );
            false
        }
    }
}

async fn open_channel(
    conn: &Connection,
    queues: &[String],
    prefetch: u16,
) -> Result<Channel, BrokerError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(BrokerError::amqp("channel.open"))?;
    channel
        .basic_qos(
            prefetch,
            BasicQosOptions {
                global: topology::queue_type() == crate::settings::QueueType::Classic,
            },
        )
        .await
        .map_err(BrokerError::amqp("basic.qos"))?;
    for q in queues {
        topology::declare_celery_queue(&channel, q).await?;
    }
    declare_dead_letter_queues(conn, queues).await;
    Ok(channel)
}

/// Declare the `<queue>.dead` queues on a channel of their own: they are classic queues, so in
/// a cluster each lives on one node, and while that node is down its declaration fails
/// (NOT_FOUND, "home node ... is down"). That must not stop consuming from the quorum queues,
/// which the other nodes still serve. Meanwhile a dead letter may not reach it (see the
/// report of the cluster test in tests/broker_cluster.rs).
async fn declare_dead_letter_queues(conn: &Connection, queues: &[String]) {
    for q in queues {
        let declared = async {
            let channel = conn
                .create_channel()
                .await
                .map_err(BrokerError::amqp("channel.open"))?;
            topology::declare_dead_letter_queue(&channel, q).await?;
            let _ = channel
                .close(200, "dead-letter queue declared".into())
                .await;
            Ok::<(), BrokerError>(())
        };
        if let Err(e) = declared.await {
            error!(queue = %q, error = %e, "cannot declare the dead-letter queue; consuming anyway");
        }
    }
}
