//! What every job runs against: the PostgreSQL pool, the Redis connection, the optional Telegram
//! client and the few settings the jobs read.
//!
//! Both connections are lazy, so the worker starts (and can report its own health) while
//! PostgreSQL or Redis is still down; the first job that needs one connects, and a failure there
//! is a transient [`JobError`] the worker retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono_tz::Tz;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::JobError;
use crate::telegram::{Telegram, TelegramSettings};

/// The official Bot API endpoint, `TELEGRAM_API_URL`'s default.
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";

/// The settings a [`Context`] is built from; the worker fills them from its environment.
#[derive(Clone)]
pub struct ContextSettings {
    /// `DATABASE_URL`; a `postgresql+asyncpg://` URL from the Python app is accepted.
    pub database_url: String,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `REDIS_DB`, used when `redis_url` names no database.
    pub redis_db: i64,
    /// `DEFAULT_TIMEZONE`: objects without a (valid) timezone use it, and so does the planner.
    pub default_timezone: Tz,
    /// `TELEGRAM_BOT_TOKEN`; `None` turns Telegram delivery off.
    pub telegram_bot_token: Option<String>,
    /// `TELEGRAM_API_URL`.
    pub telegram_api_url: String,
    /// process-reminders looks this many hours ahead.
    pub reminder_hours_before: u32,
    /// Put in front of every Redis key and channel the jobs touch. Empty in production (the web
    /// app reads the bare names); tests use it to share one Redis.
    pub redis_key_prefix: String,
    /// Upper bound of the PostgreSQL pool.
    pub db_max_connections: u32,
}

impl ContextSettings {
    /// Settings with the spec's defaults for everything but the two URLs.
    pub fn new(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_db: 0,
            default_timezone: chrono_tz::Europe::Moscow,
            telegram_bot_token: None,
            telegram_api_url: DEFAULT_TELEGRAM_API_URL.to_owned(),
            reminder_hours_before: 2,
            redis_key_prefix: String::new(),
            db_max_connections: 10,
        }
    }
}

// URLs may carry passwords and the token is a secret: none of them is printed.
impl std::fmt::Debug for ContextSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextSettings")
            .field("default_timezone", &self.default_timezone)
            .field("telegram", &self.telegram_bot_token.is_some())
            .field("telegram_api_url", &self.telegram_api_url)
            .field("reminder_hours_before", &self.reminder_hours_before)
            .field("redis_key_prefix", &self.redis_key_prefix)
            .finish_non_exhaustive()
    }
}

/// The plain settings part of a [`Context`], for building one from ready-made connections.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// See [`ContextSettings::default_timezone`].
    pub default_timezone: Tz,
    /// See [`ContextSettings::reminder_hours_before`].
    pub reminder_hours_before: u32,
    /// See [`ContextSettings::redis_key_prefix`].
    pub redis_key_prefix: String,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            default_timezone: chrono_tz::Europe::Moscow,
            reminder_hours_before: 2,
            redis_key_prefix: String::new(),
        }
    }
}

/// The connections and settings shared by all jobs. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    db: PgPool,
    redis: ConnectionManager,
    telegram: Option<Telegram>,
    options: JobOptions,
    statements: Arc<AtomicU64>,
}

impl Context {
    /// Builds a context without connecting to anything yet. Must be called inside a Tokio
    /// runtime (the Redis connection manager locates it).
    pub fn connect_lazy(settings: &ContextSettings) -> Result<Self, JobError> {
        let database_url = settings.database_url.replacen("+asyncpg", "", 1);
        let db = PgPoolOptions::new()
            .max_connections(settings.db_max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(&database_url)
            .map_err(|e| JobError::Config(format!("DATABASE_URL: {e}")))?;

        let client = redis::Client::open(redis_url_with_db(&settings.redis_url, settings.redis_db))
            .map_err(|e| JobError::Config(format!("REDIS_URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| JobError::Config(format!("REDIS_URL: {e}")))?;

        let telegram = match settings.telegram_bot_token.as_deref().map(str::trim) {
            Some(token) if !token.is_empty() => Some(
                Telegram::new(TelegramSettings::new(
                    token,
                    settings.telegram_api_url.clone(),
                ))
                .map_err(|e| JobError::Config(format!("telegram client: {e}")))?,
            ),
            _ => {
                tracing::warn!(
                    "TELEGRAM_BOT_TOKEN is not set: Telegram delivery is off, reminders are recorded in-app only"
                );
                None
            }
        };

        // Telegram's limits are the bot's: every replica reserves its sends in the same Redis.
        if let Some(telegram) = &telegram {
            telegram.share_limits(redis.clone(), &settings.redis_key_prefix);
        }
        Ok(Self::new(
            db,
            redis,
            telegram,
            JobOptions {
                default_timezone: settings.default_timezone,
                reminder_hours_before: settings.reminder_hours_before,
                redis_key_prefix: settings.redis_key_prefix.clone(),
            },
        ))
    }

    /// Builds a context from ready-made connections (tests, or a worker that shares its pool).
    pub fn new(
        db: PgPool,
        redis: ConnectionManager,
        telegram: Option<Telegram>,
        options: JobOptions,
    ) -> Self {
        Self {
            db,
            redis,
            telegram,
            options,
            statements: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The PostgreSQL pool (statements run through it directly are not counted).
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// A handle on the shared Redis connection.
    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// The Telegram client, `None` when no token is configured.
    pub fn telegram(&self) -> Option<&Telegram> {
        self.telegram.as_ref()
    }

    /// `DEFAULT_TIMEZONE`.
    pub fn default_timezone(&self) -> Tz {
        self.options.default_timezone
    }

    /// How many hours ahead process-reminders looks.
    pub fn reminder_hours_before(&self) -> u32 {
        self.options.reminder_hours_before
    }

    /// `name` with the configured Redis key prefix in front.
    pub fn redis_key(&self, name: &str) -> String {
        format!("{}{name}", self.options.redis_key_prefix)
    }

    /// SQL statements the jobs sent through this context (and its clones) so far, `BEGIN` and
    /// `COMMIT` included. The benchmark reads it.
    pub fn statements_executed(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// The pool, counting one statement: every job query goes through here or through
    /// [`Context::count_statement`], so the count is honest.
    pub(crate) fn counted(&self) -> &PgPool {
        self.count_statement();
        &self.db
    }

    /// Counts one statement run on a transaction or a held connection.
    pub(crate) fn count_statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("options", &self.options)
            .field("telegram", &self.telegram.is_some())
            .field("statements_executed", &self.statements_executed())
            .finish_non_exhaustive()
    }
}

/// The Redis URL with `db` applied when the URL names no database itself.
fn redis_url_with_db(url: &str, db: i64) -> String {
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if db == 0 || after_scheme.contains('/') {
        url.to_owned()
    } else {
        format!("{url}/{db}")
    }
}

#[cfg(test)]
mod tests {
    use super::redis_url_with_db;

    #[test]
    fn redis_db_applies_only_when_the_url_names_none() {
        assert_eq!(redis_url_with_db("redis://h:6379", 3), "redis://h:6379/3");
        assert_eq!(redis_url_with_db("redis://h:6379/1", 3), "redis://h:6379/1");
        assert_eq!(
            redis_url_with_db("redis://:pw@h:6379/", 0),
            "redis://:pw@h:6379"
        );
    }
}
