//! The drainer of the undelivered-results queue: in every replica, results that Redis could not
//! take when their task ended are written to Redis as soon as it answers, each acked only after
//! its write, so a drainer that dies mid-way leaves the rest (and the one in hand) in the queue.
//!
//! It polls with `basic.get` rather than consuming: one message at a time, never more in hand
//! than it can write, and the reply's message count is the queue's depth for the metric and
//! `/readyz` without asking RabbitMQ again. A message that is not a result document (someone
//! else published to our queue) goes to the queue's dead-letter queue, never back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use tracing::{debug, info, warn};

use super::ResultStore;
use super::writer::WRITE_DEADLINE;
use crate::adapters::broker::publisher::Publisher;
use crate::adapters::broker::{BrokerError, connection, dead_letter, topology};
use crate::metrics::METRICS;
use crate::shutdown::{Phase, Shutdown};
use crate::wire::ResultMeta;

/// How long to wait when the queue is empty, or Redis or RabbitMQ failed, before trying again.
const IDLE: Duration = Duration::from_secs(1);

/// The queue's depth as last seen, shared with `/readyz`.
#[derive(Debug, Default)]
pub(crate) struct Depth(AtomicU64);

impl Depth {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, depth: u64) {
        self.0.store(depth, Ordering::Relaxed);
        METRICS
            .results_waiting_for_redis
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
}

pub(crate) struct Drainer {
    pub url: String,
    pub queue: String,
    pub store: ResultStore,
    pub publisher: Arc<Publisher>,
    pub depth: Arc<Depth>,
}

enum Step {
    /// Wrote one; look for the next at once.
    Drained,
    /// Nothing to do, or Redis refused: wait before trying again.
    Wait,
}

impl Drainer {
    /// Drain until the background loops stop.
    pub(crate) async fn run(self, shutdown: Shutdown) {
        let mut written = 0u64;
        loop {
            let open = tokio::select! {
                _ = shutdown.reached(Phase::StopBackground) => return,
                open = self.open() => open,
            };
            let (_connection, channel) = match open {
                Ok(open) => open,
                Err(e) => {
                    debug!(error = %e, queue = %self.queue, "undelivered-results drainer cannot reach RabbitMQ");
                    tokio::select! {
                        _ = shutdown.reached(Phase::StopBackground) => return,
                        () = tokio::time::sleep(IDLE) => continue,
                    }
                }
            };
            loop {
                let step = tokio::select! {
                    _ = shutdown.reached(Phase::StopBackground) => return,
                    step = self.step(&channel, &mut written) => step,
                };
                match step {
                    Ok(Step::Drained) => continue,
                    Ok(Step::Wait) => {}
                    Err(e) => {
                        debug!(error = %e, "undelivered-results drainer lost its channel");
                        break;
                    }
                }
                if written > 0 && self.depth.get() == 0 {
                    info!(written, queue = %self.queue, "wrote results that had waited for Redis");
                    written = 0;
                }
                tokio::select! {
                    _ = shutdown.reached(Phase::StopBackground) => return,
                    () = tokio::time::sleep(IDLE) => {}
                }
            }
        }
    }

    async fn open(&self) -> Result<(Connection, Channel), BrokerError> {
        let connection = connection::connect(&self.url).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("channel.open"))?;
        topology::declare_own_queue(&channel, &self.queue).await?;
        topology::declare_own_queue(&channel, &topology::dead_letter_queue(&self.queue)).await?;
        Ok((connection, channel))
    }

    async fn step(&self, channel: &Channel, written: &mut u64) -> Result<Step, BrokerError> {
        let got = channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(BrokerError::amqp("basic.get"))?;
        let Some(got) = got else {
            self.depth.set(0);
            return Ok(Step::Wait);
        };
        self.depth
            .set(u64::from(got.message_count).saturating_add(1));
        let delivery = got.delivery;
        let meta: ResultMeta = match serde_json::from_slice(&delivery.data) {
            Ok(meta) => meta,
            Err(e) => {
                warn!(queue = %self.queue, error = %e, "not a result document in the undelivered-results queue; dead-lettering it");
                dead_letter::dead_letter(
                    &self.publisher,
                    &self.queue,
                    &delivery.data,
                    &delivery.properties,
                    "not_a_result",
                    &e.to_string(),
                )
                .await?;
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(BrokerError::amqp("basic.ack"))?;
                return Ok(Step::Drained);
            }
        };
        match tokio::time::timeout(WRITE_DEADLINE, self.store.store(&meta)).await {
            Ok(Ok(_)) => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(BrokerError::amqp("basic.ack"))?;
                *written = written.saturating_add(1);
                self.depth.set(u64::from(got.message_count));
                Ok(Step::Drained)
            }
            _ => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
                    .map_err(BrokerError::amqp("basic.nack"))?;
                Ok(Step::Wait)
            }
        }
    }
}
