//! `status`: what `worker schedules` lists — next fire times in local time and UTC, and the last
//! run (from the scheduler's table in real PostgreSQL) with its result state read from Celery's
//! result key in real Redis.

mod harness;

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use harness::scheduler::*;
use harness::{redis, unique};
use worker::scheduler::{parse_schedules, status};

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("valid test time")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn lists_next_fire_times_and_last_run_with_result_state() {
    let prefix = format!("{}:", unique("status"));
    let text = r#"
[[schedule]]
name = "plan"
task = "core.celery.tasks.shift_tasks.plan_next_year_timeslots"
queue = "shifts"
cron = "0 3 1 12 *"
timezone = "Europe/Moscow"

[[schedule]]
name = "reminders"
task = "core.celery.tasks.notification_tasks.process_reminders"
queue = "notifications"
every = "30m"

[[schedule]]
name = "off"
task = "x"
queue = "q"
every = "1h"
enabled = false
"#;
    let (schedules, _) = parse_schedules(
        text,
        Path::new("status.toml"),
        Tz::Europe__Moscow,
        &HashMap::new(),
    )
    .expect("valid");

    let mut conn = redis().await;
    let postgres = scheduler_pool().await;
    seed_last_tick(&prefix, "plan", utc("2025-12-01T03:00:00+03:00")).await;
    seed_last_tick(&prefix, "reminders", utc("2026-11-25T09:30:00Z")).await;
    let plan_id = state(&prefix, "plan").await["task_id"].clone();
    let result_key = format!("celery-task-meta-{plan_id}");
    let _: () = redis::cmd("SET")
        .arg(&result_key)
        .arg(format!(
            r#"{{"status":"SUCCESS","result":null,"traceback":null,"children":[],"date_done":"2025-12-01T03:00:05+03:00","task_id":"{plan_id}"}}"#
        ))
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .expect("SET");

    let now = utc("2026-11-25T10:10:00Z");
    let listing = status(&schedules, &postgres, &mut conn, &prefix, now)
        .await
        .expect("status");

    let plan = &listing[0];
    assert_eq!(plan.cron.as_deref(), Some("0 3 1 12 *"));
    assert_eq!(plan.timezone, "Europe/Moscow");
    let next: Vec<String> = plan.next.iter().map(|f| f.local.to_rfc3339()).collect();
    assert_eq!(
        next,
        [
            "2026-12-01T03:00:00+03:00",
            "2027-12-01T03:00:00+03:00",
            "2028-12-01T03:00:00+03:00"
        ]
    );
    assert_eq!(plan.next[0].utc, utc("2026-12-01T00:00:00Z"));
    let last = plan.last_run.as_ref().expect("plan ran");
    assert_eq!(last.task_id, plan_id);
    assert_eq!(last.state, "SUCCESS");
    assert_eq!(last.tick.local.to_rfc3339(), "2025-12-01T03:00:00+03:00");

    let reminders = &listing[1];
    assert_eq!(reminders.every.as_deref(), Some("30m"));
    assert_eq!(reminders.next[0].utc, utc("2026-11-25T10:30:00Z"));
    assert_eq!(
        reminders.last_run.as_ref().expect("reminders ran").state,
        "PENDING",
        "no result key yet reads as PENDING, as in Celery"
    );

    let off = &listing[2];
    assert!(!off.enabled);
    assert!(off.next.is_empty());
    assert!(off.last_run.is_none());

    // Both renderings work: JSON for --json, text blocks for people.
    let json = serde_json::to_value(&listing).expect("serializable");
    assert_eq!(json[0]["last_run"]["state"], "SUCCESS");
    assert_eq!(json[0]["next"][0]["local"], "2026-12-01T03:00:00+03:00");
    let text = plan.to_string();
    assert!(
        text.contains("2026-12-01 03:00:00 +03:00  (2026-12-01 00:00:00 UTC)"),
        "{text}"
    );
    assert!(text.contains("SUCCESS"), "{text}");
    assert!(off.to_string().contains("last run  never"));

    let _: () = redis::cmd("DEL")
        .arg(&result_key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    clean_redis(&prefix).await;
}
