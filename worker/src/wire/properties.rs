//! A message's AMQP properties as plain data, and the one conversion to and from lapin's
//! `BasicProperties`.
//!
//! Everything we publish is built as [`Properties`] (see [`super::outgoing`]) and converted to
//! lapin's type here, at the edge; everything we keep of a delivery to publish again (a
//! dead letter, a delayed message) is read into [`Properties`] here. So the properties of a
//! message are assembled in one place, and a republished message carries exactly what it came
//! with — including header values of AMQP types JSON has no word for, since headers stay an
//! AMQP table.

use lapin::BasicProperties;
use lapin::types::{FieldTable, ShortString};

/// kombu's content type and encoding for JSON task messages.
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_ENCODING_UTF8: &str = "utf-8";
/// AMQP's persistent delivery mode, which Celery always uses.
pub const PERSISTENT: u8 = 2;

/// The AMQP basic properties we read and write (AMQP's `type`, `user_id` and `cluster_id` are
/// neither set by Celery nor kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: FieldTable,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub app_id: Option<String>,
}

impl Properties {
    /// What kombu sets on a JSON task message: content type and encoding, persistent, priority
    /// 0, the task id as correlation id.
    pub fn celery_task(task_id: &str, headers: FieldTable) -> Self {
        Self {
            content_type: Some(CONTENT_TYPE_JSON.into()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.into()),
            headers,
            delivery_mode: Some(PERSISTENT),
            priority: Some(0),
            correlation_id: Some(task_id.into()),
            ..Self::default()
        }
    }

    /// What kombu sets on an event: JSON, transient (the dispatcher's `delivery_mode=1`), and
    /// the `hostname` header.
    pub fn celery_event(hostname: &str) -> Self {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            "hostname".into(),
            lapin::types::AMQPValue::LongString(hostname.as_bytes().to_vec().into()),
        );
        Self {
            content_type: Some(CONTENT_TYPE_JSON.into()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.into()),
            headers,
            delivery_mode: Some(super::control::TRANSIENT),
            priority: Some(0),
            ..Self::default()
        }
    }
}

fn text(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_owned())
}

impl From<&BasicProperties> for Properties {
    fn from(p: &BasicProperties) -> Self {
        Self {
            content_type: text(p.content_type()),
            content_encoding: text(p.content_encoding()),
            headers: p.headers().clone().unwrap_or_default(),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            correlation_id: text(p.correlation_id()),
            reply_to: text(p.reply_to()),
            expiration: text(p.expiration()),
            message_id: text(p.message_id()),
            timestamp: *p.timestamp(),
            app_id: text(p.app_id()),
        }
    }
}

impl From<Properties> for BasicProperties {
    fn from(p: Properties) -> Self {
        let mut out = BasicProperties::default().with_headers(p.headers);
        let short = |s: String| ShortString::from(s);
        if let Some(v) = p.content_type {
            out = out.with_content_type(short(v));
        }
        if let Some(v) = p.content_encoding {
            out = out.with_content_encoding(short(v));
        }
        if let Some(v) = p.delivery_mode {
            out = out.with_delivery_mode(v);
        }
        if let Some(v) = p.priority {
            out = out.with_priority(v);
        }
        if let Some(v) = p.correlation_id {
            out = out.with_correlation_id(short(v));
        }
        if let Some(v) = p.reply_to {
            out = out.with_reply_to(short(v));
        }
        if let Some(v) = p.expiration {
            out = out.with_expiration(short(v));
        }
        if let Some(v) = p.message_id {
            out = out.with_message_id(short(v));
        }
        if let Some(v) = p.timestamp {
            out = out.with_timestamp(v);
        }
        if let Some(v) = p.app_id {
            out = out.with_app_id(short(v));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn round_trips_every_kept_property() {
        let mut headers = FieldTable::default();
        headers.insert("ts".into(), AMQPValue::Timestamp(7));
        headers.insert("n".into(), AMQPValue::LongUInt(3));
        let p = Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers,
            delivery_mode: Some(2),
            priority: Some(4),
            correlation_id: Some("id".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(99),
            app_id: Some("a".into()),
        };
        let amqp: BasicProperties = p.clone().into();
        assert_eq!(Properties::from(&amqp), p);
    }
}
