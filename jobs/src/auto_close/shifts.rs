//! The real-shift half of auto-close-shifts.

use chrono::{DateTime, NaiveTime, Utc};
use rust_decimal::Decimal;

use super::{Closed, PAGE, Pass, RowErrors};
use crate::Context;
use crate::error::sqlx_is_transient;
use crate::local_time::{next_local_time_after, object_timezone};
use crate::payroll::{PayrollError, payroll};

#[derive(sqlx::FromRow)]
struct OpenShift {
    id: i32,
    object_id: i32,
    start_time: DateTime<Utc>,
    hourly_rate: Option<Decimal>,
    closing_time: NaiveTime,
    timezone: Option<String>,
    slot_end: Option<NaiveTime>,
}

/// The values one shift is closed with.
struct Closing {
    id: i32,
    end: DateTime<Utc>,
    total_hours: Option<Decimal>,
    total_payment: Option<Decimal>,
}

pub(super) async fn close_due(ctx: &Context, now: DateTime<Utc>, pass: &mut Pass) {
    let mut after = super::start();
    loop {
        ctx.count_statement();
        // Pages follow the `(status, start_time)` index, keyed on (start_time, id): each page
        // reads about PAGE index entries whatever the table's statistics say. Paging by id
        // instead let PostgreSQL, with statistics older than a bulk load, fetch and sort every
        // active shift for every page (quadratic: a million shifts took over 20 minutes).
        let page: Vec<OpenShift> = match sqlx::query_as(
            "SELECT s.id, s.object_id, s.start_time, s.hourly_rate, \
                    o.closing_time, o.timezone, ts.end_time AS slot_end \
             FROM shifts s \
             JOIN objects o ON o.id = s.object_id \
             LEFT JOIN time_slots ts ON ts.id = s.time_slot_id \
             WHERE s.status = 'active' AND s.start_time < $1 \
               AND s.start_time >= $2 AND (s.start_time, s.id) > ($2, $3) \
             ORDER BY s.start_time, s.id LIMIT $4",
        )
        .bind(now)
        .bind(after.0)
        .bind(after.1)
        .bind(PAGE)
        .fetch_all(ctx.db())
        .await
        {
            Ok(page) => page,
            Err(e) => return pass.fail("selecting active shifts".to_owned(), e),
        };
        let Some(last) = page.last() else { return };
        after = (last.start_time, last.id);

        let batch: Vec<Closing> = page
            .iter()
            .filter_map(|shift| closing(ctx, shift, now, &mut pass.errors))
            .collect();
        write(ctx, &batch, pass).await;
        pass.page_done(ctx, now).await;
        if pass.transient.is_some() || (page.len() as i64) < PAGE {
            return;
        }
    }
}

/// When and how `shift` closes, if it is due; `None` when not yet due.
fn closing(
    ctx: &Context,
    shift: &OpenShift,
    now: DateTime<Utc>,
    errors: &mut RowErrors,
) -> Option<Closing> {
    let tz = object_timezone(
        shift.timezone.as_deref(),
        ctx.default_timezone(),
        shift.object_id,
    );
    // The time slot, when the shift has one, is the stricter bound than the object's hours.
    let local_end = shift.slot_end.unwrap_or(shift.closing_time);
    let Some(end) = next_local_time_after(shift.start_time, local_end, tz) else {
        errors.push(format!(
            "shift {}: no {local_end} in {tz} after its start",
            shift.id
        ));
        return None;
    };
    if now < end {
        return None;
    }
    match payroll(shift.start_time, end, shift.hourly_rate) {
        Ok(p) => Some(Closing {
            id: shift.id,
            end,
            total_hours: Some(p.total_hours),
            total_payment: p.total_payment,
        }),
        Err(e @ (PayrollError::HoursOverflow(_) | PayrollError::PaymentOverflow(_))) => {
            // Flag, don't crash: close it (it is over) but leave the totals to a human.
            errors.push(format!("shift {}: closed without totals: {e}", shift.id));
            Some(Closing {
                id: shift.id,
                end,
                total_hours: None,
                total_payment: None,
            })
        }
        Err(e) => {
            errors.push(format!("shift {}: {e}", shift.id));
            None
        }
    }
}

/// One UPDATE for the batch; if it fails for a reason a retry would not fix, one per row.
async fn write(ctx: &Context, batch: &[Closing], pass: &mut Pass) {
    let Some(first) = batch.first() else { return };
    match update(ctx, batch).await {
        Ok(closed) => pass.closed.extend(closed),
        Err(e) if batch.len() == 1 || sqlx_is_transient(&e) => {
            pass.fail(format!("shift {}", first.id), e)
        }
        Err(_) => {
            for row in batch {
                match update(ctx, std::slice::from_ref(row)).await {
                    Ok(closed) => pass.closed.extend(closed),
                    Err(e) => pass.fail(format!("shift {}", row.id), e),
                }
                if pass.transient.is_some() {
                    return;
                }
            }
        }
    }
}

async fn update(ctx: &Context, batch: &[Closing]) -> Result<Vec<Closed>, sqlx::Error> {
    let ids: Vec<i32> = batch.iter().map(|c| c.id).collect();
    // Each id is found through the primary key. The statement is not kept prepared: a generic
    // plan cannot see how many rows the arrays hold.
    let ends: Vec<DateTime<Utc>> = batch.iter().map(|c| c.end).collect();
    let hours: Vec<Option<Decimal>> = batch.iter().map(|c| c.total_hours).collect();
    let payments: Vec<Option<Decimal>> = batch.iter().map(|c| c.total_payment).collect();
    sqlx::query_as(
        "UPDATE shifts AS s \
         SET end_time = v.end_time, status = 'completed', total_hours = v.total_hours, \
             total_payment = v.total_payment, updated_at = now() \
         FROM UNNEST($1::int4[], $2::timestamptz[], $3::numeric[], $4::numeric[]) \
              AS v(id, end_time, total_hours, total_payment) \
         WHERE s.id = v.id AND s.status = 'active' \
         RETURNING s.id, s.user_id, s.object_id",
    )
    .bind(ids)
    .bind(ends)
    .bind(hours)
    .bind(payments)
    .persistent(false)
    .fetch_all(ctx.counted())
    .await
}
