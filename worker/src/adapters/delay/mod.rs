//! The durable delayed store: where a message with a distant eta (a countdown, a retry's
//! backoff) waits, so that no message is held unacked for long.
//!
//! Celery holds eta messages unacked in memory; past RabbitMQ's `consumer_timeout` (30 min by
//! default) the broker closes the channel (celery#6760), and a crash loses nothing only because
//! the message was never acked. Here a message due later than `--eta-hold` seconds is copied,
//! byte for byte with its properties, into a Redis sorted set scored by its due time, and the
//! delivery is acked only after that write succeeded. Every replica runs a [`poller`] that
//! claims due messages and publishes them back to their queue, where they run at once.
//!
//! Claiming moves a message into an in-flight set with a lease (one Lua script, so two replicas
//! never claim the same message); it leaves the in-flight set only after RabbitMQ confirmed the
//! publish. A replica that dies in between leaves the lease to expire, and the message is
//! claimed again: at-least-once, never lost. Why not apalis-redis's scheduled set: it stores its
//! own job encoding and runs jobs from Redis, while a delayed Celery message must go back to
//! RabbitMQ unchanged so that any consumer — this worker or a Python one — can run it.

pub(crate) mod poller;
mod store;

pub(crate) use store::{DelayedMessage, DelayedStore};
