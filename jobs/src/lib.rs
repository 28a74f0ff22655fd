//! StaffProBot's background jobs as plain async functions over a [`Context`].
//!
//! Each job takes the context and typed arguments and returns a typed, serializable report or a
//! [`JobError`]. Nothing here knows about Celery or RabbitMQ: the worker's registry maps Celery
//! task names to these functions, decodes arguments into the `*Args` structs (whose `PARAMS` give
//! the Python positional order) and encodes reports and errors as Celery results.
//!
//! | module | jobs |
//! |---|---|
//! | [`reminders`] | process-reminders, `send_shift_reminder` |
//! | [`auto_close`] | auto-close-shifts |
//! | [`cleanup_cache`] | cleanup-cache |
//! | [`planner`] | plan-next-year-timeslots |
//! | [`notifications`] | `send_shift_notification`, `send_bulk_notifications`, `send_notification_now` |
//! | [`shift_payment`] | `calculate_shift_payment` |
//! | [`monthly_metrics`] | `calculate_monthly_metrics` |
//!
//! SQL is checked at run time (`sqlx::query` / `query_as` with `FromRow`), not with the
//! compile-time `query!` macros: those need a live database or committed `.sqlx/` offline data
//! produced by `sqlx-cli`, whose build costs more than this project's build machines can spare.
//! The integration tests in `jobs/tests/` run every statement against the migrated schema, which
//! is what catches a misspelt column.

pub mod auto_close;
pub mod cache;
pub mod cleanup_cache;
mod context;
mod db;
mod error;
pub mod events;
pub mod local_time;
pub mod monthly_metrics;
pub mod notifications;
pub mod payroll;
pub mod planner;
pub mod reminders;
pub mod shift_payment;
pub mod telegram;

pub use context::{Context, ContextSettings, DEFAULT_TELEGRAM_API_URL, JobOptions};
pub use db::{MIGRATOR, migrate};
pub use error::JobError;
