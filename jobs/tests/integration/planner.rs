//! plan-next-year-timeslots.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use jobs::planner::{plan_next_year_timeslots_at, plan_timeslots_for_year};

use crate::harness::{ObjectSpec, TestEnv, date, dec, hm, utc};

async fn slot_dates(env: &TestEnv, object_id: i32) -> BTreeSet<NaiveDate> {
    sqlx::query_scalar("SELECT slot_date FROM time_slots WHERE object_id = $1")
        .bind(object_id)
        .fetch_all(&env.pool)
        .await
        .expect("slot dates")
        .into_iter()
        .collect()
}

async fn slot_count(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM time_slots")
        .fetch_one(&env.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn two_week_cycle_is_counted_in_whole_weeks_across_new_year() {
    let env = TestEnv::new().await;
    let object = env
        .object(ObjectSpec {
            repeat_weeks: 2,
            ..Default::default()
        })
        .await;

    // Dec 1 2026, 03:00 Moscow: plans 2027. Jan 1 2027 is a Friday in ISO week 53 of 2026.
    let report = plan_next_year_timeslots_at(&env.ctx, utc("2026-12-01T00:00:00Z"))
        .await
        .expect("plan");
    assert_eq!(report.year, 2027);
    assert_eq!(report.objects, 1);

    let dates = slot_dates(&env, object).await;
    // Week 0 (Mon Dec 28 2026 ..) is on: Friday Jan 1 only belongs to 2027.
    assert!(dates.contains(&date("2027-01-01")));
    // Week 1 off, week 2 on.
    for d in [
        "2027-01-04",
        "2027-01-05",
        "2027-01-06",
        "2027-01-07",
        "2027-01-08",
    ] {
        assert!(!dates.contains(&date(d)), "{d} is in an off week");
    }
    for d in [
        "2027-01-11",
        "2027-01-12",
        "2027-01-13",
        "2027-01-14",
        "2027-01-15",
    ] {
        assert!(dates.contains(&date(d)), "{d} is in an on week");
    }
    // The last week of 2027 is week 52 from Dec 28 2026: on; the one before: off.
    assert!(dates.contains(&date("2027-12-27")) && dates.contains(&date("2027-12-31")));
    assert!(!dates.contains(&date("2027-12-20")));
    // 1 (Jan 1) + 25 full on-weeks x 5 + 5 (Dec 27-31).
    assert_eq!(dates.len(), 131);
    assert_eq!(report.created, 131);
    assert_eq!(report.skipped_existing, 0);

    let (start, end, rate, active): (
        chrono::NaiveTime,
        chrono::NaiveTime,
        rust_decimal::Decimal,
        bool,
    ) = sqlx::query_as(
        "SELECT start_time, end_time, hourly_rate, is_active FROM time_slots \
             WHERE object_id = $1 AND slot_date = '2027-01-11'",
    )
    .bind(object)
    .fetch_one(&env.pool)
    .await
    .expect("slot");
    assert_eq!(
        (start, end, rate, active),
        (hm(9, 0), hm(18, 0), dec("500.00"), true)
    );
}

#[tokio::test]
async fn repeat_weeks_below_one_means_every_week() {
    let env = TestEnv::new().await;
    let zero = env
        .object(ObjectSpec {
            repeat_weeks: 0,
            ..Default::default()
        })
        .await;
    let negative = env
        .object(ObjectSpec {
            repeat_weeks: -3,
            ..Default::default()
        })
        .await;
    let report = plan_timeslots_for_year(&env.ctx, 2027).await.expect("plan");
    // 2027: 52 weeks and a Friday -> 261 weekdays, for each object.
    assert_eq!(slot_dates(&env, zero).await.len(), 261);
    assert_eq!(slot_dates(&env, negative).await.len(), 261);
    assert_eq!(report.created, 522);
}

#[tokio::test]
async fn work_days_mask_monday_is_bit_zero() {
    let env = TestEnv::new().await;
    // Saturday (bit 5) and Sunday (bit 6).
    let weekend = env
        .object(ObjectSpec {
            work_days_mask: 0b110_0000,
            ..Default::default()
        })
        .await;
    // Monday only.
    let monday = env
        .object(ObjectSpec {
            work_days_mask: 1,
            ..Default::default()
        })
        .await;
    plan_timeslots_for_year(&env.ctx, 2027).await.expect("plan");
    let weekend_dates = slot_dates(&env, weekend).await;
    assert_eq!(weekend_dates.len(), 104);
    assert!(
        weekend_dates.contains(&date("2027-01-02")) && weekend_dates.contains(&date("2027-01-03"))
    );
    assert!(!weekend_dates.contains(&date("2027-01-01")));
    let monday_dates = slot_dates(&env, monday).await;
    assert_eq!(monday_dates.len(), 52);
    assert_eq!(monday_dates.first(), Some(&date("2027-01-04")));
}

#[tokio::test]
async fn existing_slots_active_or_not_are_kept_and_inactive_objects_skipped() {
    let env = TestEnv::new().await;
    let object = env.object(ObjectSpec::default()).await;
    let closed = env
        .object(ObjectSpec {
            active: false,
            ..Default::default()
        })
        .await;
    // An inactive slot, and a day with two slots (an additional one): neither gets another.
    env.slot(object, date("2027-01-01"), hm(10, 0), hm(12, 0), false)
        .await;
    env.slot(object, date("2027-01-04"), hm(9, 0), hm(13, 0), true)
        .await;
    env.slot(object, date("2027-01-04"), hm(14, 0), hm(18, 0), true)
        .await;

    let report = plan_timeslots_for_year(&env.ctx, 2027).await.expect("plan");
    assert_eq!(report.objects, 1);
    assert_eq!(report.created, 259);
    assert_eq!(report.skipped_existing, 2);
    assert!(slot_dates(&env, closed).await.is_empty());
    let jan4: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM time_slots WHERE object_id = $1 AND slot_date = '2027-01-04'",
    )
    .bind(object)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(jan4, 2);
}

#[tokio::test]
async fn year_is_next_year_in_the_default_timezone() {
    let env = TestEnv::new().await;
    // 22:00 UTC on Dec 31 is already Jan 1 2027 in Moscow.
    let report = plan_next_year_timeslots_at(&env.ctx, utc("2026-12-31T22:00:00Z"))
        .await
        .expect("plan");
    assert_eq!(report.year, 2028);
    assert_eq!(report.objects, 0);
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let env = TestEnv::new().await;
    env.object(ObjectSpec::default()).await;
    env.object(ObjectSpec {
        repeat_weeks: 3,
        ..Default::default()
    })
    .await;
    let first = plan_timeslots_for_year(&env.ctx, 2027).await.expect("plan");
    let rows_after_first: Vec<(i32, i32, NaiveDate, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, object_id, slot_date, updated_at FROM time_slots ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    let second = plan_timeslots_for_year(&env.ctx, 2027)
        .await
        .expect("plan again");
    assert!(first.created > 0);
    assert_eq!(second.created, 0);
    assert_eq!(second.skipped_existing, first.created);
    let rows_after_second: Vec<(i32, i32, NaiveDate, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, object_id, slot_date, updated_at FROM time_slots ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    assert_eq!(rows_after_first, rows_after_second);
}

#[tokio::test]
async fn concurrent_runs_insert_each_slot_once() {
    let env = TestEnv::new().await;
    for _ in 0..5 {
        env.object(ObjectSpec::default()).await;
    }
    let (a, b) = tokio::join!(
        plan_timeslots_for_year(&env.ctx, 2027),
        plan_timeslots_for_year(&env.ctx, 2027)
    );
    let (a, b) = (a.expect("run a"), b.expect("run b"));
    assert_eq!(a.created + b.created, 5 * 261);
    assert_eq!(
        a.created.min(b.created),
        0,
        "one run must find everything done"
    );
    assert_eq!(slot_count(&env).await, 5 * 261);
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM time_slots GROUP BY object_id, slot_date HAVING count(*) > 1) d",
    )
    .fetch_one(&env.pool)
    .await
    .expect("duplicates");
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn invalidates_calendar_timeslots_and_api_responses() {
    let env = TestEnv::new().await;
    env.object(ObjectSpec::default()).await;
    for key in [
        "calendar_timeslots:1:2027-01",
        "calendar_timeslots:2:2027-02",
        "api_response:abc",
        "user:1",
    ] {
        env.set(key).await;
    }
    let before = env.ctx.statements_executed();
    plan_timeslots_for_year(&env.ctx, 2027).await.expect("plan");
    // The page's bound, BEGIN, advisory lock, the INSERT ... SELECT, COMMIT; then the bound
    // query that finds no more objects.
    assert_eq!(env.ctx.statements_executed() - before, 6);
    assert!(!env.exists("calendar_timeslots:1:2027-01").await);
    assert!(!env.exists("calendar_timeslots:2:2027-02").await);
    assert!(!env.exists("api_response:abc").await);
    assert!(env.exists("user:1").await, "other families stay");
}

#[tokio::test]
async fn plans_every_object_page_by_page() {
    let env = TestEnv::new().await;
    let first = env.object(ObjectSpec::default()).await;
    // One full page and one more object, copies of the first.
    let copies = jobs::planner::OBJECTS_PER_STATEMENT;
    sqlx::query(
        "INSERT INTO objects (name, owner_id, opening_time, closing_time, hourly_rate, \
                              work_days_mask, schedule_repeat_weeks, is_active) \
         SELECT name || g, owner_id, opening_time, closing_time, hourly_rate, work_days_mask, \
                schedule_repeat_weeks, true FROM objects, generate_series(1, $2) g WHERE id = $1",
    )
    .bind(first)
    .bind(copies)
    .execute(&env.pool)
    .await
    .expect("copies");
    let before = env.ctx.statements_executed();
    let report = plan_timeslots_for_year(&env.ctx, 2027).await.expect("plan");
    assert_eq!(report.objects, copies + 1);
    // 2027 has 261 weekdays; Mon-Fri objects get one slot each.
    assert_eq!(report.created, (copies + 1) * 261);
    // Two pages of five statements, and the last bound query.
    assert_eq!(env.ctx.statements_executed() - before, 11);
    let again = plan_timeslots_for_year(&env.ctx, 2027)
        .await
        .expect("again");
    assert_eq!(again.created, 0);
    assert_eq!(again.skipped_existing, (copies + 1) * 261);
}
