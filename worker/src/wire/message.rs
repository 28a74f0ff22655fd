//! Decoding a broker delivery into a [`TaskMessage`].
//!
//! Celery producers send three shapes (celery/worker/strategy.py): protocol v2 (a `task` header,
//! body `[args, kwargs, embed]`), protocol v1 (no `task` header, body a dict with `task`, `id`,
//! `args`, ...), and a hybrid (v2 headers, v1 dict body). Every failure is a [`DecodeFailure`]
//! that keeps whatever identity the message did carry (task id and name), so the caller can
//! still store a FAILURE result under that id before dead-lettering the message. Celery's own
//! worker can be killed by one malformed message; this decoder never panics (see the property
//! test below).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use super::kombu_json;

/// Which of Celery's message shapes a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
    Hybrid,
}

/// A decoded Celery task request.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    pub id: String,
    pub task: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// `{callbacks, errbacks, chain, chord}`, each null or signatures; carried, not interpreted yet.
    pub embed: Map<String, Value>,
    pub retries: u32,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    /// `(hard, soft)` seconds, in the order Celery's code sends them.
    pub timelimit: (Option<f64>, Option<f64>),
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group_id: Option<String>,
    pub ignore_result: bool,
    pub protocol: Protocol,
    /// All headers as received, so that republishing (retries, replays) carries what we do not read.
    pub headers: Map<String, Value>,
}

impl TaskMessage {
    /// A request known only by id and name: what a result needs when the message itself could
    /// not be decoded.
    pub fn minimal(id: &str, task: Option<&str>) -> Self {
        Self {
            id: id.to_owned(),
            task: task.unwrap_or_default().to_owned(),
            args: Vec::new(),
            kwargs: Map::new(),
            embed: Map::new(),
            retries: 0,
            eta: None,
            expires: None,
            timelimit: (None, None),
            root_id: None,
            parent_id: None,
            group_id: None,
            ignore_result: false,
            protocol: Protocol::V2,
            headers: Map::new(),
        }
    }
}

/// Why a delivery could not be turned into a task.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "body holds more than {limit} JSON values (arguments, list items, fields); refused unread"
    )]
    TooManyValues { limit: usize },
    #[error("headers nest {depth} levels deep; at most {limit} are accepted")]
    HeadersTooDeep { depth: usize, limit: usize },
    #[error("unsupported content type {0:?}: this worker accepts only application/json")]
    ContentType(String),
    #[error("unsupported content encoding {0:?}: expected utf-8")]
    ContentEncoding(String),
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("can't decode message body: {0}")]
    NotJson(String),
    #[error("unknown message: no `task` header and the body is not a protocol v1 task")]
    Unknown,
    #[error("message has no task id")]
    MissingId,
    #[error("invalid task message: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// A short stable word for metrics, logs and the dead-letter `x-death-reason` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::TooManyValues { .. } => "too_many_values",
            Self::HeadersTooDeep { .. } => "headers_too_deep",
            Self::ContentType(_) => "content_type",
            Self::ContentEncoding(_) => "content_encoding",
            Self::NotUtf8 => "not_utf8",
            Self::NotJson(_) => "not_json",
            Self::Unknown => "unknown_message",
            Self::MissingId => "missing_id",
            Self::Invalid(_) => "invalid_message",
        }
    }
}

/// A decode error together with the identity the message carried, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeFailure {
    pub error: DecodeError,
    pub task_id: Option<String>,
    pub task: Option<String>,
}

/// What the decoder needs from a delivery; borrowed so tests and fuzzers need no broker.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    pub body: &'a [u8],
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub headers: &'a Map<String, Value>,
    pub correlation_id: Option<&'a str>,
}

/// What one message may hold. Both bounds are checked before the body is parsed, so a hostile
/// message costs a scan of its bytes, not the memory of its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// JSON values in the body: each list item, field and nested container counts one.
    pub max_values: usize,
}

impl Limits {
    /// The worker's defaults: 4 MiB, 100,000 values.
    pub const DEFAULT: Limits = Limits {
        max_body_bytes: 4 * 1024 * 1024,
        max_values: 100_000,
    };
}

/// An upper bound on the number of JSON values in `body`, without parsing it: commas, `[` and
/// `{` outside string literals, plus one. Malformed JSON is counted too; the parser refuses it
/// afterwards.
pub fn count_values(body: &[u8]) -> usize {
    let mut count = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => count = count.saturating_add(1),
                _ => {}
            }
        }
    }
    count
}

/// Decode one delivery within `limits`.
pub fn decode(raw: RawMessage<'_>, limits: Limits) -> Result<TaskMessage, DecodeFailure> {
    let max_body_bytes = limits.max_body_bytes;
    let header_id = raw
        .headers
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let header_task = raw
        .headers
        .get("task")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let fail = |error: DecodeError| DecodeFailure {
        error,
        task_id: header_id.clone(),
        task: header_task.clone(),
    };

    if raw.body.len() > max_body_bytes {
        return Err(fail(DecodeError::TooLarge {
            size: raw.body.len(),
            limit: max_body_bytes,
        }));
    }
    if count_values(raw.body) > limits.max_values {
        return Err(fail(DecodeError::TooManyValues {
            limit: limits.max_values,
        }));
    }
    if let Some(ct) = raw.content_type.filter(|ct| !ct.is_empty())
        && !ct.eq_ignore_ascii_case("application/json")
    {
        return Err(fail(DecodeError::ContentType(ct.to_owned())));
    }
    if let Some(enc) = raw.content_encoding.filter(|e| !e.is_empty()) {
        let enc = enc.to_ascii_lowercase();
        if enc != "utf-8" && enc != "utf8" && enc != "binary" {
            return Err(fail(DecodeError::ContentEncoding(enc)));
        }
    }
    let text = std::str::from_utf8(raw.body).map_err(|_| fail(DecodeError::NotUtf8))?;
    let mut body: Value =
        serde_json::from_str(text).map_err(|e| fail(DecodeError::NotJson(e.to_string())))?;
    kombu_json::untag(&mut body);

    match (&header_task, body) {
        (Some(task), Value::Array(parts)) => {
            decode_v2(task, header_id.clone(), parts, raw).map_err(fail)
        }
        // A dict body with v2 headers is the hybrid shape only if it carries the request;
        // anything else is the malformed message that kills Celery's own worker.
        (Some(task), Value::Object(dict))
            if dict.contains_key("args") || dict.contains_key("kwargs") =>
        {
            decode_v1(Some(task), dict, raw, Protocol::Hybrid).map_err(|error| DecodeFailure {
                error,
                task_id: header_id.clone(),
                task: Some(task.clone()),
            })
        }
        (Some(_), _) => Err(fail(DecodeError::Invalid(
            "body must be a JSON array [args, kwargs, embed]".into(),
        ))),
        (None, Value::Object(dict)) if dict.get("task").is_some_and(Value::is_string) => {
            let id = dict.get("id").and_then(Value::as_str).map(str::to_owned);
            let task = dict.get("task").and_then(Value::as_str).map(str::to_owned);
            decode_v1(None, dict, raw, Protocol::V1).map_err(|error| DecodeFailure {
                error,
                task_id: id,
                task,
            })
        }
        (None, _) => Err(fail(DecodeError::Unknown)),
    }
}

fn decode_v2(
    task: &str,
    id: Option<String>,
    parts: Vec<Value>,
    raw: RawMessage<'_>,
) -> Result<TaskMessage, DecodeError> {
    let id = id
        .or_else(|| {
            raw.correlation_id
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
        })
        .ok_or(DecodeError::MissingId)?;
    if parts.len() < 2 || parts.len() > 3 {
        return Err(DecodeError::Invalid(format!(
            "body must be [args, kwargs, embed], got an array of {} elements",
            parts.len()
        )));
    }
    let mut parts = parts.into_iter();
    let args = as_args(parts.next().unwrap_or(Value::Null))?;
    let kwargs = as_kwargs(parts.next().unwrap_or(Value::Null))?;
    let embed = match parts.next() {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(DecodeError::Invalid("embed must be an object".into())),
    };
    let h = raw.headers;
    Ok(TaskMessage {
        id,
        task: task.to_owned(),
        args,
        kwargs,
        embed,
        retries: retries(h.get("retries"))?,
        eta: time_field(h.get("eta"), "eta")?,
        expires: time_field(h.get("expires"), "expires")?,
        timelimit: timelimit(h.get("timelimit"))?,
        root_id: string_field(h.get("root_id")),
        parent_id: string_field(h.get("parent_id")),
        group_id: string_field(h.get("group")),
        ignore_result: h
            .get("ignore_result")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        protocol: Protocol::V2,
        headers: h.clone(),
    })
}

/// v1 and hybrid: the dict body holds the request; for hybrid, headers win where present.
fn decode_v1(
    header_task: Option<&String>,
    mut dict: Map<String, Value>,
    raw: RawMessage<'_>,
    protocol: Protocol,
) -> Result<TaskMessage, DecodeError> {
    let h = raw.headers;
    let pick = |key: &str, dict: &Map<String, Value>| -> Option<Value> {
        h.get(key)
            .filter(|v| !v.is_null())
            .or_else(|| dict.get(key))
            .cloned()
    };
    let task = match header_task {
        Some(t) => t.clone(),
        None => dict
            .get("task")
            .and_then(Value::as_str)
            .ok_or(DecodeError::Unknown)?
            .to_owned(),
    };
    let id = pick("id", &dict)
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .or_else(|| {
            raw.correlation_id
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
        })
        .ok_or(DecodeError::MissingId)?;
    let args = as_args(dict.remove("args").unwrap_or(Value::Null))?;
    let kwargs = as_kwargs(dict.remove("kwargs").unwrap_or(Value::Null))?;
    let mut embed = Map::new();
    for key in ["callbacks", "errbacks", "chain", "chord"] {
        embed.insert(key.into(), dict.get(key).cloned().unwrap_or(Value::Null));
    }
    let group = pick("group", &dict).or_else(|| dict.get("taskset").cloned());
    Ok(TaskMessage {
        id,
        task,
        args,
        kwargs,
        embed,
        retries: retries(pick("retries", &dict).as_ref())?,
        eta: time_field(pick("eta", &dict).as_ref(), "eta")?,
        expires: time_field(pick("expires", &dict).as_ref(), "expires")?,
        timelimit: timelimit(pick("timelimit", &dict).as_ref())?,
        root_id: string_field(pick("root_id", &dict).as_ref()),
        parent_id: string_field(pick("parent_id", &dict).as_ref()),
        group_id: string_field(group.as_ref()),
        ignore_result: pick("ignore_result", &dict)
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        protocol,
        headers: h.clone(),
    })
}

fn as_args(v: Value) -> Result<Vec<Value>, DecodeError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a),
        other => Err(DecodeError::Invalid(format!(
            "args must be a list, got {}",
            kind(&other)
        ))),
    }
}

fn as_kwargs(v: Value) -> Result<Map<String, Value>, DecodeError> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        other => Err(DecodeError::Invalid(format!(
            "kwargs must be a dict, got {}",
            kind(&other)
        ))),
    }
}

fn retries(v: Option<&Value>) -> Result<u32, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                DecodeError::Invalid(format!(
                    "retries must be a count, got {}",
                    quoted(&v.to_string())
                ))
            }),
    }
}

fn string_field(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

fn time_field(v: Option<&Value>, name: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(s).map(Some).ok_or_else(|| {
            DecodeError::Invalid(format!("{name} is not an ISO-8601 time: {}", quoted(s)))
        }),
        Some(other) => Err(DecodeError::Invalid(format!(
            "{name} must be an ISO-8601 string, got {}",
            kind(other)
        ))),
    }
}

/// ISO-8601 with an offset, or naive, which Celery means as UTC.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let s = s.trim_end_matches('Z');
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

fn timelimit(v: Option<&Value>) -> Result<(Option<f64>, Option<f64>), DecodeError> {
    let bad = || DecodeError::Invalid("timelimit must be [hard, soft] seconds or nulls".into());
    match v {
        None | Some(Value::Null) => Ok((None, None)),
        Some(Value::Array(a)) if a.len() == 2 => {
            let num = |v: &Value| match v {
                Value::Null => Ok(None),
                Value::Number(n) => n.as_f64().filter(|f| *f >= 0.0).map(Some).ok_or_else(bad),
                _ => Err(bad()),
            };
            Ok((num(&a[0])?, num(&a[1])?))
        }
        Some(_) => Err(bad()),
    }
}

/// A value from the message, quoted in an error: cut short, since errors are stored in results
/// and dead-letter headers.
fn quoted(s: &str) -> String {
    format!("{:?}", super::outgoing::truncate(s, 64))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const LIMIT: Limits = Limits {
        max_body_bytes: 1 << 20,
        max_values: 10_000,
    };

    fn raw<'a>(body: &'a [u8], headers: &'a Map<String, Value>) -> RawMessage<'a> {
        RawMessage {
            body,
            content_type: Some("application/json"),
            content_encoding: Some("utf-8"),
            headers,
            correlation_id: None,
        }
    }

    fn v2_headers() -> Map<String, Value> {
        json!({"lang":"py","task":"core.celery.tasks.shift_tasks.add","id":"c2e01216","shadow":null,
             "eta":"2026-11-25T22:15:25.808991+03:00","expires":"2026-11-25T22:16:25.808991+03:00",
             "group":null,"group_index":null,"retries":0,"timelimit":[1800,1500],"root_id":"c2e01216",
             "parent_id":null,"argsrepr":"(1, 1)","kwargsrepr":"{}","origin":"gen12679@vm",
             "ignore_result":false,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}})
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn decodes_the_captured_v2_message() {
        let headers = v2_headers();
        let body = br#"[[1,1],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]"#;
        let m = decode(raw(body, &headers), LIMIT).unwrap();
        assert_eq!(m.protocol, Protocol::V2);
        assert_eq!(m.id, "c2e01216");
        assert_eq!(m.task, "core.celery.tasks.shift_tasks.add");
        assert_eq!(m.args, vec![json!(1), json!(1)]);
        assert_eq!(m.timelimit, (Some(1800.0), Some(1500.0)));
        assert_eq!(
            m.eta.unwrap().to_rfc3339(),
            "2026-11-25T19:15:25.808991+00:00"
        );
        assert_eq!(m.root_id.as_deref(), Some("c2e01216"));
    }

    #[test]
    fn decodes_v1_and_hybrid() {
        let none = Map::new();
        let body = br#"{"task":"worker.echo","id":"v1-id","args":[1],"kwargs":{"a":2},"retries":3,"eta":"2026-01-01T00:00:00"}"#;
        let m = decode(raw(body, &none), LIMIT).unwrap();
        assert_eq!(
            (m.protocol, m.id.as_str(), m.retries),
            (Protocol::V1, "v1-id", 3)
        );
        assert_eq!(m.eta.unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");

        let headers = json!({"task": "worker.echo", "id": "h-id"})
            .as_object()
            .cloned()
            .unwrap();
        let body = br#"{"args":[1],"kwargs":{}}"#;
        let m = decode(raw(body, &headers), LIMIT).unwrap();
        assert_eq!((m.protocol, m.id.as_str()), (Protocol::Hybrid, "h-id"));
    }

    #[test]
    fn untags_kombu_values_in_args() {
        let headers = v2_headers();
        let body = br#"[[{"__type__":"decimal","__value__":"1.10"}],{},null]"#;
        let m = decode(raw(body, &headers), LIMIT).unwrap();
        assert_eq!(m.args, vec![json!("1.10")]);
    }

    #[test]
    fn malformed_messages_keep_their_identity() {
        let headers = v2_headers();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not_json"),
            (br#"{"a": 1}"#, "invalid_message"),
            (b"\xff\xfe", "not_utf8"),
            (br#"[1, {}, null]"#, "invalid_message"),
            (br#"[[], [], null]"#, "invalid_message"),
        ];
        for (body, reason) in cases {
            let f = decode(raw(body, &headers), LIMIT).unwrap_err();
            assert_eq!(f.error.reason(), reason, "body {body:?}");
            assert_eq!(f.task_id.as_deref(), Some("c2e01216"));
        }
        let mut no_id = v2_headers();
        no_id.remove("id");
        let f = decode(raw(b"[[],{},null]", &no_id), LIMIT).unwrap_err();
        assert_eq!(f.error, DecodeError::MissingId);
        let f = decode(raw(b"[]", &Map::new()), LIMIT).unwrap_err();
        assert_eq!(f.error, DecodeError::Unknown);
        let big = vec![b' '; 11];
        let small = Limits {
            max_body_bytes: 10,
            max_values: 10,
        };
        let f = decode(raw(&big, &headers), small).unwrap_err();
        assert_eq!(f.error.reason(), "too_large");
        let many = br#"[[1,2,3,4,5,6,7,8,9,10,11],{},null]"#;
        let roomy = Limits {
            max_body_bytes: 1000,
            max_values: 10,
        };
        let f = decode(raw(many, &headers), roomy).unwrap_err();
        assert_eq!(f.error.reason(), "too_many_values");
        assert_eq!(f.task_id.as_deref(), Some("c2e01216"));
        let mut r = raw(b"[[],{},null]", &headers);
        r.content_type = Some("application/x-python-serialize");
        assert_eq!(decode(r, LIMIT).unwrap_err().error.reason(), "content_type");
    }

    #[test]
    fn value_count_ignores_commas_inside_strings() {
        assert_eq!(count_values(br#"[1,2]"#), 3);
        assert_eq!(count_values(br#"["a,b,\\",[",x"]"#), 4);
        assert_eq!(count_values(br#"{"k":[{}]}"#), 4);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("task".to_string()),
                        Just("id".to_string()),
                        Just("args".to_string()),
                        Just("kwargs".to_string()),
                        Just("eta".to_string()),
                        Just("timelimit".to_string()),
                        Just("retries".to_string()),
                        Just("__type__".to_string()),
                        Just("__value__".to_string()),
                        ".{0,6}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(raw(&body, &v2_headers()), LIMIT);
            let _ = decode(raw(&body, &Map::new()), LIMIT);
        }

        #[test]
        fn never_panics_on_arbitrary_json(body in arb_json(), headers in arb_json()) {
            let headers = match headers { Value::Object(m) => m, _ => Map::new() };
            let bytes = serde_json::to_vec(&body).unwrap();
            let _ = decode(raw(&bytes, &headers), LIMIT);
            let _ = decode(raw(&bytes, &v2_headers()), LIMIT);
        }
    }
}
