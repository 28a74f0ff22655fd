//! The result backend: Celery-format results in Redis, readable by Python's `AsyncResult`,
//! by `worker result` and over HTTP. [`ResultStore`] reads and writes one document;
//! `ResultWriter` writes final results, through the undelivered-results queue in RabbitMQ
//! while Redis does not take them, and the `undelivered` drainer brings them to Redis.

pub(crate) mod chord;
mod store;
pub(crate) mod undelivered;
mod writer;

pub use store::{ResultError, ResultStore, STORE_SCRIPT, StoreOutcome};
pub(crate) use writer::ResultWriter;
