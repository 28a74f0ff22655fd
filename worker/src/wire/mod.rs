//! The Celery wire format, with no I/O: decoding the task messages Python producers publish
//! (protocol v2, v1 and the hybrid of both), building every message we publish ourselves
//! ([`outgoing`], over the typed AMQP [`properties`]), and the result documents Celery's Redis
//! backend stores.
//!
//! Everything here is pure so that it can be property-tested: a broker delivery goes in as
//! bytes plus headers, a typed [`TaskMessage`] or a typed [`DecodeError`] comes out, never a panic.
//! See `shared/spec/celery-compat.md` for the facts these modules follow.

pub(crate) mod amqp_value;
pub(crate) mod canvas;
pub(crate) mod control;
pub mod delivery;
pub(crate) mod encode;
pub(crate) mod events;
pub(crate) mod exception;
pub(crate) mod kombu_json;
pub(crate) mod message;
pub(crate) mod outgoing;
pub(crate) mod properties;
pub(crate) mod result;

pub use amqp_value::{json_to_table, table_to_json};
pub use encode::OutgoingTask;
pub use exception::TaskError;
pub use message::{
    DecodeError, DecodeFailure, Protocol, RawMessage, TaskMessage, decode, parse_time,
};
pub use outgoing::OutgoingMessage;
pub use properties::Properties;
pub use result::{Origin, ResultMeta, State};
