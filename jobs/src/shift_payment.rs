//! `calculate_shift_payment(shift_id)` (`core.celery.tasks.shift_tasks.calculate_shift_payment`):
//! recompute a closed shift's hours and pay and store them.
//!
//! Same arithmetic as auto-close ([`crate::payroll`]). A shift whose hours do not fit
//! NUMERIC(5,2) (open more than ~41 days) is refused with a `ValueError` and left untouched
//! rather than stored with a capped, wrong figure.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::payroll::payroll;
use crate::{Context, JobError};

/// Arguments, by their Python names.
#[derive(Debug, Clone, Deserialize)]
pub struct CalculateShiftPaymentArgs {
    /// `shifts.id`.
    pub shift_id: i32,
}

impl CalculateShiftPaymentArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &["shift_id"];
}

/// `{total_hours, total_payment}` (decimals as strings, e.g. `"8.50"`: exact, and what
/// Python's `Decimal(...)` reads back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShiftPaymentReport {
    /// The shift.
    pub shift_id: i32,
    /// Hours, rounded half-up to 0.01.
    pub total_hours: Decimal,
    /// Pay, rounded half-up to 0.01; null when the shift has no rate.
    pub total_payment: Option<Decimal>,
}

#[derive(sqlx::FromRow)]
struct ShiftTimes {
    start_time: DateTime<Utc>,
    end_time: Option<DateTime<Utc>>,
    hourly_rate: Option<Decimal>,
}

/// Computes and stores the shift's totals (the row is only written when they change).
pub async fn calculate_shift_payment(
    ctx: &Context,
    shift_id: i32,
) -> Result<ShiftPaymentReport, JobError> {
    let shift: ShiftTimes =
        sqlx::query_as("SELECT start_time, end_time, hourly_rate FROM shifts WHERE id = $1")
            .bind(shift_id)
            .fetch_optional(ctx.counted())
            .await?
            .ok_or(JobError::NotFound {
                entity: "shift",
                id: shift_id.into(),
            })?;
    let Some(end) = shift.end_time else {
        return Err(JobError::invalid(format!(
            "shift {shift_id} is not closed (no end_time)"
        )));
    };
    let pay = payroll(shift.start_time, end, shift.hourly_rate)
        .map_err(|e| JobError::invalid(format!("shift {shift_id}: {e}")))?;
    sqlx::query(
        "UPDATE shifts SET total_hours = $2, total_payment = $3, updated_at = now() \
         WHERE id = $1 \
           AND (total_hours IS DISTINCT FROM $2 OR total_payment IS DISTINCT FROM $3)",
    )
    .bind(shift_id)
    .bind(pay.total_hours)
    .bind(pay.total_payment)
    .execute(ctx.counted())
    .await?;
    Ok(ShiftPaymentReport {
        shift_id,
        total_hours: pay.total_hours,
        total_payment: pay.total_payment,
    })
}
