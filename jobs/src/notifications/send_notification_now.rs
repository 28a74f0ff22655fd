//! `send_notification_now(notification_id) -> bool`: deliver one stored notification now.
//!
//! The row is claimed by moving it to `sent` only if it is still `pending`, `scheduled` or
//! `failed` (compared case-insensitively: some Python code writes `SENT`), so two calls at once
//! deliver it once. A Telegram failure then rewrites it `failed`.

use serde::Deserialize;
use serde_json::Value;

use super::deliver_telegram;
use super::render::render_telegram_html;
use crate::{Context, JobError};

/// Arguments, by their Python names.
#[derive(Debug, Clone, Deserialize)]
pub struct SendNotificationNowArgs {
    /// `notifications.id`.
    pub notification_id: i32,
}

impl SendNotificationNowArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &["notification_id"];
}

#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(rename = "type")]
    notification_type: String,
    channel: String,
    title: String,
    message: String,
    data: Option<sqlx::types::Json<Value>>,
    telegram_id: i64,
}

/// `true` when the notification was delivered by this call; `false` when it was already sent
/// (or read, or cancelled) or Telegram refused it for good.
pub async fn send_notification_now(ctx: &Context, notification_id: i32) -> Result<bool, JobError> {
    let stored: Stored = sqlx::query_as(
        "SELECT n.type, n.channel, n.title, n.message, n.data, u.telegram_id \
         FROM notifications n JOIN users u ON u.id = n.user_id WHERE n.id = $1",
    )
    .bind(notification_id)
    .fetch_optional(ctx.counted())
    .await?
    .ok_or(JobError::NotFound {
        entity: "notification",
        id: notification_id.into(),
    })?;

    let channel = stored.channel.to_ascii_lowercase();
    match channel.as_str() {
        "telegram" if ctx.telegram().is_none() => return Err(JobError::TelegramDisabled),
        "telegram" | "in_app" => {}
        other => {
            return Err(JobError::invalid(format!(
                "notification {notification_id}: channel {other:?} is not delivered by the worker"
            )));
        }
    }
    let claimed = sqlx::query(
        "UPDATE notifications SET status = 'sent', sent_at = now(), error_message = NULL \
         WHERE id = $1 AND lower(status) IN ('pending', 'scheduled', 'failed')",
    )
    .bind(notification_id)
    .execute(ctx.counted())
    .await?
    .rows_affected()
        == 1;
    if !claimed || channel == "in_app" {
        return Ok(claimed);
    }
    let data = stored.data.map(|j| j.0).unwrap_or(Value::Null);
    let html = render_telegram_html(
        &stored.notification_type,
        &stored.title,
        &stored.message,
        &data,
    );
    match deliver_telegram(ctx, notification_id, stored.telegram_id, &html).await? {
        Ok(()) => Ok(true),
        Err(e) if e.is_transient() => Err(e.into()),
        Err(_) => Ok(false),
    }
}
