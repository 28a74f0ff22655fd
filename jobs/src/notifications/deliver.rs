//! Sending one recorded Telegram notification and writing the outcome on its row.

use crate::telegram::TelegramError;
use crate::{Context, JobError};

/// Sends `html` to `chat_id` and marks notification `notification_id` `sent` or `failed`.
/// The outer `Result` is the bookkeeping (database); the inner one the delivery.
pub(crate) async fn deliver_telegram(
    ctx: &Context,
    notification_id: i32,
    chat_id: i64,
    html: &str,
) -> Result<Result<(), TelegramError>, JobError> {
    let Some(telegram) = ctx.telegram() else {
        return Err(JobError::TelegramDisabled);
    };
    match telegram.send_message(chat_id, html).await {
        Ok(_) => {
            sqlx::query(
                "UPDATE notifications SET status = 'sent', sent_at = now(), error_message = NULL \
                 WHERE id = $1",
            )
            .bind(notification_id)
            .execute(ctx.counted())
            .await?;
            Ok(Ok(()))
        }
        Err(error) => {
            tracing::warn!(notification_id, chat_id, %error, "telegram delivery failed");
            sqlx::query(
                "UPDATE notifications \
                 SET status = 'failed', error_message = $2, retry_count = retry_count + 1 \
                 WHERE id = $1",
            )
            .bind(notification_id)
            .bind(error.to_string())
            .execute(ctx.counted())
            .await?;
            Ok(Err(error))
        }
    }
}
