//! `calculate_monthly_metrics(year?, month?)`
//! (`core.celery.tasks.analytics_tasks.calculate_monthly_metrics`): one month's shift figures,
//! stored for the web app in `analytics:monthly_metrics_{y}_{m}` for 30 days.
//!
//! The month is a calendar month in `DEFAULT_TIMEZONE` (the current one when not given); shifts
//! count by `start_time`, schedules by `planned_start`. Hours and money are exact decimals,
//! serialized as strings.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::local_time::local_instants;
use crate::payroll::round_cents;
use crate::{Context, JobError};

/// How long the cached metrics live: 30 days.
pub const CACHE_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// Arguments, by their Python names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CalculateMonthlyMetricsArgs {
    /// Defaults to the current year.
    #[serde(default)]
    pub year: Option<i32>,
    /// 1..=12; defaults to the current month.
    #[serde(default)]
    pub month: Option<u32>,
}

impl CalculateMonthlyMetricsArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &["year", "month"];
}

/// The metrics, as returned and as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthlyMetrics {
    /// The year.
    pub year: i32,
    /// The month, 1..=12.
    pub month: u32,
    /// The timezone the month is counted in.
    pub timezone: String,
    /// First instant of the month.
    pub period_start: DateTime<Utc>,
    /// First instant of the next month.
    pub period_end: DateTime<Utc>,
    /// Shifts started in the month.
    pub total_shifts: i64,
    /// ... of them completed.
    pub completed_shifts: i64,
    /// ... still active.
    pub active_shifts: i64,
    /// ... cancelled.
    pub cancelled_shifts: i64,
    /// Hours of the completed shifts.
    pub total_hours: Decimal,
    /// Pay of the completed shifts.
    pub total_payment: Decimal,
    /// `total_hours / completed_shifts`, rounded half-up to 0.01.
    pub average_shift_hours: Decimal,
    /// Distinct employees with a shift.
    pub unique_employees: i64,
    /// Distinct objects with a shift.
    pub objects_with_shifts: i64,
    /// Schedules planned to start in the month.
    pub planned_schedules: i64,
    /// ... completed (auto-closed included).
    pub completed_schedules: i64,
    /// ... cancelled.
    pub cancelled_schedules: i64,
    /// ... closed by auto-close-shifts.
    pub auto_closed_schedules: i64,
    /// When this was computed.
    pub calculated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    total_shifts: i64,
    completed_shifts: i64,
    active_shifts: i64,
    cancelled_shifts: i64,
    total_hours: Decimal,
    total_payment: Decimal,
    unique_employees: i64,
    objects_with_shifts: i64,
    planned_schedules: i64,
    completed_schedules: i64,
    cancelled_schedules: i64,
    auto_closed_schedules: i64,
}

/// The cache key of a month's metrics (without the context's prefix).
pub fn cache_key(year: i32, month: u32) -> String {
    format!("analytics:monthly_metrics_{year}_{month}")
}

/// Computes the month's metrics and caches them.
pub async fn calculate_monthly_metrics(
    ctx: &Context,
    year: Option<i32>,
    month: Option<u32>,
) -> Result<MonthlyMetrics, JobError> {
    let tz = ctx.default_timezone();
    let today = Utc::now().with_timezone(&tz);
    let year = year.unwrap_or(today.year());
    let month = month.unwrap_or(today.month());
    if !(1..=12).contains(&month) {
        return Err(JobError::invalid(format!(
            "month must be 1..12, got {month}"
        )));
    }
    let first = NaiveDate::from_ymd_opt(year, month, 1)
        .filter(|_| (1..=9998).contains(&year))
        .ok_or_else(|| JobError::invalid(format!("year {year} is out of range")))?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .ok_or_else(|| JobError::invalid(format!("year {year} is out of range")))?;
    let start_of = |date: NaiveDate| {
        local_instants(tz, date.and_time(chrono::NaiveTime::MIN))
            .into_iter()
            .next()
            .ok_or_else(|| JobError::invalid(format!("{date} has no midnight in {tz}")))
    };
    let (period_start, period_end) = (start_of(first)?, start_of(next)?);

    let row: Row = sqlx::query_as(
        "SELECT s.*, ss.* FROM ( \
             SELECT count(*) AS total_shifts, \
                    count(*) FILTER (WHERE status = 'completed') AS completed_shifts, \
                    count(*) FILTER (WHERE status = 'active') AS active_shifts, \
                    count(*) FILTER (WHERE status = 'cancelled') AS cancelled_shifts, \
                    COALESCE(sum(total_hours) FILTER (WHERE status = 'completed'), 0)::numeric \
                        AS total_hours, \
                    COALESCE(sum(total_payment) FILTER (WHERE status = 'completed'), 0)::numeric \
                        AS total_payment, \
                    count(DISTINCT user_id) AS unique_employees, \
                    count(DISTINCT object_id) AS objects_with_shifts \
             FROM shifts WHERE start_time >= $1 AND start_time < $2 \
         ) s, ( \
             SELECT count(*) AS planned_schedules, \
                    count(*) FILTER (WHERE status = 'completed') AS completed_schedules, \
                    count(*) FILTER (WHERE status = 'cancelled') AS cancelled_schedules, \
                    count(*) FILTER (WHERE auto_closed IS TRUE) AS auto_closed_schedules \
             FROM shift_schedules WHERE planned_start >= $1 AND planned_start < $2 \
         ) ss",
    )
    .bind(period_start)
    .bind(period_end)
    .fetch_one(ctx.counted())
    .await?;

    let average_shift_hours = if row.completed_shifts == 0 {
        Decimal::ZERO
    } else {
        round_cents(row.total_hours / Decimal::from(row.completed_shifts))
    };
    let metrics = MonthlyMetrics {
        year,
        month,
        timezone: tz.name().to_owned(),
        period_start,
        period_end,
        total_shifts: row.total_shifts,
        completed_shifts: row.completed_shifts,
        active_shifts: row.active_shifts,
        cancelled_shifts: row.cancelled_shifts,
        total_hours: row.total_hours,
        total_payment: row.total_payment,
        average_shift_hours,
        unique_employees: row.unique_employees,
        objects_with_shifts: row.objects_with_shifts,
        planned_schedules: row.planned_schedules,
        completed_schedules: row.completed_schedules,
        cancelled_schedules: row.cancelled_schedules,
        auto_closed_schedules: row.auto_closed_schedules,
        calculated_at: Utc::now(),
    };
    let json = serde_json::to_string(&metrics)
        .map_err(|e| JobError::invalid(format!("metrics JSON: {e}")))?;
    let mut conn = ctx.redis();
    redis::cmd("SET")
        .arg(ctx.redis_key(&cache_key(year, month)))
        .arg(json)
        .arg("EX")
        .arg(CACHE_TTL_SECONDS)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(metrics)
}
