//! Live checks of the broker, Redis and PostgreSQL, shared by `/readyz` and the metrics loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::adapters::broker::publisher::Publisher;
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
    pub redis: ConnectionManager,
    /// The jobs' pool; None where no job runs (`worker scheduler`).
    pub postgres: Option<PgPool>,
    /// Which queues' workers stopped; None where nothing is consumed.
    pub queues: Option<Arc<QueueHealth>>,
}

impl Dependencies {
    /// `{name: {"ok": bool, "error"?: text}}` for each dependency.
    pub(crate) async fn check(&self) -> BTreeMap<&'static str, Value> {
        let mut out = BTreeMap::new();
        let broker = match &self.broker {
            BrokerProbe::Consumer(consuming) => {
                if *consuming.borrow() {
                    Ok(())
                } else {
                    Err("not connected to RabbitMQ".to_owned())
                }
            }
            BrokerProbe::Publisher(publisher) => {
                match tokio::time::timeout(CHECK_TIMEOUT, publisher.check()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err("cannot open a connection to RabbitMQ".to_owned()),
                    Err(_) => Err("RabbitMQ did not answer in time".to_owned()),
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
        .map_err(|_| "Redis did not answer PING in time".to_owned())
        .and_then(|r| r.map(|_| ()).map_err(|e| format!("Redis: {e}")));
        out.insert("redis", status(redis));
        if let Some(pool) = &self.postgres {
            let pg = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
                .await
                .map_err(|_| "PostgreSQL did not answer in time".to_owned())
                .and_then(|r| {
                    r.map(|_| ())
                        .map_err(|e| format!("PostgreSQL: {}", pg_error(&e)))
                });
            out.insert("postgres", status(pg));
        }
        if let Some(queues) = &self.queues {
            let stopped = queues.stopped();
            let names: Vec<&str> = stopped.keys().map(String::as_str).collect();
            out.insert(
                "queues",
                status(if names.is_empty() {
                    Ok(())
                } else {
                    Err(format!("stopped consuming: {}", names.join(", ")))
                }),
            );
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

/// A PostgreSQL error without the connection string it may quote.
fn pg_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "invalid DATABASE_URL".into(),
        other => other.to_string(),
    }
}

fn status(r: Result<(), String>) -> Value {
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
