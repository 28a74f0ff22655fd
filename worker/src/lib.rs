//! The StaffProBot worker: a Celery-compatible worker and scheduler in one binary.
//!
//! The folders are the layers, inner to outer:
//!
//! - [`wire`] — the Celery wire format, pure: decoding task messages, building the messages we
//!   publish, result documents, exceptions. No I/O, property-tested and fuzzed.
//! - `app` — the application: the `engine` (apalis workers that settle each delivery), the
//!   `registry` (the one place Celery task names meet the jobs of the `jobs` crate) and the
//!   [`scheduler`] (beat's replacement). It speaks to the outside only through the adapters.
//! - `adapters` — the outside world: the RabbitMQ `broker`, the Redis [`results`] backend, the
//!   `delay` store, the `http` server, the Redis connection.
//! - [`startup`] — the composition root: [`startup::Worker::build`] connects and wires every part,
//!   [`startup::Worker::run_until_stopped`] runs it through the phases of a [`shutdown::Shutdown`].
//! - [`cli`] — the commands; `worker run` is a few lines over [`startup`].
//!
//! What is public is what the binary and the end-to-end tests need; everything else is
//! `pub(crate)`, so the compiler reports what nothing uses.

mod adapters;
mod app;
mod backoff;
pub mod cli;
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
pub mod settings;
pub mod shutdown;
pub mod startup;
mod telemetry;
pub mod wire;

pub use adapters::broker::topology;
pub use adapters::redis_conn::RedisConn;
pub use adapters::results;
pub use app::scheduler;
