//! The execution engine: apalis 1.0 workers, one per queue, under one `Monitor`.
//!
//! Each apalis worker polls its queue's [`CeleryBackend`](crate::adapters::broker::backend::CeleryBackend)
//! and calls [`QueueService`], which hands every delivery to the [`Executor`]. Cross-cutting
//! limits are tower layers on the worker (a concurrency limit equal to the prefetch), not code
//! inside jobs.

mod canvas;
mod executor;
pub(crate) mod inflight;
mod requeues;
pub(crate) mod retry;
mod service;
mod supervision;
pub(crate) mod time_limit;

pub(crate) use executor::{Executor, ExecutorSettings};
pub(crate) use service::QueueService;
pub(crate) use supervision::QueueHealth;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::event::Event;
use tokio::sync::{Mutex, mpsc};
use tower::limit::ConcurrencyLimitLayer;

use crate::adapters::broker::backend::CeleryBackend;
use crate::adapters::broker::settle::Incoming;
use crate::shutdown::Shutdown;

/// Run one apalis worker per queue until `signal` resolves, then let running tasks finish for
/// up to `grace`; tasks still running after that are dropped unacked (RabbitMQ requeues them).
/// A worker that ends before the shutdown is recorded in `health` and begins it (see
/// [`supervision`]).
pub(crate) async fn run(
    executor: Arc<Executor>,
    receivers: HashMap<String, mpsc::Receiver<Incoming>>,
    concurrency: usize,
    grace: Duration,
    signal: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    supervised: (Arc<QueueHealth>, Shutdown),
) -> Result<(), apalis_core::monitor::MonitorError> {
    let mut monitor = Monitor::new().shutdown_timeout(grace);
    for (queue, rx) in receivers {
        let rx = Arc::new(Mutex::new(rx));
        let executor = Arc::clone(&executor);
        monitor = monitor.register(move |_restarts| {
            WorkerBuilder::new(format!("queue:{queue}"))
                .backend(CeleryBackend::new(Arc::clone(&rx)))
                .layer(ConcurrencyLimitLayer::new(concurrency.max(1)))
                .build(QueueService::new(Arc::clone(&executor), &queue))
        });
    }
    let monitor = supervise(monitor, supervised);
    // The Monitor polls every task future itself. Spawned, it runs on a runtime worker thread
    // beside the broker and Redis I/O; on the `block_on` thread every wake-up from that I/O
    // would cross threads (a futex each) before a task could move on.
    match tokio::spawn(monitor.run_with_signal(signal)).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        // Only a runtime shutdown cancels it, and then nobody awaits this.
        Err(_) => Ok(()),
    }
}

/// A worker that fails or stops while the service runs is not restarted: it is recorded and
/// the service stops.
fn supervise(monitor: Monitor, (health, shutdown): (Arc<QueueHealth>, Shutdown)) -> Monitor {
    let (h, s) = (Arc::clone(&health), shutdown.clone());
    monitor
        .should_restart(move |ctx, error| {
            h.worker_ended(ctx.name(), &error.to_string(), &s);
            false
        })
        .on_event(move |ctx, event| {
            if matches!(event, Event::Stop | Event::Exit) {
                health.worker_ended(ctx.name(), "its worker stopped", &shutdown);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apalis_core::backend::TaskSink;
    use apalis_core::backend::memory::MemoryStorage;

    /// A real apalis worker whose service panics outside our executor: the queue is recorded as
    /// stopped and the shutdown begins.
    #[tokio::test]
    async fn a_worker_that_dies_is_recorded_and_stops_the_service() {
        let health = Arc::new(QueueHealth::default());
        let shutdown = Shutdown::new();
        let mut storage = MemoryStorage::new();
        storage.push(1u32).await.unwrap();
        async fn explode(_: u32) -> Result<(), apalis_core::error::BoxDynError> {
            panic!("outside any delivery")
        }
        // Built once: the supervision never restarts a worker.
        let storage = std::sync::Mutex::new(Some(storage));
        let monitor = Monitor::new().register(move |_| {
            let storage = storage.lock().unwrap().take().expect("built once");
            WorkerBuilder::new("queue:doomed")
                .backend(storage)
                .build(explode)
        });
        let monitor = supervise(monitor, (Arc::clone(&health), shutdown.clone()));
        let s = shutdown.clone();
        let run = tokio::spawn(monitor.run_with_signal(async move {
            s.reached(crate::shutdown::Phase::StopIntake).await;
            Ok(())
        }));
        tokio::time::timeout(
            Duration::from_secs(5),
            shutdown.reached(crate::shutdown::Phase::StopIntake),
        )
        .await
        .expect("the shutdown began");
        assert!(
            health.stopped().contains_key("doomed"),
            "{:?}",
            health.stopped()
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
    }
}
