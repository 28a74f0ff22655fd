//! auto-close-shifts (`core.celery.tasks.shift_tasks.auto_close_shifts`, every 30 min): close
//! what was left open, with the money right.
//!
//! - Real shifts (`status = 'active'`, started before now) end at the first closing instant
//!   strictly after their start in the object's timezone (the time slot's end when the shift has
//!   one); once that has passed they become `completed` with `total_hours` and `total_payment`
//!   in exact decimals (see [`crate::payroll`]).
//! - Planned schedules (`planned` or `confirmed`, `auto_closed IS NOT TRUE`, started before now)
//!   end at their slot's end, else the object's closing time, else `planned_start +
//!   auto_close_minutes`; once passed they become `completed`, `auto_closed = true`.
//!
//! The rows are read in pages of [`PAGE`] by id and each page is written by one set-based UPDATE
//! over `UNNEST`ed arrays (bounded by the page's id range, so PostgreSQL fetches the page's rows
//! by primary key instead of hashing the whole table), guarded by the selected state (`AND status = 'active'` ...) so a shift
//! the bot closes at the same moment is left alone and counted by whoever closed it. Each UPDATE
//! is its own transaction; if one fails for a reason a retry will not fix, its page is redone
//! one row per statement, so one bad row cannot hold back the rest. Values that would overflow
//! a NUMERIC column are caught before PostgreSQL: such a shift is closed without totals and
//! reported in `errors` for payroll to look at.
//!
//! Timezones and DST: see [`crate::local_time`]. Afterwards the cache keys the web app reads are
//! invalidated and one `shift_closed` / `schedule_closed` event per row is published.

mod schedules;
mod shifts;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cache::Invalidation;
use crate::events::{self, EventType, ShiftEvent};
use crate::{Context, JobError};

/// Rows read and written per statement.
pub const PAGE: i64 = 1000;

/// No arguments.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AutoCloseShiftsArgs {}

impl AutoCloseShiftsArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &[];
}

/// `{success, closed_count, closed_schedules, errors}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AutoCloseReport {
    /// No row needed attention (`errors` is empty).
    pub success: bool,
    /// Real shifts closed by this run.
    pub closed_count: usize,
    /// Planned schedules closed by this run.
    pub closed_schedules: usize,
    /// `shift {id}: ...` / `schedule {id}: ...` per row that failed or was flagged, and cache or
    /// event failures.
    pub errors: Vec<String>,
}

/// A row this run closed.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(crate) struct Closed {
    id: i32,
    user_id: i32,
    object_id: i32,
}

/// What one pass (shifts or schedules) did.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    closed: Vec<Closed>,
    errors: Vec<String>,
    /// Set when the database went away: the pass stopped there.
    transient: Option<JobError>,
}

/// Runs auto-close-shifts now.
pub async fn auto_close_shifts(ctx: &Context) -> Result<AutoCloseReport, JobError> {
    auto_close_shifts_at(ctx, Utc::now()).await
}

/// Runs auto-close-shifts as if it were `now`.
pub async fn auto_close_shifts_at(
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<AutoCloseReport, JobError> {
    let mut shift_pass = Pass::default();
    shifts::close_due(ctx, now, &mut shift_pass).await;
    let mut schedule_pass = Pass::default();
    if shift_pass.transient.is_none() {
        schedules::close_due(ctx, now, &mut schedule_pass).await;
    }

    let mut errors = shift_pass.errors;
    errors.extend(schedule_pass.errors);

    let mut invalidation = Invalidation::new();
    for shift in &shift_pass.closed {
        invalidation
            .key(format!("shift:{}", shift.id))
            .key(format!("active_shifts:{}", shift.user_id));
    }
    if !shift_pass.closed.is_empty() || !schedule_pass.closed.is_empty() {
        invalidation
            .pattern("calendar_shifts:*")
            .pattern("api_response:*");
    }
    if !invalidation.is_empty()
        && let Err(e) = invalidation.run(ctx).await
    {
        errors.push(format!("cache invalidation: {e}"));
    }

    let shift_events = shift_pass
        .closed
        .iter()
        .map(|s| ShiftEvent::shift_closed(s.id, s.user_id, s.object_id, now));
    let schedule_events = schedule_pass.closed.iter().map(|s| {
        ShiftEvent::schedule(EventType::ScheduleClosed, s.id, s.user_id, s.object_id, now)
    });
    let all: Vec<ShiftEvent> = shift_events.chain(schedule_events).collect();
    if let Err(e) = events::publish(ctx, &all).await {
        errors.push(format!("publishing shifts:updates events: {e}"));
    }

    tracing::info!(
        closed_shifts = shift_pass.closed.len(),
        closed_schedules = schedule_pass.closed.len(),
        errors = errors.len(),
        "auto-close-shifts done"
    );
    if let Some(e) = shift_pass.transient.or(schedule_pass.transient) {
        // What was closed stays closed (and was invalidated above); the retry does the rest.
        return Err(e);
    }
    Ok(AutoCloseReport {
        success: errors.is_empty(),
        closed_count: shift_pass.closed.len(),
        closed_schedules: schedule_pass.closed.len(),
        errors,
    })
}

impl Pass {
    /// Records a failed statement: transient ones stop the pass, others are row errors.
    fn fail(&mut self, what: String, e: sqlx::Error) {
        let e = JobError::from(e);
        if e.is_transient() {
            self.transient = Some(e);
        } else {
            self.errors.push(format!("{what}: {e}"));
        }
    }
}
