//! The planned-schedule half of auto-close-shifts.
//!
//! Both `planned` (what new rows get) and `confirmed` (legacy) count, and `auto_closed IS NOT
//! TRUE` includes NULL: the Python job filtered on `confirmed` and `auto_closed = false`, so it
//! never closed anything.

use chrono::{DateTime, Duration, NaiveTime, Utc};

use super::{Closed, PAGE, Pass};
use crate::Context;
use crate::error::sqlx_is_transient;
use crate::local_time::{next_local_time_after, object_timezone};

#[derive(sqlx::FromRow)]
struct OpenSchedule {
    id: i32,
    object_id: i32,
    planned_start: DateTime<Utc>,
    slot_end: Option<NaiveTime>,
    closing_time: Option<NaiveTime>,
    auto_close_minutes: Option<i32>,
    timezone: Option<String>,
}

/// Minutes after the start when neither a slot nor the object gives an end.
const DEFAULT_AUTO_CLOSE_MINUTES: i32 = 60;

pub(super) async fn close_due(ctx: &Context, now: DateTime<Utc>, pass: &mut Pass) {
    let mut after = super::start();
    loop {
        ctx.count_statement();
        // Keyed on (planned_start, id) along the `(status, planned_start)` index: see the
        // shifts' pass.
        let page: Vec<OpenSchedule> = match sqlx::query_as(
            "SELECT ss.id, ss.object_id, ss.planned_start, ts.end_time AS slot_end, \
                    o.closing_time, o.auto_close_minutes, o.timezone \
             FROM shift_schedules ss \
             LEFT JOIN objects o ON o.id = ss.object_id \
             LEFT JOIN time_slots ts ON ts.id = ss.time_slot_id \
             WHERE ss.status IN ('planned', 'confirmed') AND ss.auto_closed IS NOT TRUE \
               AND ss.planned_start < $1 \
               AND ss.planned_start >= $2 AND (ss.planned_start, ss.id) > ($2, $3) \
             ORDER BY ss.planned_start, ss.id LIMIT $4",
        )
        .bind(now)
        .bind(after.0)
        .bind(after.1)
        .bind(PAGE)
        .fetch_all(ctx.db())
        .await
        {
            Ok(page) => page,
            Err(e) => return pass.fail("selecting planned schedules".to_owned(), e),
        };
        let Some(last) = page.last() else { return };
        after = (last.planned_start, last.id);

        let batch: Vec<(i32, DateTime<Utc>)> = page
            .iter()
            .filter_map(|s| {
                let end = end_of(ctx, s);
                if end.is_none() {
                    pass.errors
                        .push(format!("schedule {}: no end after its start", s.id));
                }
                end.filter(|end| now >= *end).map(|end| (s.id, end))
            })
            .collect();
        write(ctx, &batch, pass).await;
        pass.page_done(ctx, now).await;
        if pass.transient.is_some() || (page.len() as i64) < PAGE {
            return;
        }
    }
}

/// The slot's end, else the object's closing time (first after the start, local), else
/// `planned_start + auto_close_minutes`.
fn end_of(ctx: &Context, s: &OpenSchedule) -> Option<DateTime<Utc>> {
    match s.slot_end.or(s.closing_time) {
        Some(local_end) => {
            let tz = object_timezone(s.timezone.as_deref(), ctx.default_timezone(), s.object_id);
            next_local_time_after(s.planned_start, local_end, tz)
        }
        None => {
            let minutes = s
                .auto_close_minutes
                .unwrap_or(DEFAULT_AUTO_CLOSE_MINUTES)
                .max(0);
            Some(s.planned_start + Duration::minutes(i64::from(minutes)))
        }
    }
}

async fn write(ctx: &Context, batch: &[(i32, DateTime<Utc>)], pass: &mut Pass) {
    let Some(first) = batch.first() else { return };
    match update(ctx, batch).await {
        Ok(closed) => pass.closed.extend(closed),
        Err(e) if batch.len() == 1 || sqlx_is_transient(&e) => {
            pass.fail(format!("schedule {}", first.0), e)
        }
        Err(_) => {
            for row in batch {
                match update(ctx, std::slice::from_ref(row)).await {
                    Ok(closed) => pass.closed.extend(closed),
                    Err(e) => pass.fail(format!("schedule {}", row.0), e),
                }
                if pass.transient.is_some() {
                    return;
                }
            }
        }
    }
}

async fn update(ctx: &Context, batch: &[(i32, DateTime<Utc>)]) -> Result<Vec<Closed>, sqlx::Error> {
    let ids: Vec<i32> = batch.iter().map(|(id, _)| *id).collect();
    let ends: Vec<DateTime<Utc>> = batch.iter().map(|(_, end)| *end).collect();
    // See `shifts::update` for why the statement is unnamed.
    sqlx::query_as(
        "UPDATE shift_schedules AS ss \
         SET status = 'completed', planned_end = v.planned_end, auto_closed = true, \
             updated_at = now() \
         FROM UNNEST($1::int4[], $2::timestamptz[]) AS v(id, planned_end) \
         WHERE ss.id = v.id \
           AND ss.status IN ('planned', 'confirmed') \
           AND ss.auto_closed IS NOT TRUE \
         RETURNING ss.id, ss.user_id, ss.object_id",
    )
    .bind(ids)
    .bind(ends)
    .persistent(false)
    .fetch_all(ctx.counted())
    .await
}
