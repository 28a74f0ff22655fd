//! Settling deliveries with RabbitMQ, with acks batched per channel.
//!
//! One `basic.ack` frame per task is work RabbitMQ does message by message, and at a few
//! thousand tasks a second the broker, not the worker, sets the pace. Here the acks of finished
//! deliveries are collected and sent as one `basic.ack(multiple=true)` for the longest run of
//! settled deliveries that starts at the oldest delivery still held: RabbitMQ acks every message
//! up to that tag at once.
//!
//! At-least-once is kept: a multiple ack only covers tags that are all settled, so a message
//! whose task still runs, or whose requeue is on its way, is never acked by accident. An ack
//! that cannot join such a run (a delivery below it is still running) is sent on its own after
//! [`SINGLE_ACK_DELAY`], so a long task never holds back the prefetch window. Flushes are
//! serialised, so no tag is acked twice (RabbitMQ closes the channel for that). A channel that
//! dies loses its unsent acks, and RabbitMQ redelivers those messages, as with any lost ack.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::METRICS;

/// How long an ack that cannot join a multiple ack waits for the deliveries below it.
pub(crate) const SINGLE_ACK_DELAY: Duration = Duration::from_millis(20);

/// A delivery and the settlements of the channel it came on.
pub(crate) struct Incoming {
    pub delivery: Delivery,
    pub settlements: Arc<Settlements>,
}

/// The deliveries of one channel that are not settled with the broker yet.
pub(crate) struct Settlements {
    channel: Channel,
    state: Mutex<State>,
    wake: Notify,
    /// Held while frames are being sent, so acks go out in the order they were decided.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Delivered and not settled: the task runs, waits, or is being requeued.
    held: BTreeSet<u64>,
    /// Settled with an ack that has not been sent.
    acked: BTreeSet<u64>,
}

/// What one flush sends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Batch {
    /// `basic.ack(multiple=true)` up to this tag.
    up_to: Option<u64>,
    /// How many settled deliveries that multiple ack covers.
    in_run: u64,
    /// `basic.ack` of each of these alone.
    singles: Vec<u64>,
}

impl State {
    /// Take what can be acked now: the settled run below the oldest held tag, and, when
    /// `with_singles`, the settled tags above it one by one.
    fn take(&mut self, with_singles: bool) -> Batch {
        let oldest_held = self.held.first().copied();
        let below = |tag: &u64| oldest_held.is_none_or(|h| *tag < h);
        let up_to = self.acked.iter().copied().take_while(below).last();
        let mut in_run = 0;
        if let Some(t) = up_to {
            let rest = self.acked.split_off(&(t + 1));
            in_run = self.acked.len() as u64;
            self.acked = rest;
        }
        let singles = if with_singles {
            std::mem::take(&mut self.acked).into_iter().collect()
        } else {
            Vec::new()
        };
        Batch {
            up_to,
            in_run,
            singles,
        }
    }
}

impl Settlements {
    pub(crate) fn new(channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            channel,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            sending: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the consumer for each delivery, before anyone can settle it.
    pub(crate) fn delivered(&self, tag: u64) {
        self.state().held.insert(tag);
    }

    /// The delivery's outcome is recorded: ack it (soon, possibly with others).
    pub(crate) fn ack(&self, tag: u64) {
        {
            let mut state = self.state();
            state.held.remove(&tag);
            state.acked.insert(tag);
        }
        self.wake.notify_one();
    }

    /// Hand the delivery back to its queue, now.
    pub(crate) async fn requeue(&self, tag: u64) -> Result<(), lapin::Error> {
        let sent = {
            let _order = self.sending.lock().await;
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                )
                .await
        };
        // Only now may a multiple ack pass over this tag.
        self.state().held.remove(&tag);
        self.wake.notify_one();
        sent
    }

    /// Send the acks that can go now; with `with_singles`, also those that cannot join a run.
    pub(crate) async fn flush(&self, with_singles: bool) -> Result<(), lapin::Error> {
        let _order = self.sending.lock().await;
        let batch = self.state().take(with_singles);
        if let Some(tag) = batch.up_to {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
            METRICS.ack_frames.with_label_values(&["multiple"]).inc();
            METRICS.messages_acked.inc_by(batch.in_run);
        }
        for tag in batch.singles {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await?;
            METRICS.ack_frames.with_label_values(&["single"]).inc();
            METRICS.messages_acked.inc();
        }
        Ok(())
    }

    fn waiting_acks(&self) -> bool {
        !self.state().acked.is_empty()
    }

    /// Send acks as deliveries settle, until `stop`; then send what is left.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        // When acks that could not join a run are sent anyway; set once, not pushed back by
        // later wake-ups, so a busy channel cannot postpone them forever.
        let mut singles_due: Option<tokio::time::Instant> = None;
        loop {
            let due = singles_due.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {
                    // Let tasks finishing at the same moment add their acks to this frame.
                    tokio::task::yield_now().await;
                    self.report(self.flush(false).await);
                }
                _ = tokio::time::sleep_until(due), if singles_due.is_some() => {
                    self.report(self.flush(true).await);
                }
            }
            singles_due = match (self.waiting_acks(), singles_due) {
                (false, _) => None,
                (true, Some(due)) => Some(due),
                (true, None) => Some(tokio::time::Instant::now() + SINGLE_ACK_DELAY),
            };
        }
        self.report(self.flush(true).await);
    }

    fn report(&self, sent: Result<(), lapin::Error>) {
        if let Err(e) = sent {
            warn!(error = %e, "could not ack on this channel; RabbitMQ will redeliver those messages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(held: &[u64], acked: &[u64]) -> State {
        State {
            held: held.iter().copied().collect(),
            acked: acked.iter().copied().collect(),
        }
    }

    #[test]
    fn a_run_below_the_oldest_held_tag_goes_in_one_multiple_ack() {
        let mut s = state(&[5, 9], &[1, 2, 3, 4, 6, 7]);
        assert_eq!(
            s.take(false),
            Batch {
                up_to: Some(4),
                in_run: 4,
                singles: vec![]
            }
        );
        assert_eq!(s.acked.iter().copied().collect::<Vec<_>>(), [6, 7]);
        assert_eq!(
            s.take(true),
            Batch {
                up_to: None,
                in_run: 0,
                singles: vec![6, 7]
            }
        );
        assert!(s.acked.is_empty());
    }

    #[test]
    fn nothing_held_means_everything_settled_goes_at_once() {
        let mut s = state(&[], &[3, 4, 8]);
        assert_eq!(
            s.take(false),
            Batch {
                up_to: Some(8),
                in_run: 3,
                singles: vec![]
            }
        );
    }

    #[test]
    fn a_held_tag_is_never_covered() {
        // Tag 1 still runs: nothing may be acked with multiple=true.
        let mut s = state(&[1], &[2, 3]);
        assert_eq!(s.take(false), Batch::default());
        assert_eq!(
            s.take(true),
            Batch {
                up_to: None,
                in_run: 0,
                singles: vec![2, 3]
            }
        );
    }

    #[test]
    fn nothing_settled_sends_nothing() {
        let mut s = state(&[1, 2], &[]);
        assert_eq!(s.take(true), Batch::default());
    }
}
