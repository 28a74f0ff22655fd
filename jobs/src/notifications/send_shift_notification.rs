//! `send_shift_notification(user_id, notification_type, data)`: one notification to one user,
//! on the channels the user allows, recorded and delivered; once per task, however often the
//! task runs (see [`super::record::record_once`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::deliver::{deliver_telegram, deliver_telegram_once};
use super::record::{
    Channel, DELIVERY_KEY, NewNotification, Recorded, channel_enabled, insert_notification,
    record_once,
};
use super::render::{message_for, render_telegram_html, title_for};
use crate::{Context, JobError};

/// Arguments, by their Python names.
#[derive(Debug, Clone, Deserialize)]
pub struct SendShiftNotificationArgs {
    /// `users.id`.
    pub user_id: i32,
    /// `notifications.type`, e.g. `shift_cancelled`.
    pub notification_type: String,
    /// Free-form details; `title`, `message` and `priority` are used when present.
    #[serde(default)]
    pub data: Value,
}

impl SendShiftNotificationArgs {
    /// The Python positional order.
    pub const PARAMS: &'static [&'static str] = &["user_id", "notification_type", "data"];
}

/// `{success, user_id, type}`, plus the channels recorded and the delivery error if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendShiftNotificationReport {
    /// Every channel the user allows got the notification.
    pub success: bool,
    /// The user.
    pub user_id: i32,
    /// The notification type.
    #[serde(rename = "type")]
    pub notification_type: String,
    /// Channels a row was recorded for.
    pub channels: Vec<&'static str>,
    /// Why Telegram delivery failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Recipient {
    telegram_id: i64,
    notification_preferences: Option<sqlx::types::Json<Value>>,
}

const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];

/// Records and delivers the notification. A permanent Telegram refusal (400, 403) is a report
/// with `success: false`; a transient one that outlasted the client's retries is an error, so
/// the worker retries the task. `delivery_key` (the Celery task id) makes a rerun of the same
/// task reuse the rows of the earlier run: no second in-app row, no second Telegram message once
/// one was sent. `None` records every call anew.
pub async fn send_shift_notification(
    ctx: &Context,
    user_id: i32,
    notification_type: &str,
    data: &Value,
    delivery_key: Option<&str>,
) -> Result<SendShiftNotificationReport, JobError> {
    let notification_type = notification_type.trim();
    if notification_type.is_empty() || notification_type.chars().count() > 50 {
        return Err(JobError::invalid(
            "notification_type must be 1 to 50 characters",
        ));
    }
    if !(data.is_object() || data.is_null()) {
        return Err(JobError::invalid("data must be a dict"));
    }
    let recipient: Recipient =
        sqlx::query_as("SELECT telegram_id, notification_preferences FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(ctx.counted())
            .await?
            .ok_or(JobError::NotFound {
                entity: "user",
                id: user_id.into(),
            })?;
    let prefs = recipient.notification_preferences.as_ref().map(|j| &j.0);

    let title = title_for(notification_type, data);
    let message = message_for(&title, data);
    let priority = data
        .get("priority")
        .and_then(Value::as_str)
        .and_then(|p| PRIORITIES.iter().find(|known| **known == p))
        .copied()
        .unwrap_or("normal");
    let mut stored_data = if data.is_null() {
        Value::Object(Default::default())
    } else {
        data.clone()
    };
    if let (Some(key), Value::Object(map)) = (delivery_key, &mut stored_data) {
        map.insert(DELIVERY_KEY.into(), key.into());
    }
    let record = async |row: &NewNotification<'_>| -> Result<Recorded, sqlx::Error> {
        match delivery_key {
            Some(key) => record_once(ctx, row, key).await,
            None => Ok(Recorded {
                id: insert_notification(ctx, ctx.db(), row).await?,
                already_sent: false,
            }),
        }
    };

    let mut report = SendShiftNotificationReport {
        success: true,
        user_id,
        notification_type: notification_type.to_owned(),
        channels: Vec::new(),
        error: None,
    };
    let mut row = NewNotification {
        user_id,
        notification_type,
        channel: Channel::InApp,
        priority,
        title: &title,
        message: &message,
        data: &stored_data,
        sent_at: Some(chrono::Utc::now()),
    };
    if channel_enabled(prefs, notification_type, Channel::InApp) {
        record(&row).await?;
        report.channels.push(Channel::InApp.as_str());
    }
    if ctx.telegram().is_some() && channel_enabled(prefs, notification_type, Channel::Telegram) {
        row.channel = Channel::Telegram;
        row.sent_at = None;
        let recorded = record(&row).await?;
        report.channels.push(Channel::Telegram.as_str());
        if recorded.already_sent {
            return Ok(report);
        }
        let html = render_telegram_html(notification_type, &title, &message, &stored_data);
        let chat = recipient.telegram_id;
        let delivered = match delivery_key {
            // Another run of this task may be delivering the same row right now.
            Some(_) => deliver_telegram_once(ctx, recorded.id, chat, &html).await?,
            None => Some(deliver_telegram(ctx, recorded.id, chat, &html).await?),
        };
        match delivered.unwrap_or(Ok(())) {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                report.success = false;
                report.error = Some(e.to_string());
            }
        }
    }
    Ok(report)
}
