//! `worker run`: the long-running service. Builds every part, then runs until SIGTERM/SIGINT:
//! consumer -> apalis workers -> executor; the delayed-store poller, the result flusher, the
//! HTTP server and its readiness loop beside them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Outcome;
use crate::broker::consumer::{self, ConsumerControl};
use crate::broker::publisher::Publisher;
use crate::config::{ConnectionSettings, JobSettings, RunSettings, ScheduleSettings, redact_url};
use crate::delay::{self, DelayedStore};
use crate::engine::{self, Executor, ExecutorSettings};
use crate::http::{self, Dependencies, HttpState};
use crate::registry::registry;
use crate::results::{ResultStore, ResultWriter, connect_redis};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub settings: RunSettings,

    /// Seconds running tasks get to finish after SIGTERM before they are handed back to the queue.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Address of the HTTP server (/healthz, /readyz, /metrics, /results/{id}, /schedules).
    #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Do not start the HTTP server.
    #[arg(long, env = "WORKER_NO_HTTP")]
    pub no_http: bool,

    #[command(flatten)]
    pub jobs: JobSettings,

    #[command(flatten)]
    pub schedules: ScheduleSettings,

    /// Do not run the scheduler in this process (another replica, or `worker scheduler`, does).
    #[arg(long, env = "WORKER_NO_SCHEDULER")]
    pub no_scheduler: bool,
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
    let job_context = jobs::Context::connect_lazy(
        &args
            .jobs
            .context_settings(conn, u32::from(settings.concurrency).max(2)),
    )
    .context("configuring the jobs")?;
    let registry = registry(Some(Arc::new(job_context)));
    let (client, redis) = connect_redis(&conn.redis_url_with_db(), None)
        .await
        .context("connecting to Redis")?;
    let store = ResultStore::new(
        client,
        redis.clone(),
        &conn.result_key_prefix,
        conn.result_expires,
    );
    let delayed = DelayedStore::new(redis.clone(), &settings.key_prefix);
    let results = ResultWriter::new(store.clone(), settings.result_buffer);
    let publisher = Arc::new(Publisher::new(&conn.rabbitmq_url));
    // Lazy: the worker starts (and runs the tasks that need no database) while PostgreSQL is down.
    let postgres = PgPoolOptions::new()
        .max_connections(u32::from(settings.concurrency).max(2))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&conn.database_url_for_sqlx())
        .map_err(|e| warn!(error = %e, "DATABASE_URL is not a valid PostgreSQL URL; database checks are off"))
        .ok();

    let background = CancellationToken::new();
    let flusher = tokio::spawn(Arc::clone(&results).run_flusher(background.clone()));
    let poller = tokio::spawn(delay::poller::run(
        delayed.clone(),
        Arc::clone(&publisher),
        background.clone(),
    ));

    let control = ConsumerControl::default();
    let dependencies = Arc::new(Dependencies {
        broker_connected: Arc::clone(&control.connected),
        redis: redis.clone(),
        postgres,
    });
    let refresher = tokio::spawn(http::refresh_loop(
        Arc::clone(&dependencies),
        background.clone(),
    ));
    let (scheduler, schedules) = if args.no_scheduler {
        (None, None)
    } else {
        let (handle, source) = super::schedules::start(
            conn,
            &args.schedules.schedules_file,
            &settings.key_prefix,
            registry.routes(),
            redis.clone(),
            Arc::clone(&publisher),
            background.clone(),
        )?;
        (Some(handle), Some(source))
    };
    let http_server = if args.no_http {
        None
    } else {
        let state = HttpState {
            results: store,
            writer: Some(Arc::clone(&results)),
            dependencies,
            schedules,
        };
        let (_, handle) = http::serve(args.http_addr, state, background.clone())
            .await
            .with_context(|| {
                format!(
                    "binding the HTTP server to {} (set WORKER_HTTP_ADDR or --no-http)",
                    args.http_addr
                )
            })?;
        Some(handle)
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
            started_after: Duration::from_millis(settings.track_started_after_ms),
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
    let _ = tokio::join!(poller, flusher, refresher);
    if let Some(h) = scheduler {
        let _ = h.await;
    }
    if let Some(h) = http_server {
        let _ = h.await;
    }
    info!("worker stopped");
    Ok(Outcome::Success)
}
