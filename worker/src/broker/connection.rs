//! Connecting to RabbitMQ. An unreachable broker is normal at startup (compose starts services
//! in any order) and during restarts: log which URL, without its password, and keep trying.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::BrokerError;
use crate::config::{backoff, redact_url};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One connection attempt.
pub async fn connect(url: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("staffprobot-worker@{}", crate::config::hostname()).into());
    Connection::connect(url, props)
        .await
        .map_err(|source| BrokerError::Connect {
            url: redact_url(url),
            source,
        })
}

/// Connect, retrying with capped exponential backoff until connected or `cancel` fires.
pub async fn connect_with_backoff(url: &str, cancel: &CancellationToken) -> Option<Connection> {
    let mut attempt = 0;
    loop {
        match connect(url).await {
            Ok(conn) => {
                info!(url = %redact_url(url), "connected to RabbitMQ");
                return Some(conn);
            }
            Err(e) => {
                let wait = backoff(attempt, MAX_BACKOFF);
                attempt += 1;
                warn!(url = %redact_url(url), error = %e, retry_in = ?wait, attempt, "RabbitMQ is unreachable; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
