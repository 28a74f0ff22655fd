//! The shutdown of the service, as one value with named phases.
//!
//! A graceful stop is a sequence, and each part of the service waits for the phase that
//! concerns it instead of holding a token of its own:
//!
//! 1. [`Phase::StopIntake`] — the consumer cancels its `basic.consume`: no new deliveries. The
//!    first SIGTERM/SIGINT (or [`Shutdown::begin`]) starts here.
//! 2. [`Phase::Drain`] — running tasks get the grace period to finish; those still running
//!    after it are dropped unacked, and RabbitMQ hands them to another replica.
//! 3. [`Phase::Settle`] — the acks of finished deliveries are sent.
//! 4. [`Phase::CloseBroker`] — the consuming channel and connection close; every delivery not
//!    acked returns to its queue.
//! 5. [`Phase::StopBackground`] — the loops beside the engine stop: the scheduler, the migration
//!    of the old Redis delayed store, the result flusher, the readiness probe, the HTTP server.
//! 6. [`Phase::Stopped`].
//!
//! Phases only move forward; a part that waits for a phase already passed returns at once. A
//! second signal exits the process at once — still without losing work, since every unfinished
//! message is unacked and RabbitMQ redelivers it.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Where a shutdown stands, in the order the phases happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    StopIntake,
    Drain,
    Settle,
    CloseBroker,
    StopBackground,
    Stopped,
}

/// The shutdown of one service; cheap to clone, every clone sees the same phase.
#[derive(Clone)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Running)),
        }
    }

    /// Ask for a graceful shutdown: what the first SIGTERM does.
    pub fn begin(&self) {
        self.advance(Phase::StopIntake);
    }

    /// Move to `to` if the shutdown is not past it already.
    pub(crate) fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|phase| {
            if to > *phase {
                debug!(from = ?*phase, to = ?to, "shutdown phase");
                *phase = to;
                true
            } else {
                false
            }
        });
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Resolves once the shutdown has reached `phase` (at once if it is past it).
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Begin the shutdown on the first SIGTERM/SIGINT; exit the process on the second.
    pub fn on_signals(&self) -> std::io::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = self.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            info!(
                signal = name,
                "shutting down: no new tasks, waiting for running ones"
            );
            shutdown.begin();
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            warn!("second signal: exiting now; unfinished tasks return to their queues");
            crate::telemetry::flush();
            std::process::exit(130);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_waiters_see_later_phases() {
        let shutdown = Shutdown::new();
        let waiter = {
            let s = shutdown.clone();
            tokio::spawn(async move { s.reached(Phase::Settle).await })
        };
        shutdown.begin();
        assert_eq!(shutdown.phase(), Phase::StopIntake);
        assert!(!waiter.is_finished());
        shutdown.advance(Phase::CloseBroker);
        waiter.await.unwrap();
        shutdown.advance(Phase::Drain);
        assert_eq!(shutdown.phase(), Phase::CloseBroker);
        // Already past: returns at once.
        shutdown.reached(Phase::StopIntake).await;
    }
}
