//! `worker run`: the long-running service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::Outcome;
use crate::broker::consumer::{self, ConsumerControl};
use crate::broker::publisher::Publisher;
use crate::config::{ConnectionSettings, RunSettings, redact_url};
use crate::delay::{self, DelayedStore};
use crate::engine::{self, Executor, ExecutorSettings};
use crate::registry::default_registry;
use crate::results::{ResultStore, ResultWriter, connect_redis};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub settings: RunSettings,

    /// Seconds running tasks get to finish after SIGTERM before they are handed back to the queue.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
}

pub async fn run(conn: &ConnectionSettings, args: RunArgs) -> anyhow::Result<Outcome> {
    let settings = args.settings;
    let hostname = settings.hostname();
    info!(
        hostname = %hostname,
        queues = ?settings.queues,
        concurrency = settings.concurrency,
        rabbitmq = %redact_url(&conn.rabbitmq_url),
        redis = %redact_url(&conn.redis_url_with_db()),
        "starting worker"
    );
    let registry = default_registry();
    let (client, redis) = connect_redis(&conn.redis_url_with_db(), None)
        .await
        .context("connecting to Redis")?;
    let delayed = DelayedStore::new(redis.clone(), &settings.key_prefix);
    let results = ResultWriter::new(
        ResultStore::new(client, redis, &conn.result_key_prefix, conn.result_expires),
        settings.result_buffer,
    );
    let publisher = Arc::new(Publisher::new(&conn.rabbitmq_url));
    let background = CancellationToken::new();
    let flusher = tokio::spawn(Arc::clone(&results).run_flusher(background.clone()));
    let poller = tokio::spawn(delay::poller::run(
        delayed.clone(),
        Arc::clone(&publisher),
        background.clone(),
    ));

    let control = ConsumerControl {
        stop_consuming: CancellationToken::new(),
        close: CancellationToken::new(),
    };
    let (receivers, consumer) = consumer::spawn(
        conn.rabbitmq_url.clone(),
        settings.queues.clone(),
        settings.concurrency,
        control.clone(),
    );
    let executor = Arc::new(Executor::new(
        registry,
        results,
        delayed,
        publisher,
        ExecutorSettings {
            hostname,
            track_started: settings.track_started,
            result_extended: settings.result_extended,
            max_message_bytes: settings.max_message_bytes,
            eta_hold: settings.eta_hold(),
            time_limits: settings.time_limits(),
        },
    ));

    let stop = control.stop_consuming.clone();
    let signal = async move {
        let r = crate::shutdown::first_signal().await;
        stop.cancel();
        r
    };
    engine::run(
        executor,
        receivers,
        usize::from(settings.concurrency),
        Duration::from_secs(args.shutdown_grace),
        signal,
    )
    .await
    .context("running the workers")?;

    control.stop_consuming.cancel();
    control.close.cancel();
    let _ = consumer.await;
    background.cancel();
    let _ = poller.await;
    let _ = flusher.await;
    info!("worker stopped");
    Ok(Outcome::Success)
}
