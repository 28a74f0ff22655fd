//! `send_bulk_notifications(user_ids, notification_type, data)`: the same notification to many
//! users, a few at a time (the Telegram limiter sets the pace).

use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::send_shift_notification;
use crate::{Context, JobError};

/// Sends in flight at once; the limiter, not this, keeps us under 30 messages/s.
const CONCURRENCY: usize = 8;

/// Arguments, by their Python names.
#[derive(Debug, Clone, Deserialize)]
pub struct SendBulkNotificationsArgs {
    /// `users.id`s; repeats are sent once.
    pub user_ids: Vec<i32>,
    /// `notifications.type`.
    pub notification_type: String,
    /// As for `send_shift_notification`.
    #[serde(default)]
    pub data: Value,
}

impl SendBulkNotificationsArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &["user_ids", "notification_type", "data"];
}

/// `{total_users, notification_type, success}`, plus the counts and per-user errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendBulkNotificationsReport {
    /// Distinct users asked for.
    pub total_users: usize,
    /// The notification type.
    pub notification_type: String,
    /// Every user got it.
    pub success: bool,
    /// Users fully notified.
    pub sent: usize,
    /// Users not (fully) notified.
    pub failed: usize,
    /// `user {id}: {why}` for each failure.
    pub errors: Vec<String>,
}

/// Notifies each user; one user's failure does not stop the others, and none is an error of the
/// whole task. `delivery_key` (the Celery task id) makes a redelivered task skip the users it
/// already notified, as for `send_shift_notification`.
pub async fn send_bulk_notifications(
    ctx: &Context,
    user_ids: &[i32],
    notification_type: &str,
    data: &Value,
    delivery_key: Option<&str>,
) -> Result<SendBulkNotificationsReport, JobError> {
    let mut unique = Vec::with_capacity(user_ids.len());
    for id in user_ids {
        if !unique.contains(id) {
            unique.push(*id);
        }
    }
    let outcomes: Vec<(i32, Result<super::SendShiftNotificationReport, JobError>)> =
        stream::iter(unique.iter().copied())
            .map(|user_id| async move {
                (
                    user_id,
                    send_shift_notification(ctx, user_id, notification_type, data, delivery_key)
                        .await,
                )
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;

    let mut report = SendBulkNotificationsReport {
        total_users: unique.len(),
        notification_type: notification_type.to_owned(),
        success: true,
        sent: 0,
        failed: 0,
        errors: Vec::new(),
    };
    let mut failures: Vec<(i32, String)> = Vec::new();
    for (user_id, outcome) in outcomes {
        match outcome {
            Ok(r) if r.success => report.sent += 1,
            Ok(r) => failures.push((user_id, r.error.unwrap_or_else(|| "not delivered".into()))),
            Err(e @ JobError::InvalidInput(_)) => return Err(e),
            // The database or Redis is unusable: the run as a whole is retried, and the rerun
            // of the same task sends nothing twice (the rows are keyed on its id).
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => failures.push((user_id, e.to_string())),
        }
    }
    failures.sort();
    report.failed = failures.len();
    report.success = failures.is_empty();
    report.errors = failures
        .into_iter()
        .map(|(id, why)| format!("user {id}: {why}"))
        .collect();
    Ok(report)
}
