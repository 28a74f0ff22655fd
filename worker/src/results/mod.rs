//! The result backend: Celery-format results in Redis, readable by Python's `AsyncResult`,
//! by `worker result` and over HTTP.

mod store;

pub use store::{ResultError, ResultStore, StoreOutcome, connect_redis};
