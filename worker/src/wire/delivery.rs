//! One delivery as the broker hands it over — the AMQP header table, the content properties
//! and the body — read into a [`TaskMessage`].
//!
//! This is the whole inbound path before anything runs: the header table is measured without
//! recursion before anything recursive touches it, converted to JSON, and decoded within the
//! limits. The executor and the fuzz target (`fuzz/fuzz_targets/inbound.rs`) call this same
//! function, so what is fuzzed is what runs.

use std::sync::LazyLock;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::amqp_value::{self, MAX_HEADER_DEPTH};
use super::message::{DecodeError, DecodeFailure, Limits, RawMessage, TaskMessage, decode};

/// What a delivery carries that decoding reads.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    pub headers: &'a FieldTable,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub body: &'a [u8],
}

static NO_HEADERS: LazyLock<FieldTable> = LazyLock::new(FieldTable::default);

impl<'a> Delivered<'a> {
    /// What a delivery with these properties and this body carries, borrowed.
    pub fn new(properties: &'a BasicProperties, body: &'a [u8]) -> Self {
        fn text(s: &Option<ShortString>) -> Option<&str> {
            s.as_ref().map(ShortString::as_str)
        }
        Self {
            headers: properties.headers().as_ref().unwrap_or(&NO_HEADERS),
            content_type: text(properties.content_type()),
            content_encoding: text(properties.content_encoding()),
            correlation_id: text(properties.correlation_id()),
            body,
        }
    }
}

/// Decode one delivery, or say why it cannot be run (with the id and task name it carried, so
/// that a FAILURE can be stored under its id).
pub fn read(delivered: Delivered<'_>, limits: Limits) -> Result<TaskMessage, DecodeFailure> {
    let shape = amqp_value::shape(delivered.headers);
    if shape.depth > MAX_HEADER_DEPTH {
        return Err(DecodeFailure {
            error: DecodeError::HeadersTooDeep {
                depth: shape.depth,
                limit: MAX_HEADER_DEPTH,
            },
            task_id: task_id(delivered.headers, delivered.correlation_id),
            task: top_level_string(delivered.headers, "task"),
        });
    }
    let headers = amqp_value::table_to_json(delivered.headers);
    decode(
        RawMessage {
            body: delivered.body,
            content_type: delivered.content_type,
            content_encoding: delivered.content_encoding,
            headers: &headers,
            correlation_id: delivered.correlation_id,
        },
        limits,
    )
}

/// A top-level string header, read without converting the table.
pub fn top_level_string(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The task id a delivery carries (`id` header, else the correlation id), if any.
pub fn task_id(table: &FieldTable, correlation_id: Option<&str>) -> Option<String> {
    top_level_string(table, "id")
        .or_else(|| correlation_id.map(str::to_owned))
        .filter(|id| !id.is_empty())
}
