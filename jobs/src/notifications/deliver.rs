//! Sending one recorded Telegram notification and writing the outcome on its row.

use sqlx::PgConnection;

use crate::telegram::TelegramError;
use crate::{Context, JobError, db};

/// Sends `html` to `chat_id` and marks notification `notification_id` `sent` or `failed`.
/// The outer `Result` is the bookkeeping (database); the inner one the delivery.
pub(crate) async fn deliver_telegram(
    ctx: &Context,
    notification_id: i32,
    chat_id: i64,
    html: &str,
) -> Result<Result<(), TelegramError>, JobError> {
    let mut conn = ctx.db().acquire().await?;
    deliver_telegram_on(ctx, &mut conn, notification_id, chat_id, html).await
}

/// Like [`deliver_telegram`], unless the row is already `sent` (`Ok(None)`). The row is locked
/// for the whole delivery (a transaction-scoped advisory lock, released by commit or by the
/// rollback of a cancelled run), so two runs that reach the same row at once send it once: the
/// second waits, then finds it `sent`.
pub(crate) async fn deliver_telegram_once(
    ctx: &Context,
    notification_id: i32,
    chat_id: i64,
    html: &str,
) -> Result<Option<Result<(), TelegramError>>, JobError> {
    let mut tx = db::begin(ctx).await?;
    db::lock_named(ctx, &mut tx, &format!("notification-row:{notification_id}")).await?;
    ctx.count_statement();
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM notifications WHERE id = $1")
            .bind(notification_id)
            .fetch_optional(&mut *tx)
            .await?;
    let outcome = if status.as_deref() == Some("sent") {
        None
    } else {
        Some(deliver_telegram_on(ctx, &mut tx, notification_id, chat_id, html).await?)
    };
    db::commit(ctx, tx).await?;
    Ok(outcome)
}

async fn deliver_telegram_on(
    ctx: &Context,
    conn: &mut PgConnection,
    notification_id: i32,
    chat_id: i64,
    html: &str,
) -> Result<Result<(), TelegramError>, JobError> {
    let Some(telegram) = ctx.telegram() else {
        return Err(JobError::TelegramDisabled);
    };
    match telegram.send_message(chat_id, html).await {
        Ok(_) => {
            ctx.count_statement();
            sqlx::query(
                "UPDATE notifications SET status = 'sent', sent_at = now(), error_message = NULL \
                 WHERE id = $1",
            )
            .bind(notification_id)
            .execute(&mut *conn)
            .await?;
            Ok(Ok(()))
        }
        Err(error) => {
            tracing::warn!(notification_id, chat_id, %error, "telegram delivery failed");
            ctx.count_statement();
            sqlx::query(
                "UPDATE notifications \
                 SET status = 'failed', error_message = $2, retry_count = retry_count + 1 \
                 WHERE id = $1",
            )
            .bind(notification_id)
            .bind(error.to_string())
            .execute(&mut *conn)
            .await?;
            Ok(Err(error))
        }
    }
}
