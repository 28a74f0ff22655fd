//! Publishes due delayed messages back to their queues. Runs in every replica; the claim script
//! makes sure each message is published by one of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, info, warn};

use super::DelayedStore;
use crate::adapters::broker::publisher::{Declare, Publisher};
use crate::shutdown::{Phase, Shutdown};

/// How often due messages are looked for: the delay precision of countdowns and retries.
const TICK: Duration = Duration::from_millis(100);
const LEASE_SECONDS: i64 = 60;
const BATCH: usize = 200;

pub(crate) async fn run(store: DelayedStore, publisher: Arc<Publisher>, shutdown: Shutdown) {
    let mut since_recover = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.reached(Phase::StopBackground) => return,
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
            match publisher
                .publish(&message.outgoing(), Declare::CeleryQueue)
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
