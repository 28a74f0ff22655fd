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
//! Timezones and DST: see [`crate::local_time`]. After each page, the cache keys the web app
//! reads for that page's rows are invalidated and one `shift_closed` / `schedule_closed` event
//! per row is published; the pattern families once at the end. So a run keeps one page in memory
//! whatever the number of rows (a million active shifts: about 2,000 statements and a few MB),
//! and `errors` keeps at most [`MAX_REPORTED_ERRORS`] lines (then says how many more).

mod schedules;
mod shifts;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cache::Invalidation;
use crate::events::{self, EventType, ShiftEvent};
use crate::{Context, JobError};

/// Rows read and written per statement.
pub const PAGE: i64 = 1000;

/// Where paging starts: before any start time StaffProBot holds (year 1; PostgreSQL's own
/// minimum is 4713 BC, chrono's is further still and cannot be sent).
pub(crate) fn start() -> (DateTime<Utc>, i32) {
    (
        DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::UNIX_EPOCH),
        0,
    )
}

/// Row errors listed in a report; more are counted in one last line.
pub const MAX_REPORTED_ERRORS: usize = 100;

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

/// Row errors, at most [`MAX_REPORTED_ERRORS`] of them kept.
#[derive(Debug, Default)]
pub(crate) struct RowErrors {
    kept: Vec<String>,
    more: usize,
}

impl RowErrors {
    pub(crate) fn push(&mut self, error: String) {
        if self.kept.len() < MAX_REPORTED_ERRORS {
            self.kept.push(error);
        } else {
            self.more += 1;
        }
    }

    fn into_report(mut self) -> Vec<String> {
        if self.more > 0 {
            self.kept.push(format!("... and {} more rows", self.more));
        }
        self.kept
    }
}

/// Which rows a pass closes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Kind {
    #[default]
    Shifts,
    Schedules,
}

/// What one pass (shifts or schedules) did.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    kind: Kind,
    /// Closed in the current page and not announced yet (see [`Pass::page_done`]).
    closed: Vec<Closed>,
    /// Closed and announced.
    closed_total: usize,
    errors: RowErrors,
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
    shift_pass.page_done(ctx, now).await;
    let mut schedule_pass = Pass {
        kind: Kind::Schedules,
        ..Pass::default()
    };
    if shift_pass.transient.is_none() {
        schedules::close_due(ctx, now, &mut schedule_pass).await;
        schedule_pass.page_done(ctx, now).await;
    }

    let mut errors = shift_pass.errors;
    for e in schedule_pass.errors.into_report() {
        errors.push(e);
    }
    if shift_pass.closed_total > 0 || schedule_pass.closed_total > 0 {
        let mut invalidation = Invalidation::new();
        invalidation
            .pattern("calendar_shifts:*")
            .pattern("api_response:*");
        if let Err(e) = invalidation.run(ctx).await {
            errors.push(format!("cache invalidation: {e}"));
        }
    }
    let errors = errors.into_report();

    tracing::info!(
        closed_shifts = shift_pass.closed_total,
        closed_schedules = schedule_pass.closed_total,
        errors = errors.len(),
        "auto-close-shifts done"
    );
    if let Some(e) = shift_pass.transient.or(schedule_pass.transient) {
        // What was closed stays closed (and was announced page by page); the retry does the rest.
        return Err(e);
    }
    Ok(AutoCloseReport {
        success: errors.is_empty(),
        closed_count: shift_pass.closed_total,
        closed_schedules: schedule_pass.closed_total,
        errors,
    })
}

impl Pass {
    /// Announces the rows closed since the last call: their cache keys are invalidated and one
    /// event each is published on `shifts:updates`. Failures there are row errors: the rows
    /// are closed all the same.
    pub(crate) async fn page_done(&mut self, ctx: &Context, now: DateTime<Utc>) {
        if self.closed.is_empty() {
            return;
        }
        let page = std::mem::take(&mut self.closed);
        self.closed_total += page.len();
        let events: Vec<ShiftEvent> = match self.kind {
            Kind::Shifts => {
                let mut invalidation = Invalidation::new();
                for shift in &page {
                    invalidation
                        .key(format!("shift:{}", shift.id))
                        .key(format!("active_shifts:{}", shift.user_id));
                }
                if let Err(e) = invalidation.run(ctx).await {
                    self.errors.push(format!("cache invalidation: {e}"));
                }
                page.iter()
                    .map(|s| ShiftEvent::shift_closed(s.id, s.user_id, s.object_id, now))
                    .collect()
            }
            Kind::Schedules => page
                .iter()
                .map(|s| {
                    ShiftEvent::schedule(
                        EventType::ScheduleClosed,
                        s.id,
                        s.user_id,
                        s.object_id,
                        now,
                    )
                })
                .collect(),
        };
        if let Err(e) = events::publish(ctx, &events).await {
            self.errors
                .push(format!("publishing shifts:updates events: {e}"));
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_errors_are_bounded_and_say_how_many_were_left_out() {
        let mut errors = RowErrors::default();
        for i in 0..(MAX_REPORTED_ERRORS + 25) {
            errors.push(format!("shift {i}: bad"));
        }
        let report = errors.into_report();
        assert_eq!(report.len(), MAX_REPORTED_ERRORS + 1);
        assert_eq!(report.last().unwrap(), "... and 25 more rows");
        assert!(RowErrors::default().into_report().is_empty());
    }
}
