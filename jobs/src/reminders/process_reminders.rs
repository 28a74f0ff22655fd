//! process-reminders (`core.celery.tasks.notification_tasks.process_reminders`, every 30 min):
//! remind each employee of a planned shift starting within the next `hours_before` hours.
//!
//! The window is `now < planned_start <= now + hours_before`, so a shift created 40 minutes
//! ahead, or one that came due during an outage, is still reminded on the next run (the Python
//! window was `now+50..75 min` and missed both). The claim makes a second run a no-op.

use chrono::{DateTime, Duration, Utc};
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};

use super::remind::{Reminded, remind};
use crate::{Context, JobError, events};

/// Reminders in flight at once; the Telegram limiter sets the actual pace.
const CONCURRENCY: usize = 8;

/// No arguments.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProcessRemindersArgs {}

impl ProcessRemindersArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &[];
}

/// `{total_shifts, sent_successfully, failed_to_send, errors}`, plus `skipped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessRemindersReport {
    /// Schedules due in the window when the run started.
    pub total_shifts: usize,
    /// Reminded on every channel the user allows.
    pub sent_successfully: usize,
    /// Claimed, but Telegram refused or failed (the notification row says why).
    pub failed_to_send: usize,
    /// Claimed by a concurrent run first, or every channel turned off by the user.
    pub skipped: usize,
    /// `schedule {id}: {why}` per failure.
    pub errors: Vec<String>,
}

/// Runs process-reminders now.
pub async fn process_reminders(ctx: &Context) -> Result<ProcessRemindersReport, JobError> {
    process_reminders_at(ctx, Utc::now()).await
}

/// Runs process-reminders as if it were `now`.
pub async fn process_reminders_at(
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<ProcessRemindersReport, JobError> {
    let until = now + Duration::hours(i64::from(ctx.reminder_hours_before()));
    let due: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM shift_schedules \
         WHERE status IN ('planned', 'confirmed') \
           AND notification_sent IS NOT TRUE \
           AND planned_start > $1 AND planned_start <= $2 \
         ORDER BY planned_start, id",
    )
    .bind(now)
    .bind(until)
    .fetch_all(ctx.counted())
    .await?;

    let outcomes: Vec<(i32, Result<Reminded, JobError>)> = stream::iter(due.iter().copied())
        .map(|id| async move { (id, remind(ctx, id, None, None).await) })
        .buffered(CONCURRENCY)
        .collect()
        .await;

    let mut report = ProcessRemindersReport {
        total_shifts: due.len(),
        ..Default::default()
    };
    let mut events = Vec::new();
    let mut transient = None;
    for (id, outcome) in outcomes {
        match outcome {
            Ok(Reminded::NotClaimed) => report.skipped += 1,
            Ok(Reminded::Done { channels, .. }) if channels.is_empty() => report.skipped += 1,
            Ok(Reminded::Done {
                event,
                telegram_error,
                ..
            }) => {
                events.push(event);
                match telegram_error {
                    None => report.sent_successfully += 1,
                    Some(e) => {
                        report.failed_to_send += 1;
                        report.errors.push(format!("schedule {id}: {e}"));
                    }
                }
            }
            Err(e) => {
                report.failed_to_send += 1;
                report.errors.push(format!("schedule {id}: {e}"));
                if e.is_transient() && transient.is_none() {
                    transient = Some(e);
                }
            }
        }
    }
    if let Err(e) = events::publish(ctx, &events).await {
        report
            .errors
            .push(format!("publishing reminder_sent events: {e}"));
    }
    tracing::info!(
        total = report.total_shifts,
        sent = report.sent_successfully,
        failed = report.failed_to_send,
        skipped = report.skipped,
        "process-reminders done"
    );
    // A database or Redis outage fails the run so the worker retries it; the schedules already
    // reminded are claimed and will not be reminded again.
    match transient {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
