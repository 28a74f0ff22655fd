//! Live checks of the broker, Redis and PostgreSQL, shared by `/readyz` and the metrics loop.
//!
//! A failed check says which dependency and one fixed phrase — `not connected`, `unreachable`,
//! `timed out`, `authentication failed`, `database missing`, ... — never the client's or the
//! server's error text: `/readyz` answers anyone who can reach the port, and that text names
//! hosts, users and databases. The log has the details.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::adapters::redis_conn::RedisConn;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::adapters::broker::BrokerError;
use crate::adapters::broker::publisher::Publisher;
use crate::adapters::redis_eviction;
use crate::adapters::results::undelivered::Depth;
use crate::app::engine::QueueHealth;

use crate::metrics::METRICS;
use crate::shutdown::{Phase, Shutdown};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How the broker's health is known.
pub(crate) enum BrokerProbe {
    /// A consuming process: healthy while the consumer consumes.
    Consumer(watch::Receiver<bool>),
    /// A process that only publishes (`worker scheduler`): healthy while it can publish.
    Publisher(Arc<Publisher>),
}

pub(crate) struct Dependencies {
    pub broker: BrokerProbe,
    pub redis: RedisConn,
    /// The jobs' pool; None where no job runs (`worker scheduler`).
    pub postgres: Option<PgPool>,
    /// Depth of the undelivered-results queue; None where nothing is consumed.
    pub results_waiting: Option<Arc<Depth>>,
    /// Which queues' workers stopped; None where nothing is consumed.
    pub queues: Option<Arc<QueueHealth>>,
    /// Whether the consumer declared the delay topology (and bound our queues) on its last
    /// connect; None where nothing is consumed.
    pub delays: Option<watch::Receiver<bool>>,
}

impl Dependencies {
    /// `{name: {"ok": bool, "error"?: phrase}}` for each dependency.
    pub(crate) async fn check(&self) -> BTreeMap<&'static str, Value> {
        let mut out = BTreeMap::new();
        let broker = match &self.broker {
            BrokerProbe::Consumer(consuming) => {
                if *consuming.borrow() {
                    Ok(())
                } else {
                    Err(NOT_CONNECTED)
                }
            }
            BrokerProbe::Publisher(publisher) => {
                match tokio::time::timeout(CHECK_TIMEOUT, publisher.check()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(broker_problem(&e)),
                    Err(_) => Err(TIMED_OUT),
                }
            }
        };
        out.insert("broker", status(broker));
        let mut conn = self.redis.clone();
        let redis = tokio::time::timeout(
            CHECK_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| TIMED_OUT)
        .and_then(|r| r.map(drop).map_err(|e| redis_problem(&e)));
        let mut redis = status(redis);
        if redis["ok"] == true {
            // A fixed policy name and phrase: nothing here comes from the server but the name.
            let eviction = redis_eviction::read(&self.redis).await;
            redis["maxmemory_policy"] = Value::from(eviction.policy());
            redis["eviction_risk"] = Value::from(eviction.risk());
        }
        out.insert("redis", redis);
        if let Some(pool) = &self.postgres {
            let pg = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
                .await
                .map_err(|_| TIMED_OUT)
                .and_then(|r| r.map(drop).map_err(|e| postgres_problem(&e)));
            out.insert("postgres", status(pg));
        }
        if let Some(waiting) = &self.results_waiting {
            // Degraded, not down: results are safe in RabbitMQ and written once Redis answers.
            let waiting = waiting.get();
            let check = if waiting == 0 {
                json!({"ok": true})
            } else {
                json!({"ok": true, "degraded": true, "waiting_for_redis": waiting})
            };
            out.insert("results", check);
        }
        if let Some(queues) = &self.queues {
            let stopped: Vec<String> = queues.stopped().into_keys().collect();
            let check = if stopped.is_empty() {
                json!({"ok": true})
            } else {
                // Queue names are ours, not a server's words: safe to show.
                json!({"ok": false, "error": "stopped consuming", "queues": stopped})
            };
            out.insert("queues", check);
        }
        if let Some(delays) = &self.delays {
            // Without it countdowns and retries cannot wait in RabbitMQ (the log says why).
            let declared = if *delays.borrow() {
                Ok(())
            } else {
                Err("not declared")
            };
            out.insert("delay_topology", status(declared));
        }
        for (name, v) in &out {
            METRICS
                .dependency_up
                .with_label_values(&[name])
                .set(if v["ok"] == true { 1.0 } else { 0.0 });
        }
        out
    }

    /// The seed's Redis figures (used memory, hit rate, evictions) from INFO.
    pub(crate) async fn refresh_redis_stats(&self) {
        let mut conn = self.redis.clone();
        let Ok(Ok(info)) = tokio::time::timeout(
            CHECK_TIMEOUT,
            redis::cmd("INFO").query_async::<String>(&mut conn),
        )
        .await
        else {
            return;
        };
        let field = |name: &str| -> Option<f64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .and_then(|v| v.trim().parse().ok())
        };
        if let Some(v) = field("used_memory") {
            METRICS.redis_used_memory_bytes.set(v);
        }
        if let Some(v) = field("evicted_keys") {
            METRICS.redis_evicted_keys.set(v);
        }
        if let (Some(h), Some(m)) = (field("keyspace_hits"), field("keyspace_misses")) {
            METRICS
                .redis_hit_rate
                .set(if h + m > 0.0 { h / (h + m) } else { 0.0 });
        }
    }
}

const NOT_CONNECTED: &str = "not connected";
const UNREACHABLE: &str = "unreachable";
const TIMED_OUT: &str = "timed out";
const AUTHENTICATION_FAILED: &str = "authentication failed";
const FAILED: &str = "failed";

fn broker_problem(e: &BrokerError) -> &'static str {
    match e {
        BrokerError::Authentication { .. } => AUTHENTICATION_FAILED,
        BrokerError::VhostRefused { .. } => "vhost refused",
        BrokerError::InvalidUrl { .. } => "invalid RABBITMQ_URL",
        BrokerError::Connect { .. } | BrokerError::Timeout { .. } => UNREACHABLE,
        BrokerError::CertificateVerifyFailed { .. } => "certificate verify failed",
        BrokerError::TlsFile { .. } => "TLS file unreadable",
        BrokerError::Amqp { .. } | BrokerError::Nacked { .. } | BrokerError::Unroutable { .. } => {
            FAILED
        }
    }
}

fn redis_problem(e: &redis::RedisError) -> &'static str {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        AUTHENTICATION_FAILED
    } else if e.is_timeout() {
        TIMED_OUT
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        UNREACHABLE
    } else {
        FAILED
    }
}

fn postgres_problem(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_catalog_name
            Some("3D000") => "database missing",
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => AUTHENTICATION_FAILED,
            _ => FAILED,
        },
        sqlx::Error::Io(io) if crate::adapters::postgres::is_certificate_failure(io) => {
            "certificate verify failed"
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed => UNREACHABLE,
        sqlx::Error::PoolTimedOut => TIMED_OUT,
        sqlx::Error::Tls(_) => "TLS failed",
        sqlx::Error::Configuration(_) => "invalid DATABASE_URL",
        _ => FAILED,
    }
}

fn status(r: Result<(), &'static str>) -> Value {
    match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Refresh the dependency gauges and Redis figures every 15 s until `stop`.
pub(crate) async fn refresh_loop(deps: Arc<Dependencies>, shutdown: Shutdown) {
    loop {
        deps.check().await;
        deps.refresh_redis_stats().await;
        tokio::select! {
            _ = shutdown.reached(Phase::StopBackground) => return,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
    }
}
