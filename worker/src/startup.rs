//! The composition root: the one place that builds the service from its settings.
//!
//! [`Worker::build`] first checks that every URL it will use parses (a malformed one would
//! otherwise be retried forever as "unreachable"), then connects what must be connected before
//! anything runs (Redis; PostgreSQL only with `--migrate`), validates the schedules file, binds
//! the HTTP server and wires the
//! parts together; what it returns says where it listens ([`Worker::http_addr`]) and what it
//! consumes ([`Worker::queues`]). [`Worker::run_until_stopped`] then runs everything through the
//! phases of a [`Shutdown`]:
//!
//! ```text
//!   consumer ──deliveries──► engine (apalis workers) ──► executor ──► results / publisher
//!   background: undelivered-results drainer, old-delayed-store migration, readiness probe, scheduler, HTTP,
//!               remote control mailbox (app::control over adapters::control)
//! ```
//!
//! `worker run` builds the whole service; `worker scheduler` builds the same root without the
//! consumer and the engine (it publishes ticks and serves `/healthz`, `/readyz`, `/metrics`,
//! `/schedules`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::connection;
use crate::adapters::broker::consumer::{self, ConsumerControl};
use crate::adapters::broker::publisher::Publisher;
use crate::adapters::control::store::RevokedStore;
use crate::adapters::control::{broker_facts, mailbox};
use crate::adapters::delay;
use crate::adapters::events::{self, Dispatcher, Events};
use crate::adapters::failures::FailureLog;
use crate::adapters::http::{
    self, BrokerProbe, Dependencies, HttpServer, HttpState, SchedulesSource, StatusSources,
};
use crate::adapters::postgres::{self, DatabaseError};
use crate::adapters::redis_conn::{self, InvalidRedisUrl, RedisConnectError};
use crate::adapters::redis_eviction;
use crate::adapters::results::undelivered::{Depth, Drainer};
use crate::adapters::results::{ResultStore, ResultWriter};
use crate::app::control::inspect::conf_of;
use crate::app::control::revoked::Revoked;
use crate::app::control::{Facts, Panel};
use crate::app::engine::{self, Executor, ExecutorSettings, QueueHealth};
use crate::app::registry::{Registry, catalogue, registry};
use crate::app::scheduler::service::SchedulerService;
use crate::app::scheduler::{Pauses, ScheduleFileError, TickPublisher};
use crate::settings::{
    self, ConnectionSettings, JobSettings, RunSettings, ServiceSettings, redact_url,
};
use crate::shutdown::{Phase, Shutdown};
use crate::wire::control::MailboxNames;
use crate::wire::message::Limits;

/// Everything the service is built from. `Debug` is derived: the settings that hold secrets
/// ([`ConnectionSettings`], [`JobSettings`]) redact their own.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connections: ConnectionSettings,
    pub service: ServiceSettings,
    /// The schedules file; `None`: no scheduler in this process.
    pub schedules: Option<PathBuf>,
    /// What to consume; `None`: the scheduler alone (`worker scheduler`).
    pub consume: Option<Consume>,
}

/// The consuming part of the service.
#[derive(Debug, Clone)]
pub struct Consume {
    pub run: RunSettings,
    pub jobs: JobSettings,
    /// Create the database if it is missing and apply the migrations before consuming.
    pub migrate: bool,
}

/// Why the service could not be built, or could not start after all (the broker refused the
/// login or the vhost before the first connection).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    RedisUrl(#[from] InvalidRedisUrl),
    #[error(transparent)]
    Redis(#[from] RedisConnectError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("configuring the jobs: {0}")]
    Jobs(#[from] jobs::JobError),
    #[error("{0}\n(fix the file, point SCHEDULES_FILE elsewhere, or pass --no-scheduler)")]
    Schedules(#[from] ScheduleFileError),
    #[error("binding the HTTP server to {addr} (set WORKER_HTTP_ADDR or --no-http): {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The engine side: what consumes and runs tasks.
struct Engine {
    executor: Arc<Executor>,
    queues: Vec<String>,
    concurrency: u16,
    rabbitmq_url: String,
    /// Redis and the key prefix, for moving the old delayed store's entries into RabbitMQ.
    redis: crate::adapters::redis_conn::RedisConn,
    key_prefix: String,
    delayed_queue_type: settings::DelayQueueType,
    results: Arc<ResultWriter>,
    /// Depth of the undelivered-results queue, as its drainer last saw it.
    results_waiting: Arc<Depth>,
    health: Arc<QueueHealth>,
    /// Remote control: the commands' state and the mailbox's names.
    control: (Arc<Panel>, MailboxNames),
    /// The events publisher and what the executor sends it.
    events: (
        Dispatcher,
        tokio::sync::mpsc::Receiver<crate::wire::events::Event>,
    ),
}

/// How the service ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (a signal, or `Shutdown::begin`), and stopped.
    Clean,
    /// A part that must not end did; the process should exit non-zero.
    Fatal(String),
}

/// A built service, not running yet.
pub struct Worker {
    hostname: String,
    grace: Duration,
    ready_file: Option<PathBuf>,
    http: Option<HttpServer>,
    publisher: Arc<Publisher>,
    dependencies: Arc<Dependencies>,
    scheduler: Option<SchedulerService>,
    engine: Option<Engine>,
    consuming: watch::Sender<bool>,
    delays_declared: watch::Sender<bool>,
}

impl Worker {
    /// Connect and wire every part; nothing runs until [`Worker::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        check_urls(&settings)?;
        connection_topology(&settings.connections);
        let conn = &settings.connections;
        let hostname = settings.consume.as_ref().map_or_else(
            || format!("scheduler@{}", settings::hostname()),
            |c| c.run.hostname(),
        );
        let origin = format!("gen{}@{}", std::process::id(), settings::hostname());
        info!(
            hostname = %hostname,
            queues = ?settings.consume.as_ref().map(|c| &c.run.queues),
            concurrency = settings.consume.as_ref().map(|c| c.run.concurrency),
            rabbitmq = %redact_url(&conn.rabbitmq_url),
            redis = %redis_conn::RedisTarget::new(conn).redacted(),
            "starting worker"
        );

        let redis = redis_conn::connect(&redis_conn::RedisTarget::new(conn), None).await?;
        redis_eviction::read(&redis).await.log();
        let store = ResultStore::new(redis.clone(), &conn.result_key_prefix, conn.result_expires);
        let publisher = Arc::new(Publisher::new(&conn.rabbitmq_url, &origin));
        let (consuming, consuming_rx) = watch::channel(false);
        let (delays_declared, delays_rx) = watch::channel(false);

        let (registry, postgres, engine) = match &settings.consume {
            Some(consume) => {
                let jobs_redis = redis.master_url().unwrap_or_else(|| conn.redis_url.clone());
                let (registry, pool) = jobs_registry(conn, consume, jobs_redis).await?;
                let names: Vec<&str> = registry.iter().map(|j| j.name()).collect();
                crate::metrics::METRICS.initialise(&names, &consume.run.queues);
                let results = ResultWriter::new(
                    store.clone(),
                    Arc::clone(&publisher),
                    &consume.run.undelivered_results_queue,
                );
                let events_on = Arc::new(AtomicBool::new(consume.run.send_events));
                let panel = remote_control(
                    conn,
                    &consume.run,
                    &hostname,
                    (&registry, &store, &redis),
                    Arc::clone(&events_on),
                )
                .await;
                let (events, events_rx) = Events::new(Arc::clone(&events_on));
                let dispatcher = Dispatcher {
                    url: conn.rabbitmq_url.clone(),
                    exchange: consume.run.event_exchange.clone(),
                    source: crate::wire::events::Source {
                        hostname: hostname.clone(),
                        pid: std::process::id(),
                    },
                    enabled: events_on,
                    inflight: Arc::clone(&panel.inflight),
                };
                let executor = Arc::new(
                    Executor::new(
                        registry.clone(),
                        Arc::clone(&results),
                        Arc::clone(&publisher),
                        executor_settings(&consume.run, &hostname),
                    )
                    .with_remote_control(Arc::clone(&panel.inflight), Arc::clone(&panel.revoked))
                    .with_events(events)
                    .with_failure_log(FailureLog::new(redis.clone(), &conn.key_prefix)),
                );
                let engine = Engine {
                    executor,
                    queues: consume.run.queues.clone(),
                    concurrency: consume.run.concurrency,
                    rabbitmq_url: conn.rabbitmq_url.clone(),
                    redis: redis.clone(),
                    key_prefix: conn.key_prefix.clone(),
                    delayed_queue_type: consume.run.delayed_queue_type,
                    results,
                    results_waiting: Arc::default(),
                    health: Arc::new(QueueHealth::default()),
                    control: (panel, MailboxNames::new(&conn.control_exchange)),
                    events: (dispatcher, events_rx),
                };
                (registry, Some(pool), Some(engine))
            }
            // The scheduler alone still needs PostgreSQL: its claims and last runs live there.
            None if settings.schedules.is_some() => {
                let database_url = conn.database_url_for_sqlx();
                let pool = postgres::lazy_pool(&database_url, 2)?;
                postgres::probe_at_startup(&pool, &database_url).await;
                (catalogue(), Some(pool), None)
            }
            None => (catalogue(), None, None),
        };

        let broker = match &engine {
            Some(_) => BrokerProbe::Consumer(consuming_rx),
            None => BrokerProbe::Publisher(Arc::clone(&publisher)),
        };
        // The scheduler's claims and last runs live in PostgreSQL. It has a small pool of its
        // own: jobs holding every connection of theirs must not delay recording a published
        // tick past its claim's lease (which would let another replica publish it again).
        let scheduler_pool = match (&settings.schedules, &settings.consume) {
            (Some(_), Some(_)) => Some(postgres::lazy_pool(&conn.database_url_for_sqlx(), 2)?),
            (Some(_), None) => postgres.clone(),
            (None, _) => None,
        };
        let dependencies = Arc::new(Dependencies {
            broker,
            redis: redis.clone(),
            postgres,
            queues: engine.as_ref().map(|e| Arc::clone(&e.health)),
            delays: engine.as_ref().map(|_| delays_rx),
            results_waiting: engine.as_ref().map(|e| Arc::clone(&e.results_waiting)),
        });

        // Paused schedules live in PostgreSQL, beside the scheduler's other state.
        let pauses = scheduler_pool
            .as_ref()
            .map(|pool| Arc::new(Pauses::new(pool.clone(), &conn.key_prefix)));
        let scheduler = match (&settings.schedules, scheduler_pool) {
            (Some(path), Some(pool)) => {
                let ticks: Arc<dyn TickPublisher> = Arc::clone(&publisher) as _;
                let service = SchedulerService::prepare(
                    path,
                    conn.default_timezone,
                    &conn.key_prefix,
                    registry.routes(),
                    pool,
                    redis.clone(),
                    ticks,
                )?;
                Some(match &pauses {
                    Some(p) => service.with_pauses(Arc::clone(p)),
                    None => service,
                })
            }
            // A pool exists whenever schedules do (see above).
            _ => None,
        };

        let http = if settings.service.no_http {
            None
        } else {
            let addr = settings.service.http_addr;
            let schedules = scheduler.as_ref().map(|s| {
                let reporter = s.reporter();
                let source: SchedulesSource = Arc::new(move || {
                    let reporter = reporter.clone();
                    Box::pin(async move { reporter.report().await })
                });
                source
            });
            let status = StatusSources {
                rabbitmq_url: conn.rabbitmq_url.clone(),
                control_exchange: conn.control_exchange.clone(),
                queues: engine
                    .as_ref()
                    .map(|e| e.queues.clone())
                    .unwrap_or_default(),
                undelivered_queue: settings
                    .consume
                    .as_ref()
                    .map(|c| c.run.undelivered_results_queue.clone())
                    .unwrap_or_default(),
                failures: FailureLog::new(redis.clone(), &conn.key_prefix),
                publisher: Arc::clone(&publisher),
                scheduler: scheduler.as_ref().map(SchedulerService::reporter),
                pauses: pauses.clone(),
            };
            let state = HttpState {
                results: store,
                dependencies: Arc::clone(&dependencies),
                schedules,
                status: Arc::new(status),
            };
            let server = HttpServer::bind(addr, state, &settings.service.http)
                .await
                .map_err(|source| StartupError::Http { addr, source })?;
            Some(server)
        };

        Ok(Self {
            hostname,
            grace: settings.service.shutdown_grace(),
            ready_file: settings.service.ready_file.clone(),
            http,
            publisher,
            dependencies,
            scheduler,
            engine,
            consuming,
            delays_declared,
        })
    }

    /// Where the HTTP server listens (`None` with `--no-http`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// The queues this worker consumes (none for the scheduler alone).
    pub fn queues(&self) -> &[String] {
        self.engine.as_ref().map_or(&[], |e| e.queues.as_slice())
    }

    /// Run until `shutdown` begins, then stop phase by phase (see [`crate::shutdown`]). An
    /// error means the service could not start after all: the broker refused the login or the
    /// vhost before the first connection (the shutdown is then begun by the consumer).
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<Stopped, StartupError> {
        let Self {
            hostname,
            grace,
            ready_file,
            http,
            publisher,
            dependencies,
            scheduler,
            engine,
            consuming,
            delays_declared,
        } = self;
        let http_addr = http.as_ref().map(HttpServer::addr);
        let queues = engine
            .as_ref()
            .map(|e| e.queues.clone())
            .unwrap_or_default();

        let mut fatal = None;
        let mut background: Vec<JoinHandle<()>> = vec![tokio::spawn(http::refresh_loop(
            dependencies,
            shutdown.clone(),
        ))];
        if let Some(server) = http {
            background.push(tokio::spawn(server.serve(shutdown.clone())));
        }
        let scheduler_running = scheduler.is_some();
        if let Some(scheduler) = scheduler {
            background.push(tokio::spawn(
                scheduler.run(token_at(&shutdown, Phase::StopBackground)),
            ));
        }

        // The ready file says the process works: consuming, or (scheduler alone) scheduling.
        let ready = ReadyFile {
            path: ready_file,
            document: json!({
                "pid": std::process::id(),
                "hostname": hostname,
                "http_addr": http_addr.map(|a| a.to_string()),
                "queues": queues,
                "scheduler": scheduler_running,
            }),
        };

        let refused = match engine {
            Some(engine) => {
                let drainer = Drainer {
                    url: engine.rabbitmq_url.clone(),
                    queue: engine.results.queue().to_owned(),
                    store: engine.results.store().clone(),
                    publisher: Arc::clone(&publisher),
                    depth: Arc::clone(&engine.results_waiting),
                };
                background.push(tokio::spawn(drainer.run(shutdown.clone())));
                let (dispatcher, events_rx) = engine.events;
                let events = events::run(dispatcher, events_rx, shutdown.clone());
                let (panel, names) = engine.control;
                let mailbox =
                    mailbox::run(engine.rabbitmq_url.clone(), names, panel, shutdown.clone());
                // Both connect once the consumer has: while RabbitMQ cannot be reached at
                // startup, the consumer's retry lines say so, once per attempt, and they add
                // none. (The consumer owns `consuming`: when it ends, these wait no longer.)
                let mut connected = consuming.subscribe();
                background.push(tokio::spawn(async move {
                    if connected.wait_for(|c| *c).await.is_ok() {
                        tokio::join!(events, mailbox);
                    }
                }));
                let mut consuming_rx = consuming.subscribe();
                // Once consuming (the delay topology and our bindings are declared by then).
                let migration = delay::migrate::run(
                    engine.redis.clone(),
                    engine.key_prefix.clone(),
                    Arc::clone(&publisher),
                    engine.delayed_queue_type,
                    shutdown.clone(),
                );
                let mut migrate_after = consuming.subscribe();
                background.push(tokio::spawn(async move {
                    if migrate_after.wait_for(|c| *c).await.is_ok() {
                        migration.await;
                    }
                }));
                let (receivers, consumer) = consumer::spawn(
                    engine.rabbitmq_url.clone(),
                    engine.queues.clone(),
                    engine.concurrency,
                    ConsumerControl {
                        shutdown: shutdown.clone(),
                        consuming,
                        delayed_queue_type: engine.delayed_queue_type,
                        delays_declared,
                    },
                );
                background.push(tokio::spawn(async move {
                    if consuming_rx.wait_for(|c| *c).await.is_ok() {
                        ready.write();
                    }
                }));
                let intake_stopped = {
                    let shutdown = shutdown.clone();
                    async move {
                        shutdown.reached(Phase::StopIntake).await;
                        shutdown.advance(Phase::Drain);
                        Ok(())
                    }
                };
                if let Err(e) = engine::run(
                    engine.executor,
                    receivers,
                    usize::from(engine.concurrency),
                    grace,
                    intake_stopped,
                    (Arc::clone(&engine.health), shutdown.clone()),
                )
                .await
                {
                    warn!(error = %e, "the engine stopped with an error");
                }
                let stopped = engine.health.stopped();
                if !stopped.is_empty() {
                    fatal = Some(format!("queues stopped consuming: {stopped:?}"));
                }
                shutdown.advance(Phase::Settle);
                shutdown.advance(Phase::CloseBroker);
                consumer.await.unwrap_or(Ok(()))
            }
            None => {
                ready.write();
                shutdown.reached(Phase::StopIntake).await;
                shutdown.advance(Phase::CloseBroker);
                Ok(())
            }
        };

        shutdown.advance(Phase::StopBackground);
        for handle in background {
            let _ = handle.await;
        }
        shutdown.advance(Phase::Stopped);
        refused.map_err(StartupError::from)?;
        Ok(match fatal {
            None => {
                info!("worker stopped");
                Stopped::Clean
            }
            Some(why) => {
                error!(reason = %why, "worker stopped after a fatal error");
                Stopped::Fatal(why)
            }
        })
    }
}

/// The task queues' type for every declaration of the process (the CLI sets it too).
fn connection_topology(conn: &ConnectionSettings) {
    crate::adapters::broker::topology::set_queue_type(conn.queue_type);
}

/// Every URL the service will connect to parses as its client will parse it, before anything
/// connects: DATABASE_URL only where jobs or the scheduler run.
fn check_urls(settings: &Settings) -> Result<(), StartupError> {
    let conn = &settings.connections;
    connection::parse_urls(&conn.rabbitmq_url)?;
    connection::configure_tls(conn)?;
    redis_conn::check_target(&redis_conn::RedisTarget::new(conn))?;
    if settings.consume.is_some() || settings.schedules.is_some() {
        postgres::check_url(&conn.database_url_for_sqlx())?;
    }
    Ok(())
}

/// The jobs' registry, with the jobs' context on one lazily connected PostgreSQL pool that
/// readiness shares; with `--migrate`, the database is created and migrated first.
async fn jobs_registry(
    conn: &ConnectionSettings,
    consume: &Consume,
    redis_url: String,
) -> Result<(Registry, sqlx::PgPool), StartupError> {
    let database_url = conn.database_url_for_sqlx();
    if consume.migrate {
        postgres::create_and_migrate(&database_url).await?;
    }
    let mut s = jobs::ContextSettings::new(database_url.clone(), redis_url);
    s.redis_db = conn.redis_db;
    s.default_timezone = conn.default_timezone;
    s.telegram_bot_token = consume
        .jobs
        .telegram_bot_token
        .clone()
        .filter(|t| !t.trim().is_empty());
    s.telegram_api_url = consume.jobs.telegram_api_url.clone();
    s.reminder_hours_before = consume.jobs.reminder_hours_before;
    s.db_max_connections = u32::from(consume.run.concurrency).max(2);
    let context = jobs::Context::connect_lazy(&s)?;
    let pool = context.db().clone();
    if !consume.migrate {
        postgres::probe_at_startup(&pool, &database_url).await;
    }
    if consume.run.diagnostic_tasks {
        info!("diagnostic tasks (worker.ping, worker.echo, worker.sleep, worker.fail) are enabled");
    }
    Ok((
        registry(Some(Arc::new(context)), consume.run.diagnostic_tasks),
        pool,
    ))
}

/// The remote control commands' state, with the revoked ids kept in Redis loaded before any
/// task can arrive (so a revoke survives this replica's restart).
async fn remote_control(
    conn: &ConnectionSettings,
    run: &RunSettings,
    hostname: &str,
    (registry, results, redis): (
        &Registry,
        &ResultStore,
        &crate::adapters::redis_conn::RedisConn,
    ),
    events_on: Arc<AtomicBool>,
) -> Arc<Panel> {
    let store = RevokedStore::new(redis.clone(), &conn.key_prefix);
    let limits = run.time_limits();
    let facts = Facts {
        registered: registry.iter().map(|j| j.name().to_owned()).collect(),
        queues: run.queues.clone(),
        concurrency: run.concurrency,
        broker: broker_facts(&conn.rabbitmq_url),
        conf: conf_of(conn, run),
        timeouts: (
            limits.soft.map(|d| d.as_secs_f64()),
            limits.hard.map(|d| d.as_secs_f64()),
        ),
    };
    let panel = Panel::new(
        hostname.to_owned(),
        Arc::default(),
        Arc::new(Revoked::default()),
        store,
        results.clone(),
        facts,
    )
    .with_events(events_on);
    panel.load_revoked().await;
    Arc::new(panel)
}

fn executor_settings(run: &RunSettings, hostname: &str) -> ExecutorSettings {
    ExecutorSettings {
        hostname: hostname.to_owned(),
        track_started: run.track_started,
        started_after: Duration::from_millis(run.track_started_after_ms),
        result_extended: run.result_extended,
        deduplicate_successful_tasks: run.deduplicate_successful_tasks,
        limits: Limits {
            max_body_bytes: run.max_message_bytes,
            max_values: run.max_message_values,
        },
        inflight_bytes: run.inflight_bytes,
        eta_hold: run.eta_hold(),
        delayed_queue_type: run.delayed_queue_type,
        time_limits: run.time_limits(),
        max_deliveries: run.max_deliveries,
    }
}

/// A token cancelled when the shutdown reaches `phase`, for the scheduler's library API.
fn token_at(shutdown: &Shutdown, phase: Phase) -> CancellationToken {
    let token = CancellationToken::new();
    let (shutdown, cancel) = (shutdown.clone(), token.clone());
    tokio::spawn(async move {
        shutdown.reached(phase).await;
        cancel.cancel();
    });
    token
}

/// The `--ready-file` document, written once, atomically (temporary file, then rename).
struct ReadyFile {
    path: Option<PathBuf>,
    document: serde_json::Value,
}

impl ReadyFile {
    fn write(&self) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, self.document.to_string())
            .and_then(|()| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => info!(path = %path.display(), "ready file written"),
            Err(e) => warn!(path = %path.display(), error = %e, "cannot write the ready file"),
        }
    }
}
