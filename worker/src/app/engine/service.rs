//! The tower service apalis calls for each delivery of one queue.

use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use futures::FutureExt;
use futures::future::BoxFuture;
use tower::Service;

use super::Executor;
use crate::adapters::broker::settle::Incoming;

#[derive(Clone)]
pub(crate) struct QueueService {
    executor: Arc<Executor>,
    queue: Arc<str>,
}

impl QueueService {
    pub(crate) fn new(executor: Arc<Executor>, queue: &str) -> Self {
        Self {
            executor,
            queue: Arc::from(queue),
        }
    }
}

impl Service<Task<Incoming>> for QueueService {
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Incoming>) -> Self::Future {
        let executor = Arc::clone(&self.executor);
        let queue = Arc::clone(&self.queue);
        // The executor settles every delivery itself (ack, dead-letter or requeue), so nothing
        // is reported to apalis as an error: an error there would only be logged twice.
        async move {
            executor.process(&queue, task.args).await;
            Ok(())
        }
        .boxed()
    }
}
