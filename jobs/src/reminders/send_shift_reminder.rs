//! `send_shift_reminder(user_id, shift_schedule_id, shift_data)`: remind one schedule now.
//!
//! It claims the schedule exactly as process-reminders does, so a manual reminder during a
//! scheduled run reaches the employee once; a schedule already reminded reports
//! `success: false, already_sent: true` without sending.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::remind::{Reminded, remind};
use crate::{Context, JobError, events};

/// Arguments, by their Python names.
#[derive(Debug, Clone, Deserialize)]
pub struct SendShiftReminderArgs {
    /// `users.id`; must own the schedule.
    pub user_id: i32,
    /// `shift_schedules.id`.
    pub shift_schedule_id: i32,
    /// The caller's view of the shift; stored in the notification data as `shift_data`. The
    /// text itself comes from the database.
    #[serde(default)]
    pub shift_data: Value,
}

impl SendShiftReminderArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &["user_id", "shift_schedule_id", "shift_data"];
}

/// `{success, user_id, shift_schedule_id}`, plus why not when it was not sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendShiftReminderReport {
    /// Reminded on every channel the user allows.
    pub success: bool,
    /// The user.
    pub user_id: i32,
    /// The schedule.
    pub shift_schedule_id: i32,
    /// The schedule had been reminded (or is no longer planned) before this call.
    pub already_sent: bool,
    /// Channels a notification row was recorded for.
    pub channels: Vec<&'static str>,
    /// Why Telegram failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reminds `user_id` of schedule `shift_schedule_id` unless that was done already.
pub async fn send_shift_reminder(
    ctx: &Context,
    user_id: i32,
    shift_schedule_id: i32,
    shift_data: &Value,
) -> Result<SendShiftReminderReport, JobError> {
    let mut report = SendShiftReminderReport {
        success: false,
        user_id,
        shift_schedule_id,
        already_sent: false,
        channels: Vec::new(),
        error: None,
    };
    match remind(ctx, shift_schedule_id, Some(user_id), Some(shift_data)).await? {
        Reminded::NotClaimed => {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM shift_schedules WHERE id = $1 AND user_id = $2)",
            )
            .bind(shift_schedule_id)
            .bind(user_id)
            .fetch_one(ctx.counted())
            .await?;
            if !exists {
                return Err(JobError::NotFound {
                    entity: "shift schedule of this user",
                    id: shift_schedule_id.into(),
                });
            }
            report.already_sent = true;
        }
        Reminded::Done {
            event,
            channels,
            telegram_error,
        } => {
            report.success = telegram_error.is_none() && !channels.is_empty();
            report.channels = channels;
            report.error = telegram_error;
            if !report.channels.is_empty()
                && let Err(e) = events::publish(ctx, &[event]).await
            {
                tracing::warn!(error = %e, "publishing reminder_sent failed");
            }
        }
    }
    Ok(report)
}
