//! Claim, record, deliver: one schedule's reminder.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::events::{EventType, ShiftEvent};
use crate::local_time::object_timezone;
use crate::notifications::{
    Channel, NewNotification, ReminderData, SHIFT_REMINDER, channel_enabled, deliver_telegram,
    insert_notification,
};
use crate::{Context, JobError, db};

/// What became of one schedule.
#[derive(Debug)]
pub(crate) enum Reminded {
    /// Someone else claimed it first (or it is no longer planned).
    NotClaimed,
    /// Claimed and recorded; `telegram_error` says whether Telegram failed.
    Done {
        event: ShiftEvent,
        channels: Vec<&'static str>,
        telegram_error: Option<String>,
    },
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: i32,
    user_id: i32,
    object_id: i32,
    planned_start: DateTime<Utc>,
    planned_end: DateTime<Utc>,
    telegram_id: i64,
    notification_preferences: Option<sqlx::types::Json<Value>>,
    object_name: String,
    object_address: Option<String>,
    object_timezone: Option<String>,
}

/// Reminds schedule `schedule_id` (of `user_id`, when given) if nobody has yet. `extra` is
/// merged into the notification data (the caller's `shift_data`).
pub(crate) async fn remind(
    ctx: &Context,
    schedule_id: i32,
    user_id: Option<i32>,
    extra: Option<&Value>,
) -> Result<Reminded, JobError> {
    let mut tx = db::begin(ctx).await?;
    ctx.count_statement();
    let claimed: Option<Claimed> = sqlx::query_as(
        "UPDATE shift_schedules ss \
         SET notification_sent = true, updated_at = now() \
         FROM users u, objects o \
         WHERE ss.id = $1 \
           AND ss.notification_sent IS NOT TRUE \
           AND ss.status IN ('planned', 'confirmed') \
           AND ($2::int IS NULL OR ss.user_id = $2) \
           AND u.id = ss.user_id AND o.id = ss.object_id \
         RETURNING ss.id, ss.user_id, ss.object_id, ss.planned_start, ss.planned_end, \
                   u.telegram_id, u.notification_preferences, \
                   o.name AS object_name, o.address AS object_address, o.timezone AS object_timezone",
    )
    .bind(schedule_id)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = claimed else {
        // Nothing changed; dropping the transaction rolls it back.
        return Ok(Reminded::NotClaimed);
    };

    let tz = object_timezone(
        row.object_timezone.as_deref(),
        ctx.default_timezone(),
        row.object_id,
    );
    let reminder = ReminderData {
        shift_schedule_id: row.id,
        object_id: row.object_id,
        object_name: row.object_name.clone(),
        object_address: row.object_address.clone(),
        shift_start: row.planned_start.with_timezone(&tz).fixed_offset(),
        shift_end: row.planned_end.with_timezone(&tz).fixed_offset(),
        timezone: tz.name().to_owned(),
    };
    let mut data = serde_json::to_value(&reminder)
        .map_err(|e| JobError::invalid(format!("reminder data: {e}")))?;
    if let (Some(Value::Object(extra)), Value::Object(map)) = (extra, &mut data) {
        map.insert("shift_data".to_owned(), Value::Object(extra.clone()));
    }
    let title = "Напоминание о смене";
    let message = reminder.plain_message();
    let prefs = row.notification_preferences.as_ref().map(|j| &j.0);
    let now = Utc::now();

    let mut channels = Vec::new();
    let mut notification = NewNotification {
        user_id: row.user_id,
        notification_type: SHIFT_REMINDER,
        channel: Channel::InApp,
        priority: "high",
        title,
        message: &message,
        data: &data,
        sent_at: Some(now),
    };
    if channel_enabled(prefs, SHIFT_REMINDER, Channel::InApp) {
        insert_notification(ctx, &mut *tx, &notification).await?;
        channels.push(Channel::InApp.as_str());
    }
    let mut telegram_row = None;
    if ctx.telegram().is_some() && channel_enabled(prefs, SHIFT_REMINDER, Channel::Telegram) {
        notification.channel = Channel::Telegram;
        notification.sent_at = None;
        telegram_row = Some(insert_notification(ctx, &mut *tx, &notification).await?);
        channels.push(Channel::Telegram.as_str());
    }
    // Commit before the network call: the claim must be durable before anything is sent, and
    // no transaction is held open while Telegram answers.
    db::commit(ctx, tx).await?;

    let mut telegram_error = None;
    if let Some(id) = telegram_row
        && let Err(e) =
            deliver_telegram(ctx, id, row.telegram_id, &reminder.telegram_html()).await?
    {
        telegram_error = Some(e.to_string());
    }
    Ok(Reminded::Done {
        event: ShiftEvent::schedule(
            EventType::ReminderSent,
            row.id,
            row.user_id,
            row.object_id,
            now,
        ),
        channels,
        telegram_error,
    })
}
