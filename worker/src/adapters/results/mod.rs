//! The result backend: Celery-format results in Redis, readable by Python's `AsyncResult`,
//! by `worker result` and over HTTP. [`ResultStore`] reads and writes one document;
//! `ResultWriter` keeps final results through a Redis outage.

mod buffer;
pub(crate) mod chord;
mod store;

pub(crate) use buffer::ResultWriter;
pub use store::{ResultError, ResultStore, STORE_SCRIPT, StoreOutcome};
