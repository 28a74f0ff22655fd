//! kombu's JSON type tags.
//!
//! kombu serialises Python values JSON cannot carry as tagged objects:
//! `{"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"}`, and likewise `date`,
//! `time`, `decimal` (a string, so no precision is lost), `uuid`, `bytes` and `base64`.
//! Jobs take typed arguments, so we replace each tag by its plain value: an ISO string parses
//! into `chrono` types, a decimal string into `rust_decimal`, a uuid string into a `String`.

use serde_json::Value;

const TAGS: &[&str] = &[
    "datetime", "date", "time", "decimal", "uuid", "bytes", "base64",
];

/// Replace every kombu tagged object in `value` by its untagged value, in place.
pub fn untag(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(untag),
        Value::Object(map) => {
            let tagged = map.len() == 2
                && map
                    .get("__type__")
                    .and_then(Value::as_str)
                    .is_some_and(|t| TAGS.contains(&t));
            if tagged && let Some(inner) = map.remove("__value__") {
                *value = inner;
                return;
            }
            map.values_mut().for_each(untag);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn untags_nested_values() {
        let mut v = json!([
            {"__type__": "datetime", "__value__": "2026-01-02T03:04:05+00:00"},
            {"amount": {"__type__": "decimal", "__value__": "12.50"}},
            [{"__type__": "uuid", "__value__": "7f1c"}]
        ]);
        untag(&mut v);
        assert_eq!(
            v,
            json!(["2026-01-02T03:04:05+00:00", {"amount": "12.50"}, ["7f1c"]])
        );
    }

    #[test]
    fn leaves_ordinary_objects_alone() {
        let mut v = json!({"__type__": "mine", "__value__": 1});
        let before = v.clone();
        untag(&mut v);
        assert_eq!(v, before);
    }
}
