//! Writing `notifications` rows and reading `users.notification_preferences`.
//!
//! A task that is retried or redelivered runs again with the same Celery task id. Rows written
//! by [`record_once`] carry that id in `data.celery_task_id`, and a rerun finds them instead of
//! inserting again: the user sees one in-app notification, and a Telegram message already
//! `sent` is not sent twice.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::{Context, db};

/// A delivery channel the worker handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Telegram,
    InApp,
}

impl Channel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Telegram => "telegram",
            Self::InApp => "in_app",
        }
    }
}

/// Whether the user wants `notification_type` on `channel`:
/// `{"shift_reminder": {"telegram": false}}` turns one off; anything missing means on.
pub(crate) fn channel_enabled(
    prefs: Option<&Value>,
    notification_type: &str,
    channel: Channel,
) -> bool {
    prefs
        .and_then(|p| p.get(notification_type))
        .and_then(|t| t.get(channel.as_str()))
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// A row to insert.
pub(crate) struct NewNotification<'a> {
    pub user_id: i32,
    pub notification_type: &'a str,
    pub channel: Channel,
    pub priority: &'static str,
    pub title: &'a str,
    pub message: &'a str,
    pub data: &'a Value,
    /// `Some` writes the row `sent` at that instant (in-app); `None` writes it `pending`.
    pub sent_at: Option<DateTime<Utc>>,
}

/// The `title` column is VARCHAR(200).
fn clip_title(title: &str) -> String {
    title.chars().take(200).collect()
}

/// The key in `notifications.data` that ties a row to the task run that wrote it.
pub(crate) const DELIVERY_KEY: &str = "celery_task_id";

/// A row found or made by [`record_once`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub id: i32,
    /// An earlier run of the same task already delivered it (status `sent`).
    pub already_sent: bool,
}

/// Inserts the row unless an earlier run of the same task (`delivery_key`, its Celery id) already
/// recorded this user, type and channel; returns that row or the new one. `n.data` must carry
/// `delivery_key` under [`DELIVERY_KEY`].
pub(crate) async fn record_once(
    ctx: &Context,
    n: &NewNotification<'_>,
    delivery_key: &str,
) -> Result<Recorded, sqlx::Error> {
    debug_assert_eq!(
        n.data.get(DELIVERY_KEY).and_then(Value::as_str),
        Some(delivery_key)
    );
    let mut tx = db::begin(ctx).await?;
    // Two runs of one task at once (a redelivery while the first still runs) take turns here;
    // the notifications table has no unique key to lean on.
    let lock = format!(
        "notification:{delivery_key}:{}:{}:{}",
        n.user_id,
        n.notification_type,
        n.channel.as_str()
    );
    db::lock_named(ctx, &mut tx, &lock).await?;
    ctx.count_statement();
    let existing: Option<(i32, String)> = sqlx::query_as(
        "SELECT id, status FROM notifications \
         WHERE user_id = $1 AND type = $2 AND channel = $3 AND data->>'celery_task_id' = $4 \
         ORDER BY id LIMIT 1",
    )
    .bind(n.user_id)
    .bind(n.notification_type)
    .bind(n.channel.as_str())
    .bind(delivery_key)
    .fetch_optional(&mut *tx)
    .await?;
    let recorded = match existing {
        Some((id, status)) => Recorded {
            id,
            already_sent: status == "sent",
        },
        None => Recorded {
            id: insert_notification(ctx, &mut *tx, n).await?,
            already_sent: false,
        },
    };
    db::commit(ctx, tx).await?;
    Ok(recorded)
}

/// Inserts the row; returns its id.
pub(crate) async fn insert_notification<'e>(
    ctx: &Context,
    executor: impl PgExecutor<'e>,
    n: &NewNotification<'_>,
) -> Result<i32, sqlx::Error> {
    ctx.count_statement();
    let status = if n.sent_at.is_some() {
        "sent"
    } else {
        "pending"
    };
    sqlx::query_scalar(
        "INSERT INTO notifications \
             (user_id, type, channel, status, priority, title, message, data, created_at, sent_at, retry_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9, 0) \
         RETURNING id",
    )
    .bind(n.user_id)
    .bind(n.notification_type)
    .bind(n.channel.as_str())
    .bind(status)
    .bind(n.priority)
    .bind(clip_title(n.title))
    .bind(n.message)
    .bind(sqlx::types::Json(n.data))
    .bind(n.sent_at)
    .fetch_one(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn preferences_default_on() {
        let prefs = json!({"shift_reminder": {"telegram": false}});
        assert!(!channel_enabled(
            Some(&prefs),
            "shift_reminder",
            Channel::Telegram
        ));
        assert!(channel_enabled(
            Some(&prefs),
            "shift_reminder",
            Channel::InApp
        ));
        assert!(channel_enabled(Some(&prefs), "other", Channel::Telegram));
        assert!(channel_enabled(None, "shift_reminder", Channel::Telegram));
        assert!(channel_enabled(
            Some(&json!("garbage")),
            "shift_reminder",
            Channel::InApp
        ));
    }
}
