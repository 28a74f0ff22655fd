//! auto-close-shifts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobs::auto_close::auto_close_shifts_at;
use rust_decimal::Decimal;

use crate::harness::{EnvOptions, ObjectSpec, ScheduleSpec, TestEnv, date, dec, events, hm, utc};

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct ShiftRow {
    status: Option<String>,
    end_time: Option<DateTime<Utc>>,
    total_hours: Option<Decimal>,
    total_payment: Option<Decimal>,
    updated_at: Option<DateTime<Utc>>,
}

async fn shift_row(env: &TestEnv, id: i32) -> ShiftRow {
    sqlx::query_as(
        "SELECT status, end_time, total_hours, total_payment, updated_at FROM shifts WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .expect("shift row")
}

#[derive(Debug, sqlx::FromRow, PartialEq)]
struct ScheduleRow {
    status: Option<String>,
    planned_end: DateTime<Utc>,
    auto_closed: Option<bool>,
    updated_at: Option<DateTime<Utc>>,
}

async fn schedule_row(env: &TestEnv, id: i32) -> ScheduleRow {
    sqlx::query_as(
        "SELECT status, planned_end, auto_closed, updated_at FROM shift_schedules WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .expect("schedule row")
}

#[tokio::test]
async fn shift_started_after_closing_closes_at_next_days_closing() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await; // closes 18:00 Moscow = 15:00Z
    // Opened at 19:00 Moscow, after closing: the Python job gave it a negative duration.
    let shift = env
        .shift(
            user,
            object,
            utc("2026-03-10T16:00:00Z"),
            Some(dec("500.00")),
            None,
        )
        .await;

    let early = auto_close_shifts_at(&env.ctx, utc("2026-03-11T14:59:00Z"))
        .await
        .expect("run");
    assert_eq!(early.closed_count, 0, "not due before the next closing");
    assert_eq!(
        shift_row(&env, shift).await.status.as_deref(),
        Some("active")
    );

    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-11T15:00:00Z"))
        .await
        .expect("run");
    assert_eq!(report.closed_count, 1);
    assert!(report.success, "{:?}", report.errors);
    let row = shift_row(&env, shift).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!(row.end_time, Some(utc("2026-03-11T15:00:00Z")));
    assert_eq!(row.total_hours, Some(dec("23.00")));
    assert_eq!(row.total_payment, Some(dec("11500.00")));
}

#[tokio::test]
async fn overnight_object_closes_next_morning() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env
        .object(ObjectSpec {
            opening: hm(22, 0),
            closing: hm(6, 0),
            ..Default::default()
        })
        .await;
    let shift = env
        .shift(
            user,
            object,
            utc("2026-03-10T19:00:00Z"),
            Some(dec("300.00")),
            None,
        )
        .await;
    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-11T04:00:00Z"))
        .await
        .expect("run");
    assert_eq!(report.closed_count, 1);
    let row = shift_row(&env, shift).await;
    assert_eq!(row.end_time, Some(utc("2026-03-11T03:00:00Z")));
    assert_eq!(row.total_hours, Some(dec("8.00")));
    assert_eq!(row.total_payment, Some(dec("2400.00")));
}

#[tokio::test]
async fn time_slot_end_wins_over_closing_time() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let slot = env
        .slot(object, date("2026-03-10"), hm(9, 0), hm(14, 0), true)
        .await;
    let shift = env
        .shift(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("500.00")),
            Some(slot),
        )
        .await;
    auto_close_shifts_at(&env.ctx, utc("2026-03-10T12:00:00Z"))
        .await
        .expect("run");
    let row = shift_row(&env, shift).await;
    assert_eq!(row.end_time, Some(utc("2026-03-10T11:00:00Z")));
    assert_eq!(row.total_hours, Some(dec("5.00")));
}

#[tokio::test]
async fn money_is_exact_and_rounded_half_up() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    // Closing at 10:00:18 Moscow after a 09:00 start: 1.005 h -> 1.01; x 0.50 = 0.505 -> 0.51
    // (binary floats make 0.505 a hair less and round it down).
    let odd = env
        .object(ObjectSpec {
            closing: chrono::NaiveTime::from_hms_opt(10, 0, 18).expect("time"),
            ..Default::default()
        })
        .await;
    let a = env
        .shift(
            user,
            odd,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("0.50")),
            None,
        )
        .await;
    // 20 minutes: 0.333.. -> 0.33 h; 0.33 x 333.33 = 109.9989 -> 110.00.
    let short = env
        .object(ObjectSpec {
            closing: hm(9, 20),
            ..Default::default()
        })
        .await;
    let b = env
        .shift(
            user,
            short,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("333.33")),
            None,
        )
        .await;
    // No rate: hours, and a NULL payment.
    let c = env
        .shift(user, short, utc("2026-03-10T06:00:00Z"), None, None)
        .await;

    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-10T12:00:00Z"))
        .await
        .expect("run");
    assert_eq!(report.closed_count, 3);
    let a = shift_row(&env, a).await;
    assert_eq!(
        a.total_hours.map(|d| d.to_string()).as_deref(),
        Some("1.01")
    );
    assert_eq!(
        a.total_payment.map(|d| d.to_string()).as_deref(),
        Some("0.51")
    );
    let b = shift_row(&env, b).await;
    assert_eq!(b.total_hours, Some(dec("0.33")));
    assert_eq!(
        b.total_payment.map(|d| d.to_string()).as_deref(),
        Some("110.00")
    );
    let c = shift_row(&env, c).await;
    assert_eq!(c.total_hours, Some(dec("0.33")));
    assert_eq!(c.total_payment, None);
}

#[tokio::test]
async fn null_and_unknown_timezones_use_default_timezone() {
    // A default that is not Moscow, so a hard-coded Moscow fallback would show.
    let env = TestEnv::with(EnvOptions {
        default_timezone: chrono_tz::Asia::Novosibirsk,
        ..Default::default()
    })
    .await;
    let (user, _) = env.user().await;
    let null_tz = env
        .object(ObjectSpec {
            timezone: None,
            ..Default::default()
        })
        .await;
    let unknown = env
        .object(ObjectSpec {
            timezone: Some("Mars/Olympus_Mons"),
            ..Default::default()
        })
        .await;
    let yekaterinburg = env
        .object(ObjectSpec {
            timezone: Some("Asia/Yekaterinburg"),
            ..Default::default()
        })
        .await;
    let start = utc("2026-03-10T02:00:00Z");
    let a = env
        .shift(user, null_tz, start, Some(dec("100")), None)
        .await;
    let b = env
        .shift(user, unknown, start, Some(dec("100")), None)
        .await;
    let c = env
        .shift(user, yekaterinburg, start, Some(dec("100")), None)
        .await;

    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-10T20:00:00Z"))
        .await
        .expect("run");
    assert_eq!(
        report.closed_count, 3,
        "the unknown timezone must not fail its row: {:?}",
        report.errors
    );
    // 18:00 in Novosibirsk (UTC+7) and in Yekaterinburg (UTC+5).
    assert_eq!(
        shift_row(&env, a).await.end_time,
        Some(utc("2026-03-10T11:00:00Z"))
    );
    assert_eq!(
        shift_row(&env, b).await.end_time,
        Some(utc("2026-03-10T11:00:00Z"))
    );
    assert_eq!(
        shift_row(&env, c).await.end_time,
        Some(utc("2026-03-10T13:00:00Z"))
    );
}

#[tokio::test]
async fn planned_confirmed_and_null_auto_closed_schedules_are_closed() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let slot = env
        .slot(object, date("2026-03-10"), hm(9, 0), hm(13, 0), true)
        .await;
    let start = utc("2026-03-10T06:00:00Z");
    let end = utc("2026-03-10T14:00:00Z");
    let planned = env
        .schedule(ScheduleSpec::new(user, object, start, end))
        .await;
    let confirmed = env
        .schedule(ScheduleSpec {
            status: Some("confirmed"),
            ..ScheduleSpec::new(user, object, start, end)
        })
        .await;
    let null_flag = env
        .schedule(ScheduleSpec {
            auto_closed: None,
            ..ScheduleSpec::new(user, object, start, end)
        })
        .await;
    let with_slot = env
        .schedule(ScheduleSpec {
            slot: Some(slot),
            ..ScheduleSpec::new(user, object, start, end)
        })
        .await;
    let in_progress = env
        .schedule(ScheduleSpec {
            status: Some("in_progress"),
            ..ScheduleSpec::new(user, object, start, end)
        })
        .await;
    let already = env
        .schedule(ScheduleSpec {
            auto_closed: Some(true),
            ..ScheduleSpec::new(user, object, start, end)
        })
        .await;
    let future = env
        .schedule(ScheduleSpec::new(
            user,
            object,
            utc("2026-03-11T06:00:00Z"),
            utc("2026-03-11T14:00:00Z"),
        ))
        .await;

    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-10T16:00:00Z"))
        .await
        .expect("run");
    assert_eq!(report.closed_schedules, 4, "{report:?}");
    for id in [planned, confirmed, null_flag] {
        let row = schedule_row(&env, id).await;
        assert_eq!(row.status.as_deref(), Some("completed"));
        assert_eq!(row.auto_closed, Some(true));
        assert_eq!(
            row.planned_end,
            utc("2026-03-10T15:00:00Z"),
            "object closing time"
        );
    }
    assert_eq!(
        schedule_row(&env, with_slot).await.planned_end,
        utc("2026-03-10T10:00:00Z")
    );
    assert_eq!(
        schedule_row(&env, in_progress).await.status.as_deref(),
        Some("in_progress")
    );
    assert_eq!(schedule_row(&env, already).await.planned_end, end);
    assert_eq!(
        schedule_row(&env, future).await.status.as_deref(),
        Some("planned")
    );
}

#[tokio::test]
async fn one_bad_row_does_not_hold_back_the_rest() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            env.shift(
                user,
                object,
                utc("2026-03-10T06:00:00Z"),
                Some(dec("100")),
                None,
            )
            .await,
        );
    }
    let bad = ids[2];
    // A trigger that refuses one row stands in for whatever production data does that.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
           IF NEW.id = {bad} THEN RAISE EXCEPTION 'refused row %', NEW.id; END IF; RETURN NEW; \
         END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse BEFORE UPDATE ON shifts FOR EACH ROW EXECUTE FUNCTION refuse();"
    )))
    .execute(&env.pool)
    .await
    .expect("trigger");

    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-10T16:00:00Z"))
        .await
        .expect("run");
    assert_eq!(report.closed_count, 4);
    assert!(!report.success);
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].starts_with(&format!("shift {bad}:")),
        "{:?}",
        report.errors
    );
    assert_eq!(shift_row(&env, bad).await.status.as_deref(), Some("active"));
}

#[tokio::test]
async fn payment_overflow_is_flagged_not_crashed() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let huge = env
        .shift(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("99999999.99")),
            None,
        )
        .await;
    let fine = env
        .shift(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("100")),
            None,
        )
        .await;
    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-10T16:00:00Z"))
        .await
        .expect("run");
    assert_eq!(report.closed_count, 2);
    assert!(!report.success);
    assert!(
        report.errors[0].contains(&format!("shift {huge}: closed without totals")),
        "{:?}",
        report.errors
    );
    let row = shift_row(&env, huge).await;
    assert_eq!(row.status.as_deref(), Some("completed"));
    assert_eq!((row.total_hours, row.total_payment), (None, None));
    assert_eq!(
        shift_row(&env, fine).await.total_payment,
        Some(dec("900.00"))
    );
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let shift = env
        .shift(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("100")),
            None,
        )
        .await;
    let schedule = env
        .schedule(ScheduleSpec::new(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            utc("2026-03-10T14:00:00Z"),
        ))
        .await;
    let now = utc("2026-03-10T16:00:00Z");
    let first = auto_close_shifts_at(&env.ctx, now).await.expect("run");
    assert_eq!((first.closed_count, first.closed_schedules), (1, 1));
    let (shift_before, schedule_before) = (
        shift_row(&env, shift).await,
        schedule_row(&env, schedule).await,
    );
    env.set(&format!("shift:{shift}")).await;
    env.set("calendar_shifts:x").await;

    let second = auto_close_shifts_at(&env.ctx, now)
        .await
        .expect("run again");
    assert_eq!((second.closed_count, second.closed_schedules), (0, 0));
    assert!(second.success);
    assert_eq!(
        shift_row(&env, shift).await,
        shift_before,
        "updated_at untouched too"
    );
    assert_eq!(schedule_row(&env, schedule).await, schedule_before);
    assert!(
        env.exists(&format!("shift:{shift}")).await,
        "nothing closed, nothing invalidated"
    );
    assert!(env.exists("calendar_shifts:x").await);
}

#[tokio::test]
async fn concurrent_runs_close_each_row_once() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    let mut users = Vec::new();
    for _ in 0..10 {
        users.push(env.user().await.0);
    }
    for i in 0..300 {
        env.shift(
            users[i % 10],
            object,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("100")),
            None,
        )
        .await;
    }
    for i in 0..50 {
        env.schedule(ScheduleSpec::new(
            users[i % 10],
            object,
            utc("2026-03-10T06:00:00Z"),
            utc("2026-03-10T14:00:00Z"),
        ))
        .await;
    }
    let mut pubsub = env.subscribe().await;
    let now = utc("2026-03-10T16:00:00Z");
    let (a, b) = tokio::join!(
        auto_close_shifts_at(&env.ctx, now),
        auto_close_shifts_at(&env.ctx, now)
    );
    let (a, b) = (a.expect("run a"), b.expect("run b"));
    assert_eq!(a.closed_count + b.closed_count, 300);
    assert_eq!(a.closed_schedules + b.closed_schedules, 50);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM shifts WHERE status <> 'completed'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(open, 0);
    let received = events(&mut pubsub, 400, Duration::from_secs(3)).await;
    assert_eq!(received.len(), 350, "one event per closed row, none twice");
}

#[tokio::test]
async fn invalidates_cache_and_publishes_events() {
    let env = TestEnv::new().await;
    let (user, _) = env.user().await;
    let (other_user, _) = env.user().await;
    let object = env.object(ObjectSpec::default()).await;
    let due = env
        .shift(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            Some(dec("100")),
            None,
        )
        .await;
    let open = env
        .shift(
            other_user,
            object,
            utc("2026-03-10T15:30:00Z"),
            Some(dec("100")),
            None,
        )
        .await;
    let schedule = env
        .schedule(ScheduleSpec::new(
            user,
            object,
            utc("2026-03-10T06:00:00Z"),
            utc("2026-03-10T14:00:00Z"),
        ))
        .await;
    let keep = [
        format!("shift:{open}"),
        format!("active_shifts:{other_user}"),
        "user:1".to_owned(),
    ];
    let gone = [
        format!("shift:{due}"),
        format!("active_shifts:{user}"),
        "calendar_shifts:2026-03:1".to_owned(),
        "api_response:0123abcd".to_owned(),
    ];
    for key in keep.iter().chain(gone.iter()) {
        env.set(key).await;
    }
    let mut pubsub = env.subscribe().await;

    let report = auto_close_shifts_at(&env.ctx, utc("2026-03-10T16:00:00Z"))
        .await
        .expect("run");
    assert_eq!((report.closed_count, report.closed_schedules), (1, 1));
    for key in &gone {
        assert!(!env.exists(key).await, "{key} should be invalidated");
    }
    for key in &keep {
        assert!(env.exists(key).await, "{key} should stay");
    }
    let received = events(&mut pubsub, 2, Duration::from_secs(3)).await;
    assert_eq!(
        received,
        vec![
            serde_json::json!({"type": "shift_closed", "shift_id": due, "user_id": user,
                               "object_id": object, "at": "2026-03-10T16:00:00Z"}),
            serde_json::json!({"type": "schedule_closed", "schedule_id": schedule, "user_id": user,
                               "object_id": object, "at": "2026-03-10T16:00:00Z"}),
        ]
    );
}
