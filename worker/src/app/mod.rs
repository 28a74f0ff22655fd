//! The application: what the worker does with a message, independent of how it arrives.
//!
//! - [`engine`]: apalis 1.0 workers, one per queue, and the executor that takes one delivery
//!   from decode to settled (run, retry, store, ack);
//! - [`registry`]: Celery task names -> typed jobs (the diagnostic ones and StaffProBot's);
//! - `control`: the answers to Celery's remote control commands (revoke, inspect);
//! - [`scheduler`]: beat's replacement, publishing each tick as an ordinary task message.

pub(crate) mod control;
pub(crate) mod engine;
pub(crate) mod registry;
pub mod scheduler;
