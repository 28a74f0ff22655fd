//! plan-next-year-timeslots (`core.celery.tasks.shift_tasks.plan_next_year_timeslots`, Dec 1
//! 03:00): create next year's time slots for every active object from its weekly schedule.
//!
//! For year Y (current year + 1 in `DEFAULT_TIMEZONE`), every active object and every date d of Y:
//! d's weekday bit is set in `work_days_mask` (Monday = bit 0), and d's week is "on" in the
//! repeat cycle — the whole weeks from the Monday of Jan 1's week to the Monday of d's week are a
//! multiple of `schedule_repeat_weeks` (values < 1 mean 1). ISO week numbers are not used: they
//! wrap at New Year (Jan 1 2027 is in ISO week 53 of 2026), which broke 2-week cycles.
//!
//! Each page of [`OBJECTS_PER_STATEMENT`] objects (by id) plans its whole year in ONE
//! `INSERT ... SELECT` over `generate_series`, with the "no slot on that date yet, active or not"
//! check inside it: about five statements per 500 objects, where the Python job ran about 365
//! queries per object. Paging bounds the transaction (about 180,000 rows) and the time its locks
//! are held, whatever the number of objects; the worker's own memory is a few counters. Each
//! page's statement is serialised with concurrent runs by a transaction-scoped advisory lock
//! taken first; under READ COMMITTED its snapshot is taken after the lock is granted, so a second
//! run sees the first run's slots and inserts nothing twice.

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::cache::Invalidation;
use crate::{Context, JobError, db};

/// The advisory lock key of the planner ("STAFPLAN" in ASCII).
pub const ADVISORY_LOCK_KEY: i64 = 0x5354_4146_504C_414E;

/// Objects planned per statement (and transaction).
pub const OBJECTS_PER_STATEMENT: i64 = 500;

/// No arguments.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PlanNextYearTimeslotsArgs {}

impl PlanNextYearTimeslotsArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &[];
}

/// `{year, objects, created, skipped_existing}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanReport {
    /// The planned year.
    pub year: i32,
    /// Active objects considered.
    pub objects: i64,
    /// Slots inserted.
    pub created: i64,
    /// Working dates skipped because the object already had a slot that day.
    pub skipped_existing: i64,
}

#[derive(sqlx::FromRow)]
struct Counts {
    objects: i64,
    candidates: i64,
    created: i64,
}

/// Plans next year, now.
pub async fn plan_next_year_timeslots(ctx: &Context) -> Result<PlanReport, JobError> {
    plan_next_year_timeslots_at(ctx, Utc::now()).await
}

/// Plans the year after `now`'s year in `DEFAULT_TIMEZONE`.
pub async fn plan_next_year_timeslots_at(
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<PlanReport, JobError> {
    let year = now.with_timezone(&ctx.default_timezone()).year() + 1;
    plan_timeslots_for_year(ctx, year).await
}

/// Plans one page of objects: those active with `after < id <= bound`.
async fn plan_page(
    ctx: &Context,
    (after, bound): (i32, i32),
    first: NaiveDate,
    days_after_first: i32,
    cycle_start: NaiveDate,
) -> Result<Counts, JobError> {
    let mut tx = db::begin(ctx).await?;
    ctx.count_statement();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADVISORY_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    ctx.count_statement();
    let counts: Counts = sqlx::query_as(
        "WITH objs AS ( \
             SELECT id, opening_time, closing_time, hourly_rate, work_days_mask, \
                    GREATEST(schedule_repeat_weeks, 1) AS repeat_weeks \
             FROM objects WHERE is_active = true AND id > $4 AND id <= $5 \
         ), days AS ( \
             SELECT d, \
                    EXTRACT(ISODOW FROM d)::int - 1 AS weekday, \
                    ((d - (EXTRACT(ISODOW FROM d)::int - 1)) - $3::date) / 7 AS week_index \
             FROM (SELECT $1::date + i AS d FROM generate_series(0, $2::int) AS g(i)) AS dates \
         ), candidates AS ( \
             SELECT o.id AS object_id, days.d, o.opening_time, o.closing_time, o.hourly_rate \
             FROM objs o \
             JOIN days ON (o.work_days_mask >> days.weekday) & 1 = 1 \
                      AND days.week_index % o.repeat_weeks = 0 \
         ), inserted AS ( \
             INSERT INTO time_slots \
                 (object_id, slot_date, start_time, end_time, hourly_rate, is_additional, is_active) \
             SELECT c.object_id, c.d, c.opening_time, c.closing_time, c.hourly_rate, false, true \
             FROM candidates c \
             WHERE NOT EXISTS ( \
                 SELECT 1 FROM time_slots t WHERE t.object_id = c.object_id AND t.slot_date = c.d \
             ) \
             RETURNING 1 \
         ) \
         SELECT (SELECT count(*) FROM objs) AS objects, \
                (SELECT count(*) FROM candidates) AS candidates, \
                (SELECT count(*) FROM inserted) AS created",
    )
    .bind(first)
    .bind(days_after_first)
    .bind(cycle_start)
    .bind(after)
    .bind(bound)
    .fetch_one(&mut *tx)
    .await?;
    db::commit(ctx, tx).await?;
    Ok(counts)
}

/// Plans `year`.
pub async fn plan_timeslots_for_year(ctx: &Context, year: i32) -> Result<PlanReport, JobError> {
    let (first, last) = match (
        NaiveDate::from_ymd_opt(year, 1, 1),
        NaiveDate::from_ymd_opt(year, 12, 31),
    ) {
        (Some(first), Some(last)) if (1..=9998).contains(&year) => (first, last),
        _ => return Err(JobError::invalid(format!("year {year} is out of range"))),
    };
    let days_after_first =
        i32::try_from((last - first).num_days()).map_err(|_| JobError::invalid("year length"))?;
    let cycle_start = first
        .checked_sub_days(Days::new(u64::from(first.weekday().num_days_from_monday())))
        .ok_or_else(|| JobError::invalid(format!("year {year} is out of range")))?;

    let mut totals = Counts {
        objects: 0,
        candidates: 0,
        created: 0,
    };
    let mut after = 0i32;
    loop {
        ctx.count_statement();
        let bound: Option<i32> = sqlx::query_scalar(
            "SELECT max(id) FROM (SELECT id FROM objects WHERE is_active = true AND id > $1 \
             ORDER BY id LIMIT $2) AS page",
        )
        .bind(after)
        .bind(OBJECTS_PER_STATEMENT)
        .fetch_one(ctx.db())
        .await?;
        let Some(bound) = bound else { break };
        let page = plan_page(ctx, (after, bound), first, days_after_first, cycle_start).await?;
        totals.objects += page.objects;
        totals.candidates += page.candidates;
        totals.created += page.created;
        after = bound;
    }
    let counts = totals;

    let report = PlanReport {
        year,
        objects: counts.objects,
        created: counts.created,
        skipped_existing: counts.candidates - counts.created,
    };
    if report.created > 0 {
        let mut invalidation = Invalidation::new();
        invalidation
            .pattern("calendar_timeslots:*")
            .pattern("api_response:*");
        // The slots are committed; a stale calendar ages out within its 10-minute TTL.
        if let Err(e) = invalidation.run(ctx).await {
            tracing::warn!(error = %e, "plan-next-year-timeslots: cache invalidation failed");
        }
    }
    tracing::info!(?report, "plan-next-year-timeslots done");
    Ok(report)
}
