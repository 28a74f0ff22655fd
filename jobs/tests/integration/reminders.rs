//! process-reminders and send_shift_reminder.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs::reminders::{process_reminders_at, send_shift_reminder};
use serde_json::json;

use crate::fake_telegram::Reply;
use crate::harness::{ObjectSpec, ScheduleSpec, TOKEN, TestEnv, events, utc};

const NOW: &str = "2026-03-10T06:00:00Z";

fn now() -> DateTime<Utc> {
    utc(NOW)
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

#[derive(Debug, sqlx::FromRow)]
struct NotificationRow {
    channel: String,
    status: String,
    priority: String,
    #[sqlx(rename = "type")]
    kind: String,
    title: String,
    data: Option<sqlx::types::Json<serde_json::Value>>,
    sent_at: Option<DateTime<Utc>>,
    error_message: Option<String>,
    retry_count: i32,
}

async fn notifications(env: &TestEnv, user_id: i32) -> Vec<NotificationRow> {
    sqlx::query_as(
        "SELECT channel, status, priority, type, title, data, sent_at, error_message, retry_count \
         FROM notifications WHERE user_id = $1 ORDER BY channel",
    )
    .bind(user_id)
    .fetch_all(&env.pool)
    .await
    .expect("notifications")
}

async fn notification_sent(env: &TestEnv, schedule: i32) -> Option<bool> {
    sqlx::query_scalar("SELECT notification_sent FROM shift_schedules WHERE id = $1")
        .bind(schedule)
        .fetch_one(&env.pool)
        .await
        .expect("flag")
}

#[tokio::test]
async fn shift_created_40_minutes_ahead_is_reminded() {
    let env = TestEnv::new().await;
    let (user, chat) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let start = now() + minutes(40);
    let schedule = env
        .schedule(ScheduleSpec::new(
            user,
            object,
            start,
            start + minutes(8 * 60),
        ))
        .await;

    let report = process_reminders_at(&env.ctx, now()).await.expect("run");
    assert_eq!(
        (
            report.total_shifts,
            report.sent_successfully,
            report.failed_to_send
        ),
        (1, 1, 0)
    );
    assert_eq!(notification_sent(&env, schedule).await, Some(true));

    let requests = env.telegram.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, format!("/bot{TOKEN}/sendMessage"));
    assert_eq!(request.chat_id(), chat);
    assert_eq!(request.body["parse_mode"], "HTML");
    assert_eq!(request.body["link_preview_options"]["is_disabled"], true);
    assert_eq!(
        request.text(),
        "<b>⏰ Напоминание о смене</b>\n\n🏢 <b>Склад №1</b>\n📍 ул. Ленина, 1\n🕐 10.03.2026 09:40–17:40"
    );

    let rows = notifications(&env, user).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(
            (
                row.kind.as_str(),
                row.priority.as_str(),
                row.status.as_str()
            ),
            ("shift_reminder", "high", "sent")
        );
        assert!(row.sent_at.is_some());
        assert_eq!(row.title, "Напоминание о смене");
        let data = &row.data.as_ref().expect("data").0;
        assert_eq!(data["shift_schedule_id"], schedule);
        assert_eq!(data["object_id"], object);
        assert_eq!(data["object_name"], "Склад №1");
        assert_eq!(data["shift_start"], "2026-03-10T09:40:00+03:00");
        assert_eq!(data["shift_end"], "2026-03-10T17:40:00+03:00");
    }
    assert_eq!(rows[0].channel, "in_app");
    assert_eq!(rows[1].channel, "telegram");
}

#[tokio::test]
async fn window_is_now_exclusive_to_now_plus_hours_before_inclusive() {
    let env = TestEnv::new().await;
    let object = env
        .object(ObjectSpec {
            timezone: Some("Asia/Yekaterinburg"),
            ..Default::default()
        })
        .await;
    let mut cases = Vec::new();
    for (offset, status, flag, expected) in [
        (-10, "planned", Some(false), false),
        (0, "planned", Some(false), false),
        (1, "planned", Some(false), true),
        (120, "confirmed", None, true),
        (121, "planned", Some(false), false),
        (30, "cancelled", Some(false), false),
        (30, "planned", Some(true), false),
    ] {
        let (user, chat) = env.user().await;
        let start = now() + minutes(offset);
        let schedule = env
            .schedule(ScheduleSpec {
                status: Some(status),
                notification_sent: flag,
                ..ScheduleSpec::new(user, object, start, start + minutes(60))
            })
            .await;
        cases.push((schedule, chat, expected));
    }
    let report = process_reminders_at(&env.ctx, now()).await.expect("run");
    assert_eq!(report.total_shifts, 2);
    assert_eq!(report.sent_successfully, 2);
    for &(schedule, chat, expected) in &cases {
        assert_eq!(
            env.telegram.requests_to(chat).len(),
            usize::from(expected),
            "schedule {schedule}"
        );
    }
    // The object's own timezone (UTC+5): 06:01Z is 11:01 there.
    let one_minute_ahead = cases[2].1;
    let text = env.telegram.requests_to(one_minute_ahead)[0]
        .text()
        .to_owned();
    assert!(text.ends_with("10.03.2026 11:01–12:01"), "{text}");
}

#[tokio::test]
async fn markup_characters_in_object_data_are_escaped() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env
        .object(ObjectSpec {
            name: "<Tom> & \"Jerry\"",
            address: Some("a < b & c > d"),
            ..Default::default()
        })
        .await;
    let start = now() + minutes(60);
    env.schedule(ScheduleSpec::new(user, object, start, start + minutes(60)))
        .await;
    let report = process_reminders_at(&env.ctx, now()).await.expect("run");
    // The fake answers 400 to unescaped markup, as Telegram does.
    assert_eq!(report.sent_successfully, 1, "{:?}", report.errors);
    let requests = env.telegram.requests();
    assert_eq!(requests[0].status, 200);
    let text = requests[0].text();
    assert!(
        text.contains("<b>&lt;Tom&gt; &amp; &quot;Jerry&quot;</b>"),
        "{text}"
    );
    assert!(text.contains("📍 a &lt; b &amp; c &gt; d"), "{text}");
}

#[tokio::test]
async fn notification_preferences_choose_the_channels() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    let (no_telegram, chat_a) = env
        .user_with_prefs(Some(json!({"shift_reminder": {"telegram": false}})))
        .await;
    let (no_in_app, chat_b) = env
        .user_with_prefs(Some(json!({"shift_reminder": {"in_app": false}})))
        .await;
    let (neither, chat_c) = env
        .user_with_prefs(Some(
            json!({"shift_reminder": {"in_app": false, "telegram": false}}),
        ))
        .await;
    let start = now() + minutes(60);
    for user in [no_telegram, no_in_app, neither] {
        env.schedule(ScheduleSpec::new(user, object, start, start + minutes(60)))
            .await;
    }
    let report = process_reminders_at(&env.ctx, now()).await.expect("run");
    assert_eq!((report.sent_successfully, report.skipped), (2, 1));
    assert!(env.telegram.requests_to(chat_a).is_empty());
    assert_eq!(env.telegram.requests_to(chat_b).len(), 1);
    assert!(env.telegram.requests_to(chat_c).is_empty());
    let channels =
        |rows: Vec<NotificationRow>| rows.into_iter().map(|r| r.channel).collect::<Vec<_>>();
    assert_eq!(channels(notifications(&env, no_telegram).await), ["in_app"]);
    assert_eq!(channels(notifications(&env, no_in_app).await), ["telegram"]);
    assert!(notifications(&env, neither).await.is_empty());
}

#[tokio::test]
async fn without_a_token_in_app_notifications_are_still_recorded() {
    let env = TestEnv::without_telegram().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let start = now() + minutes(60);
    env.schedule(ScheduleSpec::new(user, object, start, start + minutes(60)))
        .await;
    let report = process_reminders_at(&env.ctx, now()).await.expect("run");
    assert_eq!(report.sent_successfully, 1);
    assert!(env.telegram.requests().is_empty());
    let rows = notifications(&env, user).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].channel.as_str(), rows[0].status.as_str()),
        ("in_app", "sent")
    );
}

#[tokio::test]
async fn bad_request_and_forbidden_are_not_retried() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    let (blocked, blocked_chat) = env.user().await;
    let (bad, bad_chat) = env.user().await;
    env.telegram.script_chat(blocked_chat, &[Reply::Forbidden]);
    env.telegram.script_chat(bad_chat, &[Reply::BadRequest]);
    let start = now() + minutes(60);
    let s1 = env
        .schedule(ScheduleSpec::new(
            blocked,
            object,
            start,
            start + minutes(60),
        ))
        .await;
    env.schedule(ScheduleSpec::new(bad, object, start, start + minutes(60)))
        .await;

    let report = process_reminders_at(&env.ctx, now())
        .await
        .expect("a refused message is not a failed job");
    assert_eq!((report.sent_successfully, report.failed_to_send), (0, 2));
    assert_eq!(report.errors.len(), 2);
    assert_eq!(env.telegram.requests_to(blocked_chat).len(), 1);
    assert_eq!(env.telegram.requests_to(bad_chat).len(), 1);
    for (user, code) in [(blocked, "403"), (bad, "400")] {
        let telegram_row = notifications(&env, user)
            .await
            .into_iter()
            .find(|r| r.channel == "telegram")
            .expect("row");
        assert_eq!(telegram_row.status, "failed");
        assert_eq!(telegram_row.retry_count, 1);
        assert!(
            telegram_row
                .error_message
                .as_deref()
                .unwrap_or_default()
                .contains(code)
        );
    }
    // Claimed: not sent again by the next run.
    assert_eq!(notification_sent(&env, s1).await, Some(true));
    process_reminders_at(&env.ctx, now())
        .await
        .expect("run again");
    assert_eq!(env.telegram.requests().len(), 2);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    let (limited, limited_chat) = env.user().await;
    let (flaky, flaky_chat) = env.user().await;
    env.telegram
        .script_chat(limited_chat, &[Reply::TooManyRequests(1)]);
    env.telegram
        .script_chat(flaky_chat, &[Reply::ServerError, Reply::ServerError]);
    let start = now() + minutes(60);
    env.schedule(ScheduleSpec::new(
        limited,
        object,
        start,
        start + minutes(60),
    ))
    .await;
    env.schedule(ScheduleSpec::new(flaky, object, start, start + minutes(60)))
        .await;

    let report = process_reminders_at(&env.ctx, now()).await.expect("run");
    assert_eq!(report.sent_successfully, 2, "{:?}", report.errors);
    let limited_requests = env.telegram.requests_to(limited_chat);
    assert_eq!(limited_requests.len(), 2);
    let waited = limited_requests[1].at - limited_requests[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retry_after honoured: waited {waited:?}"
    );
    assert_eq!(env.telegram.requests_to(flaky_chat).len(), 3);
    for user in [limited, flaky] {
        let row = notifications(&env, user)
            .await
            .into_iter()
            .find(|r| r.channel == "telegram")
            .expect("row");
        assert_eq!(row.status, "sent");
    }
}

#[tokio::test]
async fn second_run_sends_nothing() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    for _ in 0..3 {
        let (user, _) = env.user().await;
        let start = now() + minutes(90);
        env.schedule(ScheduleSpec::new(user, object, start, start + minutes(60)))
            .await;
    }
    let first = process_reminders_at(&env.ctx, now()).await.expect("run");
    assert_eq!(first.sent_successfully, 3);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    let second = process_reminders_at(&env.ctx, now() + minutes(30))
        .await
        .expect("run again");
    assert_eq!((second.total_shifts, second.sent_successfully), (0, 0));
    assert_eq!(env.telegram.requests().len(), 3);
    let rows_after: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(rows, rows_after);
}

#[tokio::test]
async fn concurrent_runs_remind_each_schedule_once() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    let mut chats = Vec::new();
    for i in 0..20 {
        let (user, chat) = env.user().await;
        let start = now() + minutes(10 + i);
        env.schedule(ScheduleSpec::new(user, object, start, start + minutes(60)))
            .await;
        chats.push(chat);
    }
    let mut pubsub = env.subscribe().await;
    let (a, b) = tokio::join!(
        process_reminders_at(&env.ctx, now()),
        process_reminders_at(&env.ctx, now())
    );
    let (a, b) = (a.expect("run a"), b.expect("run b"));
    assert_eq!(a.sent_successfully + b.sent_successfully, 20);
    assert_eq!(env.telegram.requests().len(), 20);
    for chat in chats {
        assert_eq!(env.telegram.requests_to(chat).len(), 1);
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(rows, 40);
    let received = events(&mut pubsub, 25, Duration::from_secs(2)).await;
    assert_eq!(received.len(), 20);
    assert!(
        received
            .iter()
            .all(|e| e["type"] == "reminder_sent" && e["object_id"] == object)
    );
}

#[tokio::test]
async fn manual_reminder_claims_like_the_periodic_job() {
    let env = TestEnv::new().await;
    let (user, chat) = env.user().await;
    let (stranger, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let start = Utc::now() + minutes(60);
    let schedule = env
        .schedule(ScheduleSpec::new(user, object, start, start + minutes(60)))
        .await;

    let err = send_shift_reminder(&env.ctx, stranger, schedule, &json!({}))
        .await
        .expect_err("not theirs");
    assert_eq!(err.kind(), "NotFound");

    let report = send_shift_reminder(&env.ctx, user, schedule, &json!({"note": "manual"}))
        .await
        .expect("send");
    assert!(report.success && !report.already_sent);
    let again = send_shift_reminder(&env.ctx, user, schedule, &json!({}))
        .await
        .expect("send again");
    assert!(!again.success && again.already_sent);
    let periodic = process_reminders_at(&env.ctx, Utc::now())
        .await
        .expect("periodic");
    assert_eq!(periodic.total_shifts, 0);
    assert_eq!(env.telegram.requests_to(chat).len(), 1);
    let rows = notifications(&env, user).await;
    let data = &rows[0].data.as_ref().expect("data").0;
    assert_eq!(data["shift_data"]["note"], "manual");
}
