//! Conversion between AMQP header values and JSON, and the shape of a header table.
//!
//! Celery's headers are a JSON-like tree (strings, numbers, lists, nested tables, null); lapin
//! gives them as `AMQPValue`. We look at headers as JSON so that the decoder, the result writer
//! and the dead-letter listing all see one representation.
//!
//! A header table can nest as deep as a frame allows (a nested list costs 5 bytes, so tens of
//! thousands of levels fit in kombu's 128 KiB frames), and every conversion here is recursive.
//! So [`shape`] measures depth and encoded size without recursion, the decoder refuses tables
//! deeper than [`MAX_HEADER_DEPTH`] before converting them, and the conversion itself stops at
//! that depth, whatever calls it.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// The deepest header nesting we accept (Celery's own headers nest two levels: `stamps`,
/// `timelimit`). Deeper tables are refused by the decoder and shown cut in listings.
pub const MAX_HEADER_DEPTH: usize = 64;

/// What stands in for a value nested deeper than [`MAX_HEADER_DEPTH`] in a listing.
pub const TOO_DEEP: &str = "<nested too deep>";

/// How deep a header table nests and how many bytes it takes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// 1 for a flat table; each nested table or list adds one.
    pub depth: usize,
    /// Its AMQP encoding, in bytes (the 4-byte length prefix included).
    pub encoded_bytes: usize,
}

/// The [`Shape`] of `table`, measured with an explicit stack (no recursion).
pub fn shape(table: &FieldTable) -> Shape {
    let mut depth = 1;
    let mut bytes = 4usize;
    let mut pending: Vec<(&AMQPValue, usize)> = Vec::new();
    for (k, v) in table.inner() {
        bytes = bytes.saturating_add(1 + k.as_str().len());
        pending.push((v, 1));
    }
    while let Some((value, level)) = pending.pop() {
        bytes = bytes.saturating_add(1);
        match value {
            AMQPValue::FieldArray(a) => {
                depth = depth.max(level + 1);
                bytes = bytes.saturating_add(4);
                pending.extend(a.as_slice().iter().map(|v| (v, level + 1)));
            }
            AMQPValue::FieldTable(t) => {
                depth = depth.max(level + 1);
                bytes = bytes.saturating_add(4);
                for (k, v) in t.inner() {
                    bytes = bytes.saturating_add(1 + k.as_str().len());
                    pending.push((v, level + 1));
                }
            }
            AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => {
                bytes = bytes.saturating_add(1)
            }
            AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => bytes = bytes.saturating_add(2),
            AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => {
                bytes = bytes.saturating_add(4)
            }
            AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => {
                bytes = bytes.saturating_add(8)
            }
            AMQPValue::DecimalValue(_) => bytes = bytes.saturating_add(5),
            AMQPValue::ShortString(s) => bytes = bytes.saturating_add(1 + s.as_str().len()),
            AMQPValue::LongString(s) => bytes = bytes.saturating_add(4 + s.as_bytes().len()),
            AMQPValue::ByteArray(b) => bytes = bytes.saturating_add(4 + b.as_slice().len()),
            AMQPValue::Void => {}
        }
    }
    Shape {
        depth,
        encoded_bytes: bytes,
    }
}

/// A whole header table as a JSON object; values nested deeper than [`MAX_HEADER_DEPTH`] become
/// the string [`TOO_DEEP`].
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table_at(table, 1)
}

fn table_at(table: &FieldTable, level: usize) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_at(v, level)))
        .collect()
}

/// One AMQP value as JSON. Byte strings that are not UTF-8 become lossy strings: headers are
/// metadata, and a readable approximation beats refusing the whole message.
pub fn to_json(value: &AMQPValue) -> Value {
    value_at(value, 1)
}

fn value_at(value: &AMQPValue, level: usize) -> Value {
    let nested = matches!(value, AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_));
    if nested && level >= MAX_HEADER_DEPTH {
        return Value::String(TOO_DEEP.to_owned());
    }
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(
            a.as_slice()
                .iter()
                .map(|v| value_at(v, level + 1))
                .collect(),
        ),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(table_at(t, level + 1)),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

/// A JSON value as an AMQP header value, the way kombu encodes Python values.
pub fn from_json(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                AMQPValue::LongLongInt(i)
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or_default())
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(from_json).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(json_to_table(map)),
    }
}

/// A JSON object as an AMQP header table.
pub fn json_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(ShortString::from(k.as_str()), from_json(v));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_celery_headers() {
        let headers = json!({
            "task": "core.celery.tasks.shift_tasks.add", "id": "c2e0", "retries": 2,
            "timelimit": [1800, null], "eta": null, "ignore_result": false, "stamps": {}
        });
        let table = json_to_table(headers.as_object().unwrap());
        assert_eq!(Value::Object(table_to_json(&table)), headers);
    }

    /// A list nested `depth` levels under the header `deep`, built without recursion.
    fn nested(depth: usize) -> FieldTable {
        let mut value = AMQPValue::Void;
        for _ in 0..depth {
            value = AMQPValue::FieldArray(FieldArray::from(vec![value]));
        }
        let mut table = FieldTable::default();
        table.insert("deep".into(), value);
        table
    }

    #[test]
    fn shape_measures_depth_and_wire_size() {
        let table = json_to_table(json!({"id": "abc", "n": 1}).as_object().unwrap());
        // 4 (table length) + "id": 1+2 key, 1 tag, 4+3 value; "n": 1+1 key, 1 tag, 8 value.
        assert_eq!(
            shape(&table),
            Shape {
                depth: 1,
                encoded_bytes: 4 + 3 + 1 + 7 + 2 + 1 + 8
            }
        );
        let deep = nested(10);
        assert_eq!(shape(&deep).depth, 11);
        // Each level: a tag and a 4-byte length; the innermost void: a tag.
        assert_eq!(shape(&deep).encoded_bytes, 4 + 5 + 10 * 5 + 1);
    }

    #[test]
    fn conversion_stops_at_the_depth_limit() {
        let deep = nested(100_000);
        assert_eq!(shape(&deep).depth, 100_001);
        let json = table_to_json(&deep);
        let mut v = &json["deep"];
        let mut levels = 0;
        while let Value::Array(items) = v {
            v = &items[0];
            levels += 1;
        }
        assert_eq!(levels, MAX_HEADER_DEPTH - 1);
        assert_eq!(v, TOO_DEEP);
        // Dropping 100,000 levels recurses; leak it rather than need a large test stack.
        std::mem::forget(deep);
    }
}
