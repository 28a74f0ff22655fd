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
use crate::engine::{self, Executor, ExecutorSettings};
use crate::registry::default_registry;
use crate::results::{ResultStore, connect_redis};

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
    let results = ResultStore::new(client, redis, &conn.result_key_prefix, conn.result_expires);
    let publisher = Arc::new(Publisher::new(&conn.rabbitmq_url));

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
        publisher,
        ExecutorSettings {
            hostname,
            track_started: settings.track_started,
            result_extended: settings.result_extended,
            max_message_bytes: settings.max_message_bytes,
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
    info!("worker stopped");
    Ok(Outcome::Success)
}
