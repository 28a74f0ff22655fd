//! The result backend: Celery-format results in Redis, readable by Python's `AsyncResult`,
//! by `worker result` and over HTTP.

mod buffer;
mod store;

pub use buffer::{ResultWriter, Written};

pub use store::{ResultError, ResultStore, STORE_SCRIPT, StoreOutcome, connect_redis};
