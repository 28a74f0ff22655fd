//! The apalis backend of one Celery queue.
//!
//! It yields the deliveries the consumer ([`super::consumer`]) receives for its queue, as
//! `Task<Incoming>`; acking is left to the engine, which acks only after the outcome is stored.
//! The stream never ends and never errors while the worker runs: in apalis 1.0 a `None` hangs
//! `Worker::run()` and an error stops the worker, so broker trouble is the consumer's to absorb
//! by reconnecting.

use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::{Backend, BackendConfig, finalize::Ephemeral};
use apalis_core::layers::Identity;
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::{Mutex, mpsc};

use super::settle::Incoming;

/// Never produced: the backend has no failure of its own.
#[derive(Debug, thiserror::Error)]
#[error("the Celery backend of queue {0} has no delivery source")]
pub(crate) struct NoSource(String);

/// One queue's deliveries for one apalis worker.
pub(crate) struct CeleryBackend {
    // Shared so that apalis's Monitor can rebuild the worker (it calls the factory again on a
    // restart) without losing the receiving end.
    deliveries: Arc<Mutex<mpsc::Receiver<Incoming>>>,
    config: (),
}

impl CeleryBackend {
    pub(crate) fn new(deliveries: Arc<Mutex<mpsc::Receiver<Incoming>>>) -> Self {
        Self {
            deliveries,
            config: (),
        }
    }
}

impl Backend for CeleryBackend {
    type Task = Task<Incoming>;
    type Error = NoSource;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), NoSource>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Incoming>, NoSource>>> {
        let Ok(mut rx) = self.deliveries.try_lock() else {
            // Only one worker polls a queue; contention means a rebuild is under way.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(delivery)) => Poll::Ready(Some(Ok(Task::new(delivery)))),
            // The consumer only drops its senders at exit: stay pending rather than end.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), NoSource>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for CeleryBackend {
    type Args = Incoming;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &self.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}
