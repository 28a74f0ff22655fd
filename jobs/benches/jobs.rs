//! Benchmark of the two set-based jobs against the local PostgreSQL and Redis, at ten times
//! StaffProBot's size: plan-next-year-timeslots over 10,000 active objects (about 2.6 million
//! slots) and auto-close-shifts over 1,000,000 active shifts. Prints wall time, SQL statements
//! executed (counted by the jobs' own `Context::statements_executed`, BEGIN/COMMIT included)
//! beside the statement count of the Python algorithm, and the peak resident memory of this
//! process during each run (the jobs' memory bound); and, for a side-by-side ratio in the same
//! run, times the Python-style loop (one query per object-day, one UPDATE per shift) on a slice
//! and extrapolates it. `BENCH_OBJECTS` / `BENCH_SHIFTS` change the sizes.
//!
//! Run: `cargo bench -p jobs --bench jobs` (PostgreSQL at postgres://postgres@localhost:5432,
//! Redis at redis://127.0.0.1:6379; override with BENCH_PG_URL / BENCH_REDIS_URL). It creates and
//! drops its own database and uses its own Redis key prefix.

use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use jobs::{Context, JobOptions};
use redis::aio::ConnectionManager;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

const OBJECTS: i64 = 10_000;
const SHIFTS: i64 = 1_000_000;
/// Objects the Python-style planner loop runs over (then extrapolated to `OBJECTS`).
const NAIVE_OBJECTS: i64 = 50;
/// Shifts the Python-style auto-close loop runs over (then extrapolated to `SHIFTS`).
const NAIVE_SHIFTS: i64 = 5_000;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn size(var: &str, default: i64) -> i64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resets this process's peak resident set (Linux: `5` into `clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn current_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let pg = std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@localhost:5432".into());
    let redis_url =
        std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("jobs_bench_{id}");

    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{pg}/postgres"))
        .await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{db_name}\"")))
        .execute(&admin)
        .await?;
    let outcome = run(&pg, &db_name, &redis_url, &format!("bench:{id}:")).await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    outcome
}

async fn run(pg: &str, db_name: &str, redis_url: &str, prefix: &str) -> BenchResult<()> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{pg}/{db_name}"))
        .await?;
    jobs::migrate(&pool).await?;
    let redis = ConnectionManager::new(redis::Client::open(redis_url)?).await?;
    let ctx = Context::new(
        pool.clone(),
        redis.clone(),
        None,
        JobOptions {
            redis_key_prefix: prefix.to_owned(),
            ..Default::default()
        },
    );

    let objects = size("BENCH_OBJECTS", OBJECTS);
    let shifts = size("BENCH_SHIFTS", SHIFTS);
    println!("seeding {objects} active objects ...");
    seed_objects(&pool, objects).await?;

    // --- plan-next-year-timeslots -------------------------------------------------------
    let before = ctx.statements_executed();
    let rss_before = current_rss_mb();
    reset_peak_rss();
    let started = Instant::now();
    let report = jobs::planner::plan_timeslots_for_year(&ctx, 2027).await?;
    let elapsed = started.elapsed();
    let peak = peak_rss_mb();
    let statements = ctx.statements_executed() - before;
    let days = 365;
    println!();
    println!(
        "plan-next-year-timeslots, {} objects, year {}",
        report.objects, report.year
    );
    println!(
        "  created {} slots (skipped {}) in {}",
        report.created,
        report.skipped_existing,
        secs(elapsed)
    );
    println!(
        "  SQL statements: {statements}  |  Python algorithm: ~{} lookups (one per object-day) + one INSERT per slot",
        objects * days
    );
    println!("  memory: peak RSS {peak:.1} MB during the run ({rss_before:.1} MB before it)");

    let before = ctx.statements_executed();
    let started = Instant::now();
    let again = jobs::planner::plan_timeslots_for_year(&ctx, 2027).await?;
    println!(
        "  second run: created {} (skipped {}) in {}, {} statements",
        again.created,
        again.skipped_existing,
        secs(started.elapsed()),
        ctx.statements_executed() - before
    );

    let (naive_time, naive_statements, naive_created) =
        naive_planner(&pool, 2028, NAIVE_OBJECTS).await?;
    let scale = objects as f64 / NAIVE_OBJECTS as f64;
    println!(
        "  Python-style loop on {NAIVE_OBJECTS} objects: {naive_created} slots, {naive_statements} statements in {} \
         -> ~{} for {objects} objects ({:.0}x the set-based run)",
        secs(naive_time),
        secs(naive_time.mul_f64(scale)),
        naive_time.as_secs_f64() * scale / elapsed.as_secs_f64()
    );

    // --- auto-close-shifts --------------------------------------------------------------
    println!();
    println!("seeding {shifts} active shifts ...");
    let now: DateTime<Utc> = "2026-03-11T12:00:00Z".parse()?;
    seed_shifts(&pool, shifts, objects).await?;
    let before = ctx.statements_executed();
    let rss_before = current_rss_mb();
    reset_peak_rss();
    let started = Instant::now();
    let report = jobs::auto_close::auto_close_shifts_at(&ctx, now).await?;
    let elapsed = started.elapsed();
    let peak = peak_rss_mb();
    let statements = ctx.statements_executed() - before;
    println!("auto-close-shifts, {shifts} active shifts");
    println!(
        "  closed {} shifts, {} schedules, {} errors in {} (cache invalidation and {} events included)",
        report.closed_count,
        report.closed_schedules,
        report.errors.len(),
        secs(elapsed),
        report.closed_count
    );
    println!(
        "  SQL statements: {statements}  |  Python algorithm: {} (one SELECT, one UPDATE per shift, one COMMIT)",
        shifts + 2
    );
    println!(
        "  memory: peak RSS {peak:.1} MB during the run ({rss_before:.1} MB before it); the Python \
         algorithm holds all {shifts} rows at once"
    );
    let before = ctx.statements_executed();
    let started = Instant::now();
    let again = jobs::auto_close::auto_close_shifts_at(&ctx, now).await?;
    println!(
        "  second run: closed {} in {}, {} statements",
        again.closed_count,
        secs(started.elapsed()),
        ctx.statements_executed() - before
    );

    seed_shifts(&pool, NAIVE_SHIFTS, objects).await?;
    let (naive_time, naive_statements) = naive_auto_close(&pool, now).await?;
    let scale = shifts as f64 / NAIVE_SHIFTS as f64;
    println!(
        "  Python-style loop on {NAIVE_SHIFTS} shifts: {naive_statements} statements in {} \
         -> ~{} for {shifts} shifts ({:.1}x the set-based run)",
        secs(naive_time),
        secs(naive_time.mul_f64(scale)),
        naive_time.as_secs_f64() * scale / elapsed.as_secs_f64()
    );

    let mut conn = redis.clone();
    jobs::cache::delete_matching(&mut conn, &format!("{prefix}*")).await?;
    pool.close().await;
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn seed_objects(pool: &PgPool, objects: i64) -> BenchResult<()> {
    sqlx::query(
        "INSERT INTO users (telegram_id, first_name, role) \
         SELECT 5000000 + g, 'Сотрудник ' || g, 'employee' FROM generate_series(1, $1) g",
    )
    .bind(objects)
    .execute(pool)
    .await?;
    // A third of the objects in another timezone, so the per-row timezone work is exercised.
    sqlx::query(
        "INSERT INTO objects (name, owner_id, opening_time, closing_time, hourly_rate, timezone, is_active) \
         SELECT 'Объект ' || g, 1, '09:00', '18:00', 350.00, \
                CASE WHEN g % 3 = 0 THEN 'Asia/Yekaterinburg' END, true \
         FROM generate_series(1, $1) g",
    )
    .bind(objects)
    .execute(pool)
    .await?;
    Ok(())
}

/// `n` active shifts started on Mar 10 2026 between 08:00 and 11:00 UTC, all due by Mar 11.
async fn seed_shifts(pool: &PgPool, n: i64, objects: i64) -> BenchResult<()> {
    sqlx::query(
        "INSERT INTO shifts (user_id, object_id, start_time, status, hourly_rate) \
         SELECT (g % $2) + 1, (g % $2) + 1, \
                timestamptz '2026-03-10 05:00:00+00' + (g % 180) * interval '1 minute', \
                'active', 350.00 \
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(objects)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct NaiveObject {
    id: i32,
    opening_time: NaiveTime,
    closing_time: NaiveTime,
    hourly_rate: rust_decimal::Decimal,
    work_days_mask: i32,
}

/// The Python planner's shape: per object, per day, one "is there a slot?" query, then an INSERT.
async fn naive_planner(
    pool: &PgPool,
    year: i32,
    objects: i64,
) -> BenchResult<(Duration, u64, u64)> {
    let started = Instant::now();
    let mut statements = 1u64;
    let list: Vec<NaiveObject> = sqlx::query_as(
        "SELECT id, opening_time, closing_time, hourly_rate, work_days_mask FROM objects \
         WHERE is_active = true ORDER BY id LIMIT $1",
    )
    .bind(objects)
    .fetch_all(pool)
    .await?;
    let mut created = 0;
    let first = NaiveDate::from_ymd_opt(year, 1, 1).ok_or("year")?;
    for object in &list {
        let mut day = first;
        while day.year() == year {
            statements += 1;
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM time_slots WHERE object_id = $1 AND slot_date = $2)",
            )
            .bind(object.id)
            .bind(day)
            .fetch_one(pool)
            .await?;
            let weekday_on =
                (object.work_days_mask >> day.weekday().num_days_from_monday()) & 1 == 1;
            if !exists && weekday_on {
                statements += 1;
                sqlx::query(
                    "INSERT INTO time_slots (object_id, slot_date, start_time, end_time, hourly_rate, is_active) \
                     VALUES ($1, $2, $3, $4, $5, true)",
                )
                .bind(object.id)
                .bind(day)
                .bind(object.opening_time)
                .bind(object.closing_time)
                .bind(object.hourly_rate)
                .execute(pool)
                .await?;
                created += 1;
            }
            day = day.succ_opt().ok_or("date")?;
        }
    }
    Ok((started.elapsed(), statements, created))
}

/// The Python auto-close's shape: one SELECT, then one UPDATE per shift.
async fn naive_auto_close(pool: &PgPool, now: DateTime<Utc>) -> BenchResult<(Duration, u64)> {
    let started = Instant::now();
    let mut statements = 1u64;
    let rows: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, start_time FROM shifts WHERE status = 'active' AND start_time < $1",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    for (id, start) in rows {
        let end = start + chrono::Duration::hours(8);
        statements += 1;
        sqlx::query(
            "UPDATE shifts SET end_time = $2, status = 'completed', total_hours = 8, \
             total_payment = 8 * hourly_rate, updated_at = now() WHERE id = $1 AND status = 'active'",
        )
        .bind(id)
        .bind(end)
        .execute(pool)
        .await?;
    }
    Ok((started.elapsed(), statements))
}
