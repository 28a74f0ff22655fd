//! A job that cannot reach its data at all fails as a whole, with an error the worker retries
//! (transient) and Python recognises (`OperationalError`, `ConnectionError`) — never a SUCCESS
//! that lists the failure as a row error.

use jobs::{Context, JobError, JobOptions};
use redis::aio::ConnectionManager;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

use crate::harness::{PG_ADMIN_URL, PG_BASE_URL, REDIS_URL};

async fn redis() -> ConnectionManager {
    ConnectionManager::new(redis::Client::open(REDIS_URL).unwrap())
        .await
        .unwrap()
}

fn context(pool: PgPool, redis: ConnectionManager) -> Context {
    Context::new(
        pool,
        redis,
        None,
        JobOptions {
            redis_key_prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
            ..JobOptions::default()
        },
    )
}

/// Every job that needs PostgreSQL, run once; each error must be "the database is unusable".
async fn assert_every_db_job_fails_as_a_whole(ctx: &Context, what: &str) {
    let check = |name: &str, e: JobError| {
        assert!(e.is_transient(), "{what}: {name}: not transient: {e}");
        assert_eq!(e.kind(), "OperationalError", "{what}: {name}: {e}");
    };
    check(
        "process_reminders",
        jobs::reminders::process_reminders(ctx).await.unwrap_err(),
    );
    check(
        "auto_close_shifts",
        jobs::auto_close::auto_close_shifts(ctx).await.unwrap_err(),
    );
    check(
        "plan_next_year_timeslots",
        jobs::planner::plan_next_year_timeslots(ctx)
            .await
            .unwrap_err(),
    );
    check(
        "send_shift_notification",
        jobs::notifications::send_shift_notification(ctx, 1, "shift_reminder", &json!({}), None)
            .await
            .unwrap_err(),
    );
    check(
        "send_bulk_notifications",
        jobs::notifications::send_bulk_notifications(
            ctx,
            &[1, 2],
            "shift_reminder",
            &json!({}),
            None,
        )
        .await
        .unwrap_err(),
    );
    check(
        "send_shift_reminder",
        jobs::reminders::send_shift_reminder(ctx, 1, 1, &json!({}))
            .await
            .unwrap_err(),
    );
    check(
        "send_notification_now",
        jobs::notifications::send_notification_now(ctx, 1)
            .await
            .unwrap_err(),
    );
    check(
        "calculate_shift_payment",
        jobs::shift_payment::calculate_shift_payment(ctx, 1)
            .await
            .unwrap_err(),
    );
    check(
        "calculate_monthly_metrics",
        jobs::monthly_metrics::calculate_monthly_metrics(ctx, Some(2026), Some(11))
            .await
            .unwrap_err(),
    );
}

#[tokio::test]
async fn jobs_fail_as_a_whole_when_their_database_is_missing() {
    let missing = format!("jobs_missing_{}", uuid::Uuid::new_v4().simple());
    let pool = PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy(&format!("{PG_BASE_URL}/{missing}"))
        .unwrap();
    let ctx = context(pool, redis().await);
    assert_every_db_job_fails_as_a_whole(&ctx, "missing database").await;
}

#[tokio::test]
async fn jobs_fail_as_a_whole_when_the_schema_is_not_migrated() {
    let name = format!("jobs_empty_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(PG_ADMIN_URL).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("{PG_BASE_URL}/{name}"))
        .await
        .unwrap();
    let ctx = context(pool.clone(), redis().await);
    assert_every_db_job_fails_as_a_whole(&ctx, "empty database").await;
    pool.close().await;
    let _ = sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}

#[tokio::test]
async fn cleanup_cache_fails_as_a_whole_when_redis_is_unreachable() {
    // Nothing listens on port 1.
    let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
    let redis = ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_number_of_retries(1),
    )
    .unwrap();
    let pool = PgPoolOptions::new()
        .connect_lazy(&format!("{PG_BASE_URL}/postgres"))
        .unwrap();
    let ctx = context(pool, redis);
    let e = jobs::cleanup_cache::cleanup_cache(&ctx).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.kind(), "ConnectionError", "{e}");
}
