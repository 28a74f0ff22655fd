//! Conversion between AMQP header values and JSON.
//!
//! Celery's headers are a JSON-like tree (strings, numbers, lists, nested tables, null); lapin
//! gives them as `AMQPValue`. We look at headers as JSON so that the decoder, the result writer
//! and the dead-letter listing all see one representation.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// A whole header table as a JSON object.
pub fn table_to_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
        .collect()
}

/// One AMQP value as JSON. Byte strings that are not UTF-8 become lossy strings: headers are
/// metadata, and a readable approximation beats refusing the whole message.
pub fn to_json(value: &AMQPValue) -> Value {
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
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
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
}
