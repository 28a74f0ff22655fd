//! The StaffProBot worker: a Celery-compatible worker and scheduler in one binary.
//!
//! Python keeps publishing Celery tasks to RabbitMQ; this crate consumes them ([`broker`]),
//! runs them on apalis workers ([`engine`]) through the task [`registry`], and stores
//! Celery-format results in Redis ([`results`]). [`celery`] holds the wire format, [`cli`] the
//! commands, [`scheduler`] the beat replacement.

pub mod broker;
pub mod celery;
pub mod cli;
pub mod config;
pub mod delay;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod results;
pub mod scheduler;
pub mod shutdown;
pub mod telemetry;
