//! Connecting to Redis, for every Redis adapter (results, revoked ids, the migration
//! of the old delayed store), and the error type of their commands.
//!
//! One `ConnectionManager` per process is shared by clones: it multiplexes commands over one
//! connection and reconnects by itself. Connecting retries with backoff while Redis is
//! unreachable (compose starts services in any order); every log line and error names the URL
//! with its password hidden. A URL the client cannot parse is refused by [`check_url`] at
//! startup instead.

use std::time::Duration;

use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::warn;

use crate::backoff::backoff;
use crate::settings::{redact_text, redact_url};

/// Redis could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("Redis at {url} is unreachable: {source}")]
pub struct RedisConnectError {
    pub url: String,
    #[source]
    pub source: redis::RedisError,
}

/// REDIS_URL cannot be parsed (checked at startup, before anything connects).
#[derive(Debug, thiserror::Error)]
#[error(
    "REDIS_URL is not a valid Redis URL ({reason}); expected redis://[user:password@]host:6379[/db] (or rediss://), with any / ? # @ : % in the password percent-encoded"
)]
pub struct InvalidRedisUrl {
    reason: String,
}

/// Whether `url` is a Redis URL the client accepts; nothing connects.
pub(crate) fn check_url(url: &str) -> Result<(), InvalidRedisUrl> {
    Client::open(url).map(drop).map_err(|e| InvalidRedisUrl {
        reason: redact_text(&e.to_string()),
    })
}

/// A command on one of our keys failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the value stored for {key} is not what this worker writes: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A client and a connection manager on `url`, retrying while Redis is unreachable
/// (`attempts` = None: forever).
pub(crate) async fn connect(
    url: &str,
    attempts: Option<u32>,
) -> Result<(Client, ConnectionManager), RedisConnectError> {
    let error = |source| RedisConnectError {
        url: redact_url(url),
        source,
    };
    let client = Client::open(url).map_err(error)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut attempt = 0;
    loop {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(conn) => return Ok((client, conn)),
            Err(source) => {
                attempt += 1;
                if attempts.is_some_and(|max| attempt >= max) {
                    return Err(error(source));
                }
                let wait = backoff(attempt, Duration::from_secs(30));
                warn!(url = %redact_url(url), error = %redact_text(&source.to_string()), retry_in = ?wait, "Redis is unreachable; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
