//! Live updates for the web app: one JSON event per change on the Redis channel `shifts:updates`,
//! which the web app relays to browsers over WebSocket (the seed's pub/sub design).
//!
//! ```json
//! {"type": "shift_closed", "shift_id": 42, "user_id": 7, "object_id": 3, "at": "2026-03-10T15:00:00Z"}
//! {"type": "schedule_closed", "schedule_id": 9, "user_id": 7, "object_id": 3, "at": "..."}
//! {"type": "reminder_sent", "schedule_id": 9, "user_id": 7, "object_id": 3, "at": "..."}
//! ```
//! `at` is when the worker made the change (UTC, RFC 3339). Pub/sub is fire-and-forget: a web app
//! that is not subscribed at that moment misses the event and reloads from the database.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::Context;

/// The channel name (the context's Redis key prefix goes in front).
pub const SHIFTS_UPDATES_CHANNEL: &str = "shifts:updates";

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// auto-close-shifts closed a real shift.
    ShiftClosed,
    /// auto-close-shifts closed a planned schedule.
    ScheduleClosed,
    /// A reminder for a planned schedule went out.
    ReminderSent,
}

/// One change, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShiftEvent {
    /// The kind of change.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Set for `shift_closed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift_id: Option<i32>,
    /// Set for `schedule_closed` and `reminder_sent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<i32>,
    /// Whose shift.
    pub user_id: i32,
    /// Where.
    pub object_id: i32,
    /// When the worker made the change.
    pub at: DateTime<Utc>,
}

impl ShiftEvent {
    /// A real shift was closed.
    pub fn shift_closed(shift_id: i32, user_id: i32, object_id: i32, at: DateTime<Utc>) -> Self {
        Self {
            event_type: EventType::ShiftClosed,
            shift_id: Some(shift_id),
            schedule_id: None,
            user_id,
            object_id,
            at,
        }
    }

    /// A schedule changed (`schedule_closed` or `reminder_sent`).
    pub fn schedule(
        event_type: EventType,
        schedule_id: i32,
        user_id: i32,
        object_id: i32,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_type,
            shift_id: None,
            schedule_id: Some(schedule_id),
            user_id,
            object_id,
            at,
        }
    }
}

/// Publishes `events` in pipelined batches.
pub async fn publish(ctx: &Context, events: &[ShiftEvent]) -> Result<(), redis::RedisError> {
    let channel = ctx.redis_key(SHIFTS_UPDATES_CHANNEL);
    let mut conn = ctx.redis();
    for chunk in events.chunks(crate::cache::BATCH) {
        let mut pipe = redis::pipe();
        for event in chunk {
            let payload = serde_json::to_string(event).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "event JSON", e.to_string()))
            })?;
            pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_the_documented_shape() {
        let at = "2026-03-10T15:00:00Z".parse().expect("timestamp");
        let json = serde_json::to_value(ShiftEvent::shift_closed(42, 7, 3, at)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type": "shift_closed", "shift_id": 42, "user_id": 7,
                               "object_id": 3, "at": "2026-03-10T15:00:00Z"})
        );
        let json = serde_json::to_value(ShiftEvent::schedule(EventType::ReminderSent, 9, 7, 3, at))
            .expect("json");
        assert_eq!(json["type"], "reminder_sent");
        assert_eq!(json["schedule_id"], 9);
        assert!(json.get("shift_id").is_none());
    }
}
