//! Adapters: how the application reaches the outside world. Each one owns its connections,
//! retries and error types, and exposes a small typed surface to `app` and `startup`.
//!
//! - [`broker`]: RabbitMQ as Celery uses it (consuming, acks, confirmed publishing, topology,
//!   dead letters);
//! - `control`: Celery's remote control mailbox (pidbox) and the revoked ids kept in Redis;
//! - [`results`]: Celery's Redis result backend;
//! - [`delay`]: moving what the old Redis delayed store still holds into the delay topology;
//! - [`http`]: health, readiness, metrics and result lookup over HTTP;
//! - [`postgres`]: the jobs' database pool, its startup probe, `--migrate`;
//! - [`redis_conn`]: connecting to Redis, shared by the Redis adapters.

pub mod broker;
pub(crate) mod control;
pub(crate) mod delay;
pub(crate) mod events;
pub(crate) mod http;
pub(crate) mod postgres;
pub(crate) mod redis_conn;
pub(crate) mod redis_eviction;
pub mod results;
