//! The Celery wire format, with no I/O: decoding the task messages Python producers publish
//! (protocol v2, v1 and the hybrid of both), encoding the v2 messages we publish ourselves, and
//! the result documents Celery's Redis backend stores.
//!
//! Everything here is pure so that it can be property-tested: a broker delivery goes in as
//! bytes plus headers, a typed [`TaskMessage`] or a typed [`DecodeError`] comes out, never a panic.
//! See `shared/spec/celery-compat.md` for the facts these modules follow.

pub mod amqp_value;
pub mod encode;
pub mod exception;
pub mod kombu_json;
pub mod message;
pub mod result;

pub use encode::OutgoingTask;
pub use exception::TaskError;
pub use message::{DecodeError, DecodeFailure, Protocol, TaskMessage};
pub use result::{ResultMeta, State};
