//! Paused schedules: `worker schedules pause|resume NAME` and the status page's buttons.
//!
//! A pause is a row in PostgreSQL, `worker_schedule_pauses(key_prefix, schedule, paused_at)`
//! (created `IF NOT EXISTS` on first use), so it holds across restarts and for every replica
//! sharing the key prefix. Each replica checks it before claiming a tick (one line in
//! `runner`); a paused schedule's ticks are passed over, not queued up, so resuming publishes
//! from the next tick on and never a burst of the ticks missed while paused.
//!
//! When PostgreSQL cannot answer, the last answer read is used (a paused schedule stays paused
//! through an outage; one never read as paused keeps running), with a warning.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// The longest one look at the pauses may take before the last answer is used.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest schedule name stored (the file's names are short; a request's may not be).
const MAX_NAME: usize = 200;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS worker_schedule_pauses (
    key_prefix text NOT NULL,
    schedule text NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_prefix, schedule)
)";

/// The pauses of one deployment (one key prefix).
pub struct Pauses {
    pool: PgPool,
    key_prefix: String,
    table: OnceCell<()>,
    /// The schedules last read as paused.
    known: Mutex<HashSet<String>>,
    /// Whether the last look failed: an outage is logged once when it starts, not every tick.
    failing: AtomicBool,
}

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pauses")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// One paused schedule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Paused {
    pub schedule: String,
    pub paused_at: DateTime<Utc>,
}

impl Pauses {
    /// Pauses in the database at `database_url` (connected lazily: nothing is asked yet).
    pub fn connect_lazy(database_url: &str, key_prefix: &str) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(CHECK_TIMEOUT)
            .connect_lazy(database_url)?;
        Ok(Self::new(pool, key_prefix))
    }

    pub fn new(pool: PgPool, key_prefix: &str) -> Self {
        Self {
            pool,
            key_prefix: key_prefix.to_owned(),
            table: OnceCell::new(),
            known: Mutex::default(),
            failing: AtomicBool::new(false),
        }
    }

    async fn table(&self) -> Result<(), sqlx::Error> {
        self.table
            .get_or_try_init(|| async { sqlx::query(CREATE).execute(&self.pool).await.map(drop) })
            .await
            .map(drop)
    }

    fn name(schedule: &str) -> String {
        schedule.chars().take(MAX_NAME).collect()
    }

    /// Pause `schedule`; `false` when it was paused already.
    pub async fn pause(&self, schedule: &str) -> Result<bool, sqlx::Error> {
        self.table().await?;
        let done = sqlx::query(
            "INSERT INTO worker_schedule_pauses (key_prefix, schedule) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&self.key_prefix)
        .bind(Self::name(schedule))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Resume `schedule`; `false` when it was not paused.
    pub async fn resume(&self, schedule: &str) -> Result<bool, sqlx::Error> {
        self.table().await?;
        let done = sqlx::query(
            "DELETE FROM worker_schedule_pauses WHERE key_prefix = $1 AND schedule = $2",
        )
        .bind(&self.key_prefix)
        .bind(Self::name(schedule))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every paused schedule of this key prefix.
    pub async fn list(&self) -> Result<Vec<Paused>, sqlx::Error> {
        self.table().await?;
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT schedule, paused_at FROM worker_schedule_pauses WHERE key_prefix = $1 ORDER BY schedule LIMIT 10000",
        )
        .bind(&self.key_prefix)
        .fetch_all(&self.pool)
        .await?;
        let paused: Vec<Paused> = rows
            .into_iter()
            .map(|(schedule, paused_at)| Paused {
                schedule,
                paused_at,
            })
            .collect();
        if let Ok(mut known) = self.known.lock() {
            *known = paused.iter().map(|p| p.schedule.clone()).collect();
        }
        Ok(paused)
    }

    /// Whether `schedule` is paused now (the runner asks before each claim).
    pub async fn is_paused(&self, schedule: &str) -> bool {
        let asked = tokio::time::timeout(CHECK_TIMEOUT, async {
            self.table().await?;
            sqlx::query_scalar::<_, i32>(
                "SELECT 1 FROM worker_schedule_pauses WHERE key_prefix = $1 AND schedule = $2",
            )
            .bind(&self.key_prefix)
            .bind(Self::name(schedule))
            .fetch_optional(&self.pool)
            .await
        })
        .await;
        let Ok(mut known) = self.known.lock() else {
            return false;
        };
        let problem = match asked {
            Ok(Ok(row)) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!("schedule pauses readable from PostgreSQL again");
                }
                if row.is_some() {
                    known.insert(schedule.to_owned());
                } else {
                    known.remove(schedule);
                }
                return row.is_some();
            }
            Ok(Err(e)) => crate::settings::redact_text(&e.to_string()),
            Err(_) => "timed out".to_owned(),
        };
        if !self.failing.swap(true, Ordering::Relaxed) {
            warn!(schedule, error = %problem, "cannot read the schedule pauses from PostgreSQL; using the last answer until it answers again");
        }
        known.contains(schedule)
    }
}
