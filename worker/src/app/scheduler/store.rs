//! The scheduler's state in PostgreSQL: per-tick claims and what each schedule published.
//!
//! # Design decision: PostgreSQL, not Redis
//!
//! The claims and last runs used to be Redis keys. StaffProBot's Redis runs `allkeys-lru` and is
//! shared with the web app's cache, so the keys could be evicted (or lost with a Redis restart
//! without persistence): an evicted claim lets a second replica publish the same tick, an
//! evicted last run makes catch-up treat the schedule as never run. PostgreSQL keeps what it is
//! given, the worker already has a pool for it, and one row per tick makes both facts one
//! atomic statement each. The broker was the other candidate; it has no "insert if absent".
//!
//! One table, `worker_schedule_ticks`, keyed by `(key_prefix, schedule, tick)`:
//!
//! * **claim** — one `INSERT .. ON CONFLICT DO UPDATE .. WHERE` takes the tick when no row
//!   exists, or when the row is not published and its lease (if any) ran out. Only the claimer
//!   publishes. A failed publish releases the claim; a claimer that dies leaves a lease that runs
//!   out: either way another replica (or the next attempt) can take the tick, so a failure costs
//!   no tick.
//! * **finish** — sets `task_id`, `published_at`, `task`, `queue` and clears the lease: the tick
//!   is published for good and no replica can claim it again. Rows older than
//!   [`published_ttl`] are deleted then, except the newest published one (the last run).
//! * **last run** — the newest published row: what catch-up and `worker schedules` read. It can
//!   only move forward, since it is a maximum.
//!
//! `key_prefix` (the `WORKER_KEY_PREFIX` the Redis keys use) separates deployments, and tests,
//! sharing one database.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// The last tick a schedule published, as recorded in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRun {
    pub tick: DateTime<Utc>,
    pub task_id: String,
    pub published_at: DateTime<Utc>,
}

/// Result of trying to claim a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This replica holds the claim and must publish (or release).
    Won,
    /// Some replica already published this tick.
    AlreadyPublished,
    /// Another replica is publishing it right now (or died doing so; its lease will run out).
    HeldByOther,
}

/// Which tick a statement is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TickRef<'a> {
    pub key_prefix: &'a str,
    pub schedule: &'a str,
    pub tick: DateTime<Utc>,
}

/// How long a published tick stays on record: past any catch-up decision about it.
pub(crate) fn published_ttl(catch_up_window: TimeDelta) -> TimeDelta {
    catch_up_window.max(TimeDelta::days(1)) + TimeDelta::hours(1)
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS worker_schedule_ticks (
    key_prefix text NOT NULL,
    schedule text NOT NULL,
    tick timestamptz NOT NULL,
    token text,
    lease_until timestamptz,
    task_id text,
    published_at timestamptz,
    task text,
    queue text,
    PRIMARY KEY (key_prefix, schedule, tick)
)";

/// Creates the table if it is missing; every schedule loop does this at start.
pub(crate) async fn ensure_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    // Two sessions running CREATE TABLE IF NOT EXISTS at once can both miss the table and one
    // fails on the catalog's unique index; replicas starting together take turns instead.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('worker_schedule_ticks'))")
        .execute(&mut *tx)
        .await?;
    sqlx::query(CREATE_TABLE).execute(&mut *tx).await?;
    tx.commit().await
}

/// Tries to claim a tick for `lease`; `token` identifies this attempt.
pub(crate) async fn claim(
    pool: &PgPool,
    at: TickRef<'_>,
    token: &str,
    lease: TimeDelta,
) -> Result<Claim, sqlx::Error> {
    let lease_ms = lease.num_milliseconds().max(1);
    let won: Option<(String,)> = sqlx::query_as(
        "INSERT INTO worker_schedule_ticks (key_prefix, schedule, tick, token, lease_until)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::double precision / 1000))
         ON CONFLICT (key_prefix, schedule, tick) DO UPDATE
           SET token = EXCLUDED.token, lease_until = EXCLUDED.lease_until
           WHERE worker_schedule_ticks.task_id IS NULL
             AND (worker_schedule_ticks.token IS NULL OR worker_schedule_ticks.lease_until < now())
         RETURNING token",
    )
    .bind(at.key_prefix)
    .bind(at.schedule)
    .bind(at.tick)
    .bind(token)
    .bind(lease_ms)
    .fetch_optional(pool)
    .await?;
    if won.is_some_and(|(held,)| held == token) {
        return Ok(Claim::Won);
    }
    let published: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT task_id FROM worker_schedule_ticks
         WHERE key_prefix = $1 AND schedule = $2 AND tick = $3",
    )
    .bind(at.key_prefix)
    .bind(at.schedule)
    .bind(at.tick)
    .fetch_optional(pool)
    .await?;
    Ok(match published {
        Some((Some(_),)) => Claim::AlreadyPublished,
        // Held by another attempt, or released between the two statements: not published yet,
        // and the caller looks again shortly.
        _ => Claim::HeldByOther,
    })
}

/// Gives a claim back after a failed publish, if it is still ours.
pub(crate) async fn release(
    pool: &PgPool,
    at: TickRef<'_>,
    token: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE worker_schedule_ticks SET token = NULL, lease_until = NULL
         WHERE key_prefix = $1 AND schedule = $2 AND tick = $3 AND token = $4 AND task_id IS NULL",
    )
    .bind(at.key_prefix)
    .bind(at.schedule)
    .bind(at.tick)
    .bind(token)
    .execute(pool)
    .await
    .map(drop)
}

/// What `finish` records about a published tick.
pub(crate) struct Published<'a> {
    pub at: TickRef<'a>,
    pub task_id: &'a str,
    pub published_at: DateTime<Utc>,
    pub task: &'a str,
    pub queue: &'a str,
    pub ttl: TimeDelta,
}

/// Marks a tick published (for good), then forgets rows older than the TTL except the last run.
pub(crate) async fn finish(pool: &PgPool, done: &Published<'_>) -> Result<(), sqlx::Error> {
    let at = done.at;
    // An upsert, so a row deleted under us (by hand) is recorded all the same.
    sqlx::query(
        "INSERT INTO worker_schedule_ticks
           (key_prefix, schedule, tick, task_id, published_at, task, queue)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (key_prefix, schedule, tick) DO UPDATE
           SET task_id = EXCLUDED.task_id, published_at = EXCLUDED.published_at,
               task = EXCLUDED.task, queue = EXCLUDED.queue, token = NULL, lease_until = NULL",
    )
    .bind(at.key_prefix)
    .bind(at.schedule)
    .bind(at.tick)
    .bind(done.task_id)
    .bind(done.published_at)
    .bind(done.task)
    .bind(done.queue)
    .execute(pool)
    .await?;
    let Some(horizon) = done.published_at.checked_sub_signed(done.ttl) else {
        return Ok(());
    };
    let pruned = sqlx::query(
        "DELETE FROM worker_schedule_ticks
         WHERE key_prefix = $1 AND schedule = $2 AND tick < $3
           AND tick < (SELECT max(tick) FROM worker_schedule_ticks
                       WHERE key_prefix = $1 AND schedule = $2 AND task_id IS NOT NULL)",
    )
    .bind(at.key_prefix)
    .bind(at.schedule)
    .bind(horizon)
    .execute(pool)
    .await;
    if let Err(err) = pruned {
        // Old rows only cost space; the tick itself is recorded.
        tracing::debug!(schedule = at.schedule, error = %err, "cannot prune old schedule rows");
    }
    Ok(())
}

/// `tick, task_id, published_at` as read back.
type LastRunRow = (DateTime<Utc>, Option<String>, Option<DateTime<Utc>>);

/// Reads the last published tick of a schedule; a missing table is "no history".
pub(crate) async fn read_last_run(
    pool: &PgPool,
    key_prefix: &str,
    name: &str,
) -> Result<Option<LastRun>, sqlx::Error> {
    let row: Result<Option<LastRunRow>, _> = sqlx::query_as(
        "SELECT tick, task_id, published_at FROM worker_schedule_ticks
             WHERE key_prefix = $1 AND schedule = $2 AND task_id IS NOT NULL
             ORDER BY tick DESC LIMIT 1",
    )
    .bind(key_prefix)
    .bind(name)
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some((tick, Some(task_id), Some(published_at)))) => Ok(Some(LastRun {
            tick,
            task_id,
            published_at,
        })),
        Ok(_) => Ok(None),
        // undefined_table: no scheduler has started against this database yet.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(None),
        Err(err) => Err(err),
    }
}

/// The Redis hash where the previous release kept a schedule's last run.
pub(crate) fn legacy_state_key(prefix: &str, name: &str) -> String {
    format!("{prefix}schedule:{name}")
}

/// Upgrade path: the previous release kept each schedule's last run in the Redis hash
/// [`legacy_state_key`]. If PostgreSQL has no run on record for `name`, that run is copied
/// over, so catch-up after the upgrade knows it (and `on_first_start` does not fire a tick that
/// already ran). Returns the tick imported, if any. The hash is left in place (a rollback
/// still finds it); a malformed or missing hash imports nothing.
pub(crate) async fn import_legacy_last_run<C: redis::aio::ConnectionLike + Send>(
    redis: &mut C,
    pool: &PgPool,
    key_prefix: &str,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ImportError> {
    if read_last_run(pool, key_prefix, name).await?.is_some() {
        return Ok(None);
    }
    // HMGET, not HGETALL: a hash grown by someone else costs nothing.
    let [tick, task_id, published_at, task, queue]: [Option<String>; 5] = redis::cmd("HMGET")
        .arg(legacy_state_key(key_prefix, name))
        .arg(&["last_tick", "task_id", "published_at", "task", "queue"])
        .query_async(redis)
        .await?;
    let parse = |text: Option<String>| {
        text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|at| at.with_timezone(&Utc))
    };
    // Task ids are UUIDs; anything long is not one of ours.
    let task_id = task_id.filter(|id| !id.is_empty() && id.len() <= 64);
    let (Some(tick), Some(task_id), Some(published_at)) =
        (parse(tick), task_id, parse(published_at))
    else {
        return Ok(None);
    };
    sqlx::query(
        "INSERT INTO worker_schedule_ticks
           (key_prefix, schedule, tick, task_id, published_at, task, queue)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (key_prefix, schedule, tick) DO NOTHING",
    )
    .bind(key_prefix)
    .bind(name)
    .bind(tick)
    .bind(task_id)
    .bind(published_at)
    .bind(task.filter(|t| t.len() <= 256))
    .bind(queue.filter(|q| q.len() <= 256))
    .execute(pool)
    .await?;
    Ok(Some(tick))
}

/// Why the previous release's state could not be imported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}
