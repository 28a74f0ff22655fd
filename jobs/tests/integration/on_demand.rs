//! The on-demand tasks: notifications, payment, monthly metrics; and error classification.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs::monthly_metrics::calculate_monthly_metrics;
use jobs::notifications::{
    send_bulk_notifications, send_notification_now, send_shift_notification,
};
use jobs::shift_payment::calculate_shift_payment;
use jobs::{Context, ContextSettings};
use rust_decimal::Decimal;
use serde_json::json;

use crate::fake_telegram::Reply;
use crate::harness::{ObjectSpec, REDIS_URL, TOKEN, TestEnv, dec, utc};

#[tokio::test]
async fn shift_notification_is_recorded_and_delivered_escaped() {
    let env = TestEnv::new().await;
    let (user, chat) = env.user().await;
    let data = json!({"object_name": "<Склад & Ко>", "shift_start": "10.03 09:00"});
    let report = send_shift_notification(&env.ctx, user, "shift_cancelled", &data, None)
        .await
        .expect("send");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["success"], true);
    assert_eq!(json["user_id"], user);
    assert_eq!(json["type"], "shift_cancelled");
    let requests = env.telegram.requests_to(chat);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].text(),
        "<b>Смена отменена</b>\n\nОбъект: &lt;Склад &amp; Ко&gt;\nНачало: 10.03 09:00"
    );
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT channel, status FROM notifications WHERE user_id = $1 ORDER BY channel",
    )
    .bind(user)
    .fetch_all(&env.pool)
    .await
    .expect("rows");
    assert_eq!(
        statuses,
        [
            ("in_app".into(), "sent".into()),
            ("telegram".into(), "sent".into())
        ]
    );
}

#[tokio::test]
async fn shift_notification_errors_are_typed() {
    let env = TestEnv::new().await;
    let missing = send_shift_notification(&env.ctx, 999_999, "shift_cancelled", &json!({}), None)
        .await
        .expect_err("no user");
    assert_eq!(
        (missing.kind(), missing.is_transient()),
        ("NotFound", false)
    );
    let (user, chat) = env.user().await;
    let bad = send_shift_notification(&env.ctx, user, " ", &json!({}), None)
        .await
        .expect_err("bad type");
    assert_eq!(bad.kind(), "ValueError");

    env.telegram.script_chat(chat, &[Reply::Forbidden]);
    let blocked = send_shift_notification(&env.ctx, user, "shift_cancelled", &json!({}), None)
        .await
        .expect("report");
    assert!(!blocked.success);
    assert!(blocked.error.as_deref().unwrap_or_default().contains("403"));

    // Four 500s outlast the client's retries: a transient error for the worker to retry.
    env.telegram.script_chat(chat, &[Reply::ServerError; 4]);
    let down = send_shift_notification(&env.ctx, user, "shift_cancelled", &json!({}), None)
        .await
        .expect_err("5xx");
    assert_eq!((down.kind(), down.is_transient()), ("TelegramError", true));
}

/// A retried or redelivered task runs again with the same Celery id: it must not record a second
/// in-app notification, must retry a Telegram message that failed on the same row, and must not
/// send one that was already sent.
#[tokio::test]
async fn shift_notification_rerun_of_the_same_task_records_and_sends_once() {
    let env = TestEnv::new().await;
    let (user, chat) = env.user().await;
    let data = json!({"object_name": "Склад"});
    let task_id = uuid::Uuid::new_v4().to_string();
    let rows = async || -> Vec<(String, String, i32)> {
        sqlx::query_as(
            "SELECT channel, status, retry_count FROM notifications WHERE user_id = $1 \
             ORDER BY channel, id",
        )
        .bind(user)
        .fetch_all(&env.pool)
        .await
        .expect("rows")
    };

    // First run: Telegram is down past the client's retries, so the task fails to be retried.
    env.telegram.script_chat(chat, &[Reply::ServerError; 4]);
    let down = send_shift_notification(&env.ctx, user, "shift_cancelled", &data, Some(&task_id))
        .await
        .expect_err("5xx");
    assert!(down.is_transient());
    assert_eq!(
        rows().await,
        [
            ("in_app".into(), "sent".into(), 0),
            ("telegram".into(), "failed".into(), 1)
        ]
    );
    let attempts_while_down = env.telegram.requests_to(chat).len();

    // The retry: same rows, the Telegram one now sent.
    env.telegram.script_chat(chat, &[Reply::Ok]);
    let report = send_shift_notification(&env.ctx, user, "shift_cancelled", &data, Some(&task_id))
        .await
        .expect("retry");
    assert!(report.success);
    assert_eq!(
        rows().await,
        [
            ("in_app".into(), "sent".into(), 0),
            ("telegram".into(), "sent".into(), 1)
        ]
    );
    assert_eq!(
        env.telegram.requests_to(chat).len(),
        attempts_while_down + 1
    );

    // A redelivery after success (a crash before the ack): nothing new is recorded or sent.
    let again = send_shift_notification(&env.ctx, user, "shift_cancelled", &data, Some(&task_id))
        .await
        .expect("redelivery");
    assert!(again.success);
    assert_eq!(rows().await.len(), 2);
    assert_eq!(
        env.telegram.requests_to(chat).len(),
        attempts_while_down + 1
    );
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM notifications WHERE user_id = $1 LIMIT 1")
            .bind(user)
            .fetch_one(&env.pool)
            .await
            .expect("data");
    assert_eq!(stored["celery_task_id"], task_id.as_str());

    // Another task (another id) is another notification.
    send_shift_notification(
        &env.ctx,
        user,
        "shift_cancelled",
        &data,
        Some("another-task"),
    )
    .await
    .expect("another task");
    assert_eq!(rows().await.len(), 4);

    // Two runs of one task at once record once and send once.
    let (other, other_chat) = env.user().await;
    let both = tokio::join!(
        send_shift_notification(&env.ctx, other, "shift_cancelled", &data, Some(&task_id)),
        send_shift_notification(&env.ctx, other, "shift_cancelled", &data, Some(&task_id)),
    );
    assert!(both.0.is_ok() && both.1.is_ok());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = $1")
        .bind(other)
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(count, 2, "one in-app and one Telegram row");
    assert_eq!(env.telegram.requests_to(other_chat).len(), 1);
}

#[tokio::test]
async fn bulk_notification_reports_each_user() {
    let env = TestEnv::new().await;
    let (a, _) = env.user().await;
    let (b, chat_b) = env.user().await;
    let (c, _) = env.user().await;
    env.telegram.script_chat(chat_b, &[Reply::Forbidden]);
    let report = send_bulk_notifications(
        &env.ctx,
        &[a, b, c, a, 999_999],
        "schedule_changed",
        &json!({}),
        None,
    )
    .await
    .expect("bulk");
    assert_eq!(report.total_users, 4);
    assert_eq!((report.sent, report.failed, report.success), (2, 2, false));
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("user {b}:")))
    );
    assert!(report.errors.iter().any(|e| e.starts_with("user 999999:")));
    assert_eq!(
        env.telegram.requests().len(),
        3,
        "the repeated user is sent once"
    );
}

async fn pending(env: &TestEnv, user: i32, channel: &str, status: &str) -> i32 {
    sqlx::query_scalar(
        "INSERT INTO notifications (user_id, type, channel, status, priority, title, message, data) \
         VALUES ($1, 'shift_confirmed', $2, $3, 'normal', 'Смена подтверждена', 'Завтра в 9 & не опаздывать', '{}') \
         RETURNING id",
    )
    .bind(user)
    .bind(channel)
    .bind(status)
    .fetch_one(&env.pool)
    .await
    .expect("insert notification")
}

#[tokio::test]
async fn send_notification_now_delivers_once() {
    let env = TestEnv::new().await;
    let (user, chat) = env.user().await;
    let telegram = pending(&env, user, "telegram", "pending").await;
    let (a, b) = tokio::join!(
        send_notification_now(&env.ctx, telegram),
        send_notification_now(&env.ctx, telegram)
    );
    assert_eq!(
        [a.expect("a"), b.expect("b")]
            .iter()
            .filter(|sent| **sent)
            .count(),
        1
    );
    assert_eq!(env.telegram.requests_to(chat).len(), 1);
    assert_eq!(
        env.telegram.requests_to(chat)[0].text(),
        "<b>Смена подтверждена</b>\n\nЗавтра в 9 &amp; не опаздывать"
    );
    let (status, sent_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT status, sent_at FROM notifications WHERE id = $1")
            .bind(telegram)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(status, "sent");
    assert!(sent_at.is_some());

    let in_app = pending(&env, user, "in_app", "scheduled").await;
    assert!(
        send_notification_now(&env.ctx, in_app)
            .await
            .expect("in-app")
    );
    let upper = pending(&env, user, "telegram", "SENT").await;
    assert!(
        !send_notification_now(&env.ctx, upper)
            .await
            .expect("already sent")
    );
    let email = pending(&env, user, "email", "pending").await;
    assert_eq!(
        send_notification_now(&env.ctx, email)
            .await
            .expect_err("email")
            .kind(),
        "ValueError"
    );
    assert_eq!(
        send_notification_now(&env.ctx, 999_999)
            .await
            .expect_err("missing")
            .kind(),
        "NotFound"
    );
    assert_eq!(env.telegram.requests().len(), 1);
}

async fn closed_shift(env: &TestEnv, start: &str, end: &str, rate: Option<Decimal>) -> i32 {
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    sqlx::query_scalar(
        "INSERT INTO shifts (user_id, object_id, start_time, end_time, status, hourly_rate) \
         VALUES ($1, $2, $3, $4, 'completed', $5) RETURNING id",
    )
    .bind(user)
    .bind(object)
    .bind(utc(start))
    .bind(utc(end))
    .bind(rate)
    .fetch_one(&env.pool)
    .await
    .expect("insert shift")
}

#[tokio::test]
async fn shift_payment_is_exact_and_refuses_overflow() {
    let env = TestEnv::new().await;
    // 7.5 h x 333.33 = 2499.975 -> 2499.98
    let shift = closed_shift(
        &env,
        "2026-03-10T06:00:00Z",
        "2026-03-10T13:30:00Z",
        Some(dec("333.33")),
    )
    .await;
    let report = calculate_shift_payment(&env.ctx, shift)
        .await
        .expect("payment");
    assert_eq!(
        (report.total_hours, report.total_payment),
        (dec("7.50"), Some(dec("2499.98")))
    );
    let json = serde_json::to_value(report).expect("json");
    assert_eq!(
        (json["total_hours"].as_str(), json["total_payment"].as_str()),
        (Some("7.50"), Some("2499.98"))
    );
    let stored: (Option<Decimal>, Option<Decimal>) =
        sqlx::query_as("SELECT total_hours, total_payment FROM shifts WHERE id = $1")
            .bind(shift)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(stored, (Some(dec("7.50")), Some(dec("2499.98"))));

    // Open 50 days: does not fit NUMERIC(5,2). Refused, row untouched.
    let long = closed_shift(
        &env,
        "2026-01-01T06:00:00Z",
        "2026-02-20T06:00:00Z",
        Some(dec("100")),
    )
    .await;
    let err = calculate_shift_payment(&env.ctx, long)
        .await
        .expect_err("overflow");
    assert_eq!(err.kind(), "ValueError");
    assert!(err.to_string().contains("NUMERIC(5,2)"), "{err}");
    let untouched: Option<Decimal> =
        sqlx::query_scalar("SELECT total_hours FROM shifts WHERE id = $1")
            .bind(long)
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(untouched, None);

    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let open = env
        .shift(user, object, utc("2026-03-10T06:00:00Z"), None, None)
        .await;
    assert_eq!(
        calculate_shift_payment(&env.ctx, open)
            .await
            .expect_err("open")
            .kind(),
        "ValueError"
    );
    assert_eq!(
        calculate_shift_payment(&env.ctx, 999_999)
            .await
            .expect_err("missing")
            .kind(),
        "NotFound"
    );
}

#[tokio::test]
async fn monthly_metrics_are_computed_and_cached_for_30_days() {
    let env = TestEnv::new().await;
    // March 2026 in Moscow: Feb 28 21:00Z .. Mar 31 21:00Z.
    closed_shift(
        &env,
        "2026-03-01T06:00:00Z",
        "2026-03-01T14:00:00Z",
        Some(dec("100")),
    )
    .await;
    closed_shift(
        &env,
        "2026-03-31T20:00:00Z",
        "2026-03-31T22:00:00Z",
        Some(dec("100")),
    )
    .await;
    closed_shift(
        &env,
        "2026-03-31T21:30:00Z",
        "2026-03-31T23:00:00Z",
        Some(dec("100")),
    )
    .await; // April locally
    sqlx::query("UPDATE shifts SET total_hours = round(extract(epoch from end_time - start_time) / 3600, 2), \
                 total_payment = round(extract(epoch from end_time - start_time) / 3600, 2) * hourly_rate")
        .execute(&env.pool)
        .await
        .expect("totals");

    let metrics = calculate_monthly_metrics(&env.ctx, Some(2026), Some(3))
        .await
        .expect("metrics");
    assert_eq!((metrics.total_shifts, metrics.completed_shifts), (2, 2));
    assert_eq!(metrics.total_hours, dec("10.00"));
    assert_eq!(metrics.total_payment, dec("1000.00"));
    assert_eq!(metrics.average_shift_hours, dec("5.00"));
    assert_eq!(metrics.period_start, utc("2026-02-28T21:00:00Z"));

    let mut conn = env.redis.clone();
    let key = env.key("analytics:monthly_metrics_2026_3");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!(
        (30 * 24 * 3600 - 60..=30 * 24 * 3600).contains(&ttl),
        "ttl {ttl}"
    );
    let cached: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("get");
    let cached: serde_json::Value = serde_json::from_str(&cached).expect("json");
    assert_eq!(cached["total_payment"], "1000.00");

    assert_eq!(
        calculate_monthly_metrics(&env.ctx, Some(2026), Some(13))
            .await
            .expect_err("month")
            .kind(),
        "ValueError"
    );
}

#[tokio::test]
async fn context_starts_without_a_database_and_reports_it_as_transient() {
    // The Python app's URL form; nothing listens on port 1.
    let mut settings = ContextSettings::new(
        "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
        REDIS_URL,
    );
    let ctx = Context::connect_lazy(&settings).expect("a lazy context needs no database");
    assert!(ctx.telegram().is_none(), "no token, no Telegram");
    let started = std::time::Instant::now();
    let err = jobs::auto_close::auto_close_shifts(&ctx)
        .await
        .expect_err("no database");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.kind(), "OperationalError");
    assert!(started.elapsed() < Duration::from_secs(15));

    settings.telegram_bot_token = Some(TOKEN.to_owned());
    assert!(
        Context::connect_lazy(&settings)
            .expect("context")
            .telegram()
            .is_some()
    );
}
