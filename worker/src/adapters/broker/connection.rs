//! Connecting to RabbitMQ. An unreachable broker is normal at startup (compose starts services
//! in any order) and during restarts: log which URL, without its password, and keep trying.
//!
//! Unless the URL sets `frame_max`, we ask for 16 KiB frames instead of RabbitMQ's 128 KiB:
//! lapin keeps a receive and a send buffer of 32 frames per connection, fully written, so the
//! server's default costs 8 MiB of resident memory per connection against 1 MiB. Bodies larger
//! than a frame are split into several frames, as AMQP always does; Celery messages rarely are.

use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use tracing::{info, warn};

use super::BrokerError;
use crate::backoff::backoff;
use crate::settings::redact_url;
use crate::shutdown::{Phase, Shutdown};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The frame size we ask for when the URL does not say (see the module notes).
pub(crate) const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// One connection attempt.
pub(crate) async fn connect(url: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("staffprobot-worker@{}", crate::settings::hostname()).into());
    let connected = match url.parse::<AMQPUri>() {
        Ok(mut uri) => {
            uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
            Connection::connect_uri(uri, props).await
        }
        // lapin reports the malformed URL itself.
        Err(_) => Connection::connect(url, props).await,
    };
    connected.map_err(|source| BrokerError::Connect {
        url: redact_url(url),
        source,
    })
}

/// Connect, retrying with capped exponential backoff until connected or the shutdown begins.
pub(crate) async fn connect_with_backoff(url: &str, shutdown: &Shutdown) -> Option<Connection> {
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
                    _ = shutdown.reached(Phase::StopIntake) => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
