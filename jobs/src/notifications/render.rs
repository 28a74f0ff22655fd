//! The words: titles per notification type, the reminder text, and the Telegram HTML.
//!
//! The Telegram text is always rebuilt from a row's `type`, `title`, `message` and `data`, so
//! `send_notification_now` sends a stored row exactly as the job that created it would have.
//! Every value from the database is escaped; only our own `<b>` tags are markup.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::telegram::escape_html;

/// The notification type of shift reminders.
pub const SHIFT_REMINDER: &str = "shift_reminder";

/// What a reminder's `data` carries (and what its text is built from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderData {
    /// The reminded `shift_schedules.id`.
    pub shift_schedule_id: i32,
    /// The object the shift is at.
    pub object_id: i32,
    /// Its name, as stored (unescaped).
    pub object_name: String,
    /// Its address, when known.
    #[serde(default)]
    pub object_address: Option<String>,
    /// Planned start, in the object's timezone.
    pub shift_start: DateTime<FixedOffset>,
    /// Planned end, in the object's timezone.
    pub shift_end: DateTime<FixedOffset>,
    /// The timezone the times are shown in.
    pub timezone: String,
}

impl ReminderData {
    /// `dd.mm.yyyy HH:MM–HH:MM` in the object's timezone.
    pub fn when(&self) -> String {
        format!(
            "{}–{}",
            self.shift_start.format("%d.%m.%Y %H:%M"),
            self.shift_end.format("%H:%M")
        )
    }

    /// The plain-text message stored in `notifications.message`.
    pub fn plain_message(&self) -> String {
        let mut text = format!("Смена на объекте «{}»: {}", self.object_name, self.when());
        if let Some(address) = self
            .object_address
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            text.push_str(&format!(". Адрес: {address}"));
        }
        text
    }

    /// The Telegram HTML: bold title, bold object name, the address when known, the time.
    pub fn telegram_html(&self) -> String {
        let mut html = format!(
            "<b>⏰ Напоминание о смене</b>\n\n🏢 <b>{}</b>\n",
            escape_html(&self.object_name)
        );
        if let Some(address) = self
            .object_address
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            html.push_str(&format!("📍 {}\n", escape_html(address)));
        }
        html.push_str(&format!("🕐 {}", self.when()));
        html
    }
}

/// The title for a notification type; `data.title` wins when the caller gave one.
pub fn title_for(notification_type: &str, data: &Value) -> String {
    if let Some(title) = data
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        return title.to_owned();
    }
    match notification_type {
        SHIFT_REMINDER => "Напоминание о смене",
        "shift_confirmed" => "Смена подтверждена",
        "shift_cancelled" => "Смена отменена",
        "shift_started" => "Смена начата",
        "shift_completed" => "Смена завершена",
        "shift_planned" => "Смена запланирована",
        "schedule_changed" => "Расписание изменено",
        _ => "Уведомление",
    }
    .to_owned()
}

/// The plain message for a notification: `data.message` when given, else the known fields of
/// `data` one per line, else the title.
pub fn message_for(title: &str, data: &Value) -> String {
    if let Some(message) = data
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    {
        return message.to_owned();
    }
    const FIELDS: [(&str, &str); 6] = [
        ("object_name", "Объект"),
        ("object_address", "Адрес"),
        ("shift_start", "Начало"),
        ("shift_end", "Окончание"),
        ("planned_start", "Начало"),
        ("planned_end", "Окончание"),
    ];
    let lines: Vec<String> = FIELDS
        .iter()
        .filter_map(|(key, label)| {
            let value = data.get(*key)?;
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some(format!("{label}: {text}"))
        })
        .collect();
    if lines.is_empty() {
        title.to_owned()
    } else {
        lines.join("\n")
    }
}

/// The Telegram HTML for a stored or new notification.
pub fn render_telegram_html(
    notification_type: &str,
    title: &str,
    message: &str,
    data: &Value,
) -> String {
    if notification_type == SHIFT_REMINDER
        && let Ok(reminder) = serde_json::from_value::<ReminderData>(data.clone())
    {
        return reminder.telegram_html();
    }
    format!("<b>{}</b>\n\n{}", escape_html(title), escape_html(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reminder(name: &str, address: Option<&str>) -> ReminderData {
        ReminderData {
            shift_schedule_id: 1,
            object_id: 2,
            object_name: name.to_owned(),
            object_address: address.map(str::to_owned),
            shift_start: "2026-03-10T09:00:00+03:00".parse().expect("ts"),
            shift_end: "2026-03-10T18:30:00+03:00".parse().expect("ts"),
            timezone: "Europe/Moscow".to_owned(),
        }
    }

    #[test]
    fn reminder_html_escapes_and_formats() {
        let html = reminder("<Tom> & Jerry", Some("ул. \"Ленина\" 1")).telegram_html();
        assert_eq!(
            html,
            "<b>⏰ Напоминание о смене</b>\n\n🏢 <b>&lt;Tom&gt; &amp; Jerry</b>\n\
             📍 ул. &quot;Ленина&quot; 1\n🕐 10.03.2026 09:00–18:30"
        );
        let html = reminder("Склад", None).telegram_html();
        assert!(!html.contains("📍"));
    }

    #[test]
    fn stored_reminder_renders_the_same() {
        let data = serde_json::to_value(reminder("A&B", None)).expect("json");
        let html = render_telegram_html(SHIFT_REMINDER, "t", "m", &data);
        assert_eq!(html, reminder("A&B", None).telegram_html());
    }

    #[test]
    fn generic_notification() {
        let data = json!({"object_name": "<Склад>", "shift_start": "10.03 09:00"});
        let title = title_for("shift_cancelled", &data);
        let message = message_for(&title, &data);
        assert_eq!(title, "Смена отменена");
        assert_eq!(message, "Объект: <Склад>\nНачало: 10.03 09:00");
        assert_eq!(
            render_telegram_html("shift_cancelled", &title, &message, &data),
            "<b>Смена отменена</b>\n\nОбъект: &lt;Склад&gt;\nНачало: 10.03 09:00"
        );
    }
}
