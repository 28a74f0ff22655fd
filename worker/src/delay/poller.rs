//! Publishes due delayed messages back to their queues. Runs in every replica; the claim script
//! makes sure each message is published by one of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::ShortString;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{DelayedMessage, DelayedStore};
use crate::broker::publisher::Publisher;
use crate::celery::amqp_value::json_to_table;

/// How often due messages are looked for: the delay precision of countdowns and retries.
const TICK: Duration = Duration::from_millis(100);
const LEASE_SECONDS: i64 = 60;
const BATCH: usize = 200;

/// The AMQP properties a delayed message is published with.
pub fn properties(m: &DelayedMessage) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(json_to_table(&m.headers));
    if let Some(v) = &m.content_type {
        p = p.with_content_type(ShortString::from(v.as_str()));
    }
    if let Some(v) = &m.content_encoding {
        p = p.with_content_encoding(ShortString::from(v.as_str()));
    }
    if let Some(v) = &m.correlation_id {
        p = p.with_correlation_id(ShortString::from(v.as_str()));
    }
    if let Some(v) = &m.reply_to {
        p = p.with_reply_to(ShortString::from(v.as_str()));
    }
    if let Some(v) = m.priority {
        p = p.with_priority(v);
    }
    p
}

pub async fn run(store: DelayedStore, publisher: Arc<Publisher>, stop: CancellationToken) {
    let mut since_recover = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        since_recover += TICK;
        if since_recover >= Duration::from_secs(5) {
            since_recover = Duration::ZERO;
            match store.recover_expired(Utc::now()).await {
                Ok(0) => {}
                Ok(n) => info!(count = n, "recovered delayed messages whose publisher died"),
                Err(e) => debug!(error = %e, "delayed store unavailable"),
            }
        }
        let claimed = match store
            .claim_due(Utc::now(), chrono::Duration::seconds(LEASE_SECONDS), BATCH)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "delayed store unavailable");
                continue;
            }
        };
        for (member, message) in claimed {
            let body = message.body.as_bytes();
            match publisher
                .publish(&message.queue, body, properties(&message), true)
                .await
            {
                Ok(()) => {
                    debug!(task_id = ?message.task_id, queue = %message.queue, "delayed message is due; published");
                    if let Err(e) = store.complete(&member).await {
                        warn!(error = %e, "could not clear a published delayed message; it may run twice");
                    }
                }
                Err(e) => {
                    warn!(error = %e, queue = %message.queue, "could not publish a due message; it stays delayed");
                    let _ = store.release(&member, Utc::now()).await;
                    break;
                }
            }
        }
    }
}
