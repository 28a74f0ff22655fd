//! The one error type every job returns.
//!
//! The worker turns a [`JobError`] into a Celery FAILURE result: [`JobError::kind`] is the
//! exception class name Python sees, the `Display` text its message. [`JobError::is_transient`]
//! tells the worker whether trying again later can help (a database restart, a Redis blip, a
//! Telegram 5xx or 429) or not (bad arguments, a missing row, a user who blocked the bot).

use crate::telegram::TelegramError;

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// PostgreSQL refused, timed out or was unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the schema migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// Redis refused, timed out or was unreachable.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),

    /// The Telegram Bot API call failed (after the client's own retries).
    #[error(transparent)]
    Telegram(#[from] TelegramError),

    /// Telegram delivery was asked for but no `TELEGRAM_BOT_TOKEN` is configured.
    #[error("telegram delivery is off: TELEGRAM_BOT_TOKEN is not set")]
    TelegramDisabled,

    /// A row the arguments name does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// What was looked up (`user`, `shift`, ...).
        entity: &'static str,
        /// The id that was asked for.
        id: i64,
    },

    /// The arguments or the stored data cannot be processed as they are.
    #[error("{0}")]
    InvalidInput(String),

    /// The context could not be built from the given settings.
    #[error("configuration error: {0}")]
    Config(String),
}

impl JobError {
    /// Shorthand for [`JobError::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// Whether running the job again later may succeed: the failure came from a service being
    /// down, overloaded or rate limiting, not from the data or the arguments.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => sqlx_is_transient(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_is_transient(e),
            Self::Migrate(_) => false,
            Self::Redis(e) => redis_is_transient(e),
            Self::Telegram(e) => e.is_transient(),
            Self::TelegramDisabled | Self::NotFound { .. } | Self::InvalidInput(_) => false,
            Self::Config(_) => false,
        }
    }

    /// The Python-style exception class name for the Celery FAILURE result.
    pub fn kind(&self) -> &'static str {
        match self {
            // SQLAlchemy's name for "the database is unreachable or went away".
            Self::Database(e) if sqlx_is_transient(e) => "OperationalError",
            Self::Database(_) => "DatabaseError",
            Self::Migrate(_) => "MigrationError",
            Self::Redis(e) if redis_is_transient(e) => "ConnectionError",
            Self::Redis(_) => "RedisError",
            Self::Telegram(_) => "TelegramError",
            Self::TelegramDisabled => "TelegramDisabled",
            Self::NotFound { .. } => "NotFound",
            Self::InvalidInput(_) => "ValueError",
            Self::Config(_) => "ImproperlyConfigured",
        }
    }
}

/// Connection-level failures and the SQLSTATEs that mean "try again": connection exceptions
/// (class 08), serialization failures and deadlocks (40001, 40P01), insufficient resources
/// (class 53), operator intervention such as a restarting server (class 57P), and a database
/// the job cannot use at all yet — missing (3D000), refusing the login (28000, 28P01), or not
/// migrated (42P01, a table the schema defines is missing). Those last ones are an operator's
/// to fix, and a job that hits them did none of its work: it must fail as a whole (and be
/// retried once someone has), never report them row by row inside a SUCCESS.
pub(crate) fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
                || code == "3D000"
                || code == "28000"
                || code == "28P01"
                || code == "42P01"
        }),
        _ => false,
    }
}

fn redis_is_transient(e: &redis::RedisError) -> bool {
    use redis::RetryMethod;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::ReconnectFromInitialConnections
                | RetryMethod::WaitAndRetry
                | RetryMethod::RetryImmediately
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeout_is_transient_and_operational() {
        let e = JobError::from(sqlx::Error::PoolTimedOut);
        assert!(e.is_transient());
        assert_eq!(e.kind(), "OperationalError");
    }

    #[test]
    fn row_not_found_is_permanent() {
        let e = JobError::from(sqlx::Error::RowNotFound);
        assert!(!e.is_transient());
        assert_eq!(e.kind(), "DatabaseError");
        let e = JobError::NotFound {
            entity: "user",
            id: 7,
        };
        assert!(!e.is_transient());
        assert_eq!(e.kind(), "NotFound");
        assert_eq!(e.to_string(), "user 7 not found");
    }

    #[test]
    fn bad_input_is_a_value_error() {
        let e = JobError::invalid("month must be 1..=12, got 13");
        assert!(!e.is_transient());
        assert_eq!(e.kind(), "ValueError");
    }

    #[test]
    fn redis_io_error_is_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = JobError::from(redis::RedisError::from(io));
        assert!(e.is_transient());
        assert_eq!(e.kind(), "ConnectionError");
    }
}
