//! Adapters: how the application reaches the outside world. Each one owns its connections,
//! retries and error types, and exposes a small typed surface to `app` and `startup`.
//!
//! - [`broker`]: RabbitMQ as Celery uses it (consuming, acks, confirmed publishing, topology,
//!   dead letters);
//! - `control`: Celery's remote control mailbox (pidbox) and the revoked ids kept in Redis;
//! - [`results`]: Celery's Redis result backend;
//! - [`delay`]: moving what the old Redis delayed store still holds into the delay topology;
//! - [`http`]: health, readiness, metrics, result lookup and the status page over HTTP;
//! - [`overview`]: queue depths (never creating a queue) and the workers online;
//! - [`failures`]: the recent failures and retries, kept in Redis for the status page;
//! - [`postgres`]: the jobs' database pool, its startup probe, `--migrate`;
//! - [`redis_conn`]: connecting to Redis, shared by the Redis adapters.

pub mod broker;
pub(crate) mod control;
pub(crate) mod delay;
pub(crate) mod events;
pub(crate) mod failures;
pub(crate) mod http;
pub(crate) mod overview;
pub(crate) mod postgres;
pub(crate) mod redis_conn;
pub(crate) mod redis_eviction;
pub mod results;
