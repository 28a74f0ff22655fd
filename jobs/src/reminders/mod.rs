//! Shift reminders: the periodic process-reminders and the on-demand `send_shift_reminder`.
//!
//! Both go through [`remind`]: claim the schedule (`notification_sent = true` only if it was not
//! yet), record a `notifications` row per channel the user allows, deliver by Telegram, publish
//! `reminder_sent`. The claim is one atomic UPDATE, so overlapping runs, replicas and a manual
//! send during a scheduled run remind each schedule once.
//!
//! A reminder is at most once: if Telegram fails after its retries, the row is `failed` (with the
//! error) and the schedule stays claimed; `send_notification_now` can deliver that row again.

mod process_reminders;
mod remind;
mod send_shift_reminder;

pub use process_reminders::{
    ProcessRemindersArgs, ProcessRemindersReport, process_reminders, process_reminders_at,
};
pub use send_shift_reminder::{
    SendShiftReminderArgs, SendShiftReminderReport, send_shift_reminder,
};
