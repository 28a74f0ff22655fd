//! Notifications: the `notifications` rows, the users' channel preferences, the Telegram text,
//! and the on-demand tasks that send them (`send_shift_notification`, `send_bulk_notifications`,
//! `send_notification_now`).
//!
//! Every delivery is recorded first, one row per channel, then attempted; the row ends `sent`
//! (with `sent_at`) or `failed` (with `error_message` and `retry_count + 1`). In-app rows are
//! delivered by existing, so they are written `sent` at once. Without a Telegram token the
//! Telegram channel is skipped, not recorded as failed.

mod deliver;
mod record;
mod render;
mod send_bulk_notifications;
mod send_notification_now;
mod send_shift_notification;

pub(crate) use deliver::deliver_telegram;
pub(crate) use record::{Channel, NewNotification, channel_enabled, insert_notification};
pub use render::{ReminderData, SHIFT_REMINDER, message_for, render_telegram_html, title_for};
pub use send_bulk_notifications::{
    SendBulkNotificationsArgs, SendBulkNotificationsReport, send_bulk_notifications,
};
pub use send_notification_now::{SendNotificationNowArgs, send_notification_now};
pub use send_shift_notification::{
    SendShiftNotificationArgs, SendShiftNotificationReport, send_shift_notification,
};
