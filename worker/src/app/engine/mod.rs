//! The execution engine: apalis 1.0 workers, one per queue, under one `Monitor`.
//!
//! Each apalis worker polls its queue's [`CeleryBackend`](crate::adapters::broker::backend::CeleryBackend)
//! and calls [`QueueService`], which hands every delivery to the [`Executor`]. Cross-cutting
//! limits are tower layers on the worker (a concurrency limit equal to the prefetch), not code
//! inside jobs.

mod executor;
pub(crate) mod retry;
mod service;
pub(crate) mod time_limit;

pub(crate) use executor::{Executor, ExecutorSettings};
pub(crate) use service::QueueService;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use tokio::sync::{Mutex, mpsc};
use tower::limit::ConcurrencyLimitLayer;

use crate::adapters::broker::backend::CeleryBackend;
use crate::adapters::broker::settle::Incoming;

/// Run one apalis worker per queue until `signal` resolves, then let running tasks finish for
/// up to `grace`; tasks still running after that are dropped unacked (RabbitMQ requeues them).
pub(crate) async fn run(
    executor: Arc<Executor>,
    receivers: HashMap<String, mpsc::Receiver<Incoming>>,
    concurrency: usize,
    grace: Duration,
    signal: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
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
