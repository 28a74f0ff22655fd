//! StaffProBot's tasks, under the Celery names and queues the Python app uses.
//!
//! Each entry binds a `jobs` function to its Celery name, default queue and argument struct
//! (whose `PARAMS` give the Python positional order). A `jobs::JobError` becomes a FAILURE whose
//! `exc_type` is the error's kind; transient ones (database or Redis unreachable, Telegram
//! 5xx/429) are retried with backoff by the engine.

use std::sync::Arc;

use jobs::{Context, JobError};
use serde_json::Value;

use super::args::bind_named;
use super::{CallArgs, Job, JobArgs, JobContext, Registry};
use crate::settings::redact_text;
use crate::wire::TaskError;

/// A `JobError` as the task error Python sees.
pub(crate) fn task_error(err: JobError) -> TaskError {
    let kind = err.kind();
    let module = if kind == "ValueError" {
        "builtins"
    } else {
        "staffprobot.jobs"
    };
    let mut e = TaskError::from_error(module, kind, &err).transient(err.is_transient());
    // The message and causes are stored in Redis for anyone with `AsyncResult(id)`: a sqlx or
    // redis error deep in the chain may quote a URL with its password.
    e.message = redact_text(&e.message);
    for cause in &mut e.causes {
        *cause = redact_text(cause);
    }
    e
}

fn report<T: serde::Serialize>(task: &str, r: Result<T, JobError>) -> Result<Value, TaskError> {
    let value = r.map_err(task_error)?;
    serde_json::to_value(value)
        .map_err(|e| TaskError::runtime_error(format!("{task}: report is not JSON: {e}")))
}

fn context(ctx: &Option<Arc<Context>>, task: &str) -> Result<Arc<Context>, TaskError> {
    ctx.clone().ok_or_else(|| {
        TaskError::runtime_error(format!(
            "{task}: this process has no job context (only `worker run` runs StaffProBot jobs)"
        ))
    })
}

macro_rules! staffprobot_job {
    ($job:ident, $name:literal, $queue:literal, $desc:literal, $args:ty, |$ctx:ident, $a:ident, $run:ident| $body:expr) => {
        /// See the module documentation.
        pub(crate) struct $job(pub Option<Arc<Context>>);

        impl JobArgs for $args {
            fn bind(task: &str, call: &CallArgs) -> Result<Self, TaskError> {
                bind_named(task, <$args>::PARAMS, call)
            }
        }

        impl Job for $job {
            const NAME: &'static str = $name;
            const QUEUE: &'static str = $queue;
            const DESCRIPTION: &'static str = $desc;
            type Args = $args;
            type Output = Value;

            async fn run(&self, $a: $args, $run: JobContext) -> Result<Value, TaskError> {
                let $ctx = context(&self.0, Self::NAME)?;
                let $ctx = &*$ctx;
                report(Self::NAME, $body.await)
            }
        }
    };
}

staffprobot_job!(
    ProcessReminders,
    "core.celery.tasks.notification_tasks.process_reminders",
    "notifications",
    "Telegram/in-app reminders of planned shifts starting within the next hours",
    jobs::reminders::ProcessRemindersArgs,
    |ctx, _a, _run| jobs::reminders::process_reminders(ctx)
);
staffprobot_job!(
    AutoCloseShifts,
    "core.celery.tasks.shift_tasks.auto_close_shifts",
    "shifts",
    "closes shifts and planned schedules left open past their end, with exact money",
    jobs::auto_close::AutoCloseShiftsArgs,
    |ctx, _a, _run| jobs::auto_close::auto_close_shifts(ctx)
);
staffprobot_job!(
    CleanupCache,
    "core.celery.tasks.analytics_tasks.cleanup_cache",
    "analytics",
    "deletes analytics:* with SCAN+UNLINK and reports Redis statistics",
    jobs::cleanup_cache::CleanupCacheArgs,
    |ctx, _a, _run| jobs::cleanup_cache::cleanup_cache(ctx)
);
staffprobot_job!(
    PlanNextYearTimeslots,
    "core.celery.tasks.shift_tasks.plan_next_year_timeslots",
    "shifts",
    "creates next year's time slots for every active object from its weekly schedule",
    jobs::planner::PlanNextYearTimeslotsArgs,
    |ctx, _a, _run| jobs::planner::plan_next_year_timeslots(ctx)
);
staffprobot_job!(
    SendShiftNotification,
    "core.celery.tasks.notification_tasks.send_shift_notification",
    "notifications",
    "send_shift_notification(user_id, notification_type, data)",
    jobs::notifications::SendShiftNotificationArgs,
    |ctx, a, run| jobs::notifications::send_shift_notification(
        ctx,
        a.user_id,
        &a.notification_type,
        &a.data,
        Some(&run.task_id)
    )
);
staffprobot_job!(
    SendBulkNotifications,
    "core.celery.tasks.notification_tasks.send_bulk_notifications",
    "notifications",
    "send_bulk_notifications(user_ids, notification_type, data)",
    jobs::notifications::SendBulkNotificationsArgs,
    |ctx, a, run| jobs::notifications::send_bulk_notifications(
        ctx,
        &a.user_ids,
        &a.notification_type,
        &a.data,
        Some(&run.task_id)
    )
);
staffprobot_job!(
    SendShiftReminder,
    "core.celery.tasks.notification_tasks.send_shift_reminder",
    "notifications",
    "send_shift_reminder(user_id, shift_schedule_id, shift_data)",
    jobs::reminders::SendShiftReminderArgs,
    |ctx, a, _run| jobs::reminders::send_shift_reminder(
        ctx,
        a.user_id,
        a.shift_schedule_id,
        &a.shift_data
    )
);
staffprobot_job!(
    SendNotificationNow,
    "send_notification_now",
    "notifications",
    "send_notification_now(notification_id) -> bool",
    jobs::notifications::SendNotificationNowArgs,
    |ctx, a, _run| jobs::notifications::send_notification_now(ctx, a.notification_id)
);
staffprobot_job!(
    CalculateShiftPayment,
    "core.celery.tasks.shift_tasks.calculate_shift_payment",
    "shifts",
    "calculate_shift_payment(shift_id) -> {total_hours, total_payment}",
    jobs::shift_payment::CalculateShiftPaymentArgs,
    |ctx, a, _run| jobs::shift_payment::calculate_shift_payment(ctx, a.shift_id)
);
staffprobot_job!(
    CalculateMonthlyMetrics,
    "core.celery.tasks.analytics_tasks.calculate_monthly_metrics",
    "analytics",
    "calculate_monthly_metrics(year=None, month=None), cached 30 days",
    jobs::monthly_metrics::CalculateMonthlyMetricsArgs,
    |ctx, a, _run| jobs::monthly_metrics::calculate_monthly_metrics(ctx, a.year, a.month)
);

/// Register every StaffProBot task; `ctx` is None where jobs only need to be listed.
pub(crate) fn register(registry: &mut Registry, ctx: Option<Arc<Context>>) {
    registry
        .register(ProcessReminders(ctx.clone()))
        .register(AutoCloseShifts(ctx.clone()))
        .register(CleanupCache(ctx.clone()))
        .register(PlanNextYearTimeslots(ctx.clone()))
        .register(SendShiftNotification(ctx.clone()))
        .register(SendBulkNotifications(ctx.clone()))
        .register(SendShiftReminder(ctx.clone()))
        .register(SendNotificationNow(ctx.clone()))
        .register(CalculateShiftPayment(ctx.clone()))
        .register(CalculateMonthlyMetrics(ctx));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_failure_quotes_no_password() {
        let err = JobError::Config(
            "cannot reach redis://:Zq7u/Kx9?Mw#Tp@Rv:%2Fw@cache:6379/0 (timed out)".into(),
        );
        let e = task_error(err);
        assert_eq!(
            e.message,
            "configuration error: cannot reach redis://:***@cache:6379/0 (timed out)"
        );
        assert!(!e.to_result_json().to_string().contains("Kx9"));
    }
}
