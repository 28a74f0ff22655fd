//! Delays live in RabbitMQ: a message with a distant eta (a countdown, a retry's backoff) waits
//! in Celery 5.5+'s native delay topology (declared in `broker::topology`, built in
//! `wire::outgoing`), durable and replicated like any queue, where no cache eviction can reach
//! it. What remains here is the upgrade path from the previous release, which kept those
//! messages in a Redis sorted set: [`migrate`] moves any entries left there into the broker.

pub(crate) mod migrate;
