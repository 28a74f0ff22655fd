//! The one harness of the end-to-end tests: real RabbitMQ, Redis, PostgreSQL and (for
//! compatibility) Python Celery, never mocks. Each test gets its own names (queues, Redis key
//! prefixes, databases) from [`unique`], so tests run in parallel and can be repeated.
//!
//! - [`process`]: the worker binary as a child process; it reports readiness and its HTTP
//!   address through its `--ready-file`, not through log wording;
//! - [`amqp`]: publishing and reading raw messages; [`results`]: reading Celery results;
//! - [`db`]: a fresh migrated database per test; [`python`]: the Celery 5.7 virtualenv;
//! - [`scheduler`]: the scheduler's library-level tests (their own tick publisher, state);
//! - [`services`]: private RabbitMQ nodes and Redis servers for fault tests.

#![allow(dead_code, unused_imports)]

pub mod amqp;
pub mod db;
pub mod process;
pub mod python;
pub mod results;
pub mod scheduler;
pub mod services;

use std::path::PathBuf;
use std::process::Output;

pub use amqp::*;
pub use db::*;
pub use process::*;
pub use python::*;
pub use results::*;

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The workspace root (where `.venv` and `tests/python` live).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A name unique across tests and runs, for queues, key prefixes and files.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
