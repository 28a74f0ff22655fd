//! Celery's remote control ("pidbox") on the wire, as kombu's `Mailbox` speaks it (kombu/pidbox.py,
//! celery/app/control.py): pure, no I/O.
//!
//! - Requests are JSON published to the fanout exchange `<namespace>.pidbox` (Celery's
//!   `control_exchange`, `celery` by default), with headers `clock` and `expires`; the body is
//!   `{method, arguments, destination, pattern, matcher}` plus, when a reply is wanted, `ticket`
//!   and `reply_to: {exchange, routing_key}`.
//! - Each worker consumes its own queue `<node>.<namespace>.pidbox` bound to that exchange:
//!   exclusive, auto-delete, `x-expires` 10 s and `x-message-ttl` 300 s (Celery's
//!   `control_queue_expires` and `control_queue_ttl`).
//! - A reply is `{"<node>": <reply>}`, published transient to the direct exchange
//!   `reply.<namespace>.pidbox` with the request's routing key and a `ticket` header; the client
//!   keeps the replies whose ticket is its own.
//!
//! Requests are attacker input: [`ControlRequest::parse`] bounds the body, the strings and the
//! destination list, and refuses anything else than this shape with a typed error.

use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Map, Value, json};

use super::properties::{CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON, Properties};

/// The largest request body read; kombu's requests are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest method, ticket, node name or routing key accepted (AMQP short strings are 255).
pub const MAX_NAME: usize = 255;
/// The most nodes a `destination` may list.
pub const MAX_DESTINATIONS: usize = 1024;

/// Celery's `control_queue_ttl` (seconds): messages in a node or reply queue live this long.
pub const QUEUE_MESSAGE_TTL_MS: i64 = 300_000;
/// Celery's `control_queue_expires` (seconds): an unused node or reply queue is deleted after it.
pub const QUEUE_EXPIRES_MS: i64 = 10_000;
/// AMQP's transient delivery mode: replies and requests are not persisted.
pub const TRANSIENT: u8 = 1;

/// The names of one mailbox, derived from the namespace as kombu derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxNames {
    pub namespace: String,
}

impl MailboxNames {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The fanout exchange requests are published to (`Mailbox.exchange_fmt`).
    pub fn exchange(&self) -> String {
        format!("{}.pidbox", self.namespace)
    }

    /// The direct exchange replies go to (`Mailbox.reply_exchange_fmt`).
    pub fn reply_exchange(&self) -> String {
        format!("reply.{}.pidbox", self.namespace)
    }

    /// A node's own queue (`Mailbox.get_queue`).
    pub fn node_queue(&self, node: &str) -> String {
        format!("{node}.{}.pidbox", self.namespace)
    }

    /// A client's reply queue (`Mailbox.get_reply_queue`), bound with routing key `oid`.
    pub fn reply_queue(&self, oid: &str) -> String {
        format!("{oid}.{}", self.reply_exchange())
    }
}

/// The arguments kombu declares node and reply queues with.
pub fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES_MS));
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(QUEUE_MESSAGE_TTL_MS),
    );
    args
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub exchange: String,
    pub routing_key: String,
}

/// Which nodes a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Every node (`destination` null or empty, no pattern).
    All,
    /// The nodes named.
    Nodes(Vec<String>),
    /// Nodes whose name matches `pattern` with kombu's `matcher` (`glob` or `pcre`).
    Pattern { pattern: String, matcher: String },
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    pub method: String,
    pub arguments: Map<String, Value>,
    pub destination: Destination,
    /// Present when the sender waits for replies.
    pub reply: Option<(ReplyTo, String)>,
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control message of {size} bytes exceeds {MAX_REQUEST_BYTES} bytes")]
    TooLarge { size: usize },
    #[error("control message is not a JSON object: {0}")]
    NotJson(String),
    #[error("control message field `{field}` is invalid: {why}")]
    Field { field: &'static str, why: String },
}

fn field(field: &'static str, why: impl Into<String>) -> ControlError {
    ControlError::Field {
        field,
        why: why.into(),
    }
}

/// A bounded, non-empty string field.
fn name(value: Option<&Value>, what: &'static str) -> Result<String, ControlError> {
    match value {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME => Ok(s.clone()),
        Some(Value::String(s)) if s.is_empty() => Err(field(what, "empty")),
        Some(Value::String(s)) => Err(field(
            what,
            format!("{} bytes, at most {MAX_NAME}", s.len()),
        )),
        _ => Err(field(what, "not a string")),
    }
}

impl ControlRequest {
    /// Decode a request body (JSON, as kombu serializes it).
    pub fn parse(body: &[u8]) -> Result<Self, ControlError> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(ControlError::TooLarge { size: body.len() });
        }
        // serde_json refuses nesting deeper than 128 levels, so a hostile body cannot recurse far.
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| ControlError::NotJson(e.to_string()))?;
        let Value::Object(doc) = doc else {
            return Err(ControlError::NotJson("not an object".into()));
        };
        let method = name(doc.get("method"), "method")?;
        let arguments = match doc.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(field("arguments", "not an object")),
        };
        let destination = match doc.get("destination") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.len() > MAX_DESTINATIONS => {
                return Err(field(
                    "destination",
                    format!("{} nodes, at most {MAX_DESTINATIONS}", items.len()),
                ));
            }
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| name(Some(v), "destination"))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            // kombu's client refuses anything but a list; a bare string is read as one node.
            Some(v @ Value::String(_)) => Some(vec![name(Some(v), "destination")?]),
            Some(_) => return Err(field("destination", "not a list")),
        };
        let pattern = match (doc.get("pattern"), doc.get("matcher")) {
            (Some(Value::String(p)), Some(Value::String(m))) if !p.is_empty() && !m.is_empty() => {
                Some((name(doc.get("pattern"), "pattern")?, m.clone()))
            }
            _ => None,
        };
        // kombu: a non-empty destination wins, then a pattern with its matcher, else everyone.
        let destination = match (destination, pattern) {
            (Some(nodes), _) if !nodes.is_empty() => Destination::Nodes(nodes),
            (_, Some((pattern, matcher))) => Destination::Pattern { pattern, matcher },
            _ => Destination::All,
        };
        let reply = match doc.get("reply_to") {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => {
                let reply_to = ReplyTo {
                    exchange: name(r.get("exchange"), "reply_to.exchange")?,
                    routing_key: name(r.get("routing_key"), "reply_to.routing_key")?,
                };
                let ticket = name(doc.get("ticket"), "ticket")?;
                Some((reply_to, ticket))
            }
            Some(_) => return Err(field("reply_to", "not an object")),
        };
        Ok(Self {
            method,
            arguments,
            destination,
            reply,
        })
    }

    /// Whether the node named `node` should act on this request (kombu's `Node.handle_message`).
    pub fn is_for(&self, node: &str) -> bool {
        match &self.destination {
            Destination::All => true,
            Destination::Nodes(nodes) => nodes.iter().any(|n| n == node),
            Destination::Pattern { pattern, matcher } => match matcher.as_str() {
                "glob" => glob_match(pattern.as_bytes(), node.as_bytes()),
                // `pcre` would need a regex engine on attacker input; such a request is for no
                // node of ours (tracked as unsupported by the caller's log).
                _ => false,
            },
        }
    }
}

/// `fnmatch.fnmatch` without character classes: `*` any run, `?` any one byte. Iterative with
/// one backtrack point, so time is O(pattern × name) at worst and nothing recurses.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// A control message ready to publish: to `exchange` with `routing_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlMessage {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Properties,
}

impl ControlMessage {
    /// The reply of node `node` to a request, as kombu's `Mailbox._publish_reply` sends it.
    pub fn reply(reply_to: &ReplyTo, ticket: &str, node: &str, reply: &Value, clock: u64) -> Self {
        let mut headers = FieldTable::default();
        headers.insert("ticket".into(), long_string(ticket));
        headers.insert(
            "clock".into(),
            AMQPValue::LongLongInt(i64::try_from(clock).unwrap_or(i64::MAX)),
        );
        let mut body = Map::new();
        body.insert(node.to_owned(), reply.clone());
        let body = Value::Object(body);
        Self {
            exchange: reply_to.exchange.clone(),
            routing_key: reply_to.routing_key.clone(),
            body: body.to_string().into_bytes(),
            properties: control_properties(headers),
        }
    }

    /// A request as kombu's `Mailbox._publish` sends it; `reply` is the reply exchange, the
    /// client's routing key (its oid) and the ticket when replies are wanted.
    pub fn request(
        names: &MailboxNames,
        method: &str,
        arguments: &Map<String, Value>,
        destination: Option<&[String]>,
        reply: Option<(&str, &str)>,
        expires_unix: f64,
    ) -> Self {
        let mut body = json!({
            "method": method,
            "arguments": arguments,
            "destination": destination,
            "pattern": null,
            "matcher": null,
        });
        if let Some((oid, ticket)) = reply {
            body["ticket"] = json!(ticket);
            body["reply_to"] = json!({"exchange": names.reply_exchange(), "routing_key": oid});
        }
        let mut headers = FieldTable::default();
        headers.insert("clock".into(), AMQPValue::LongLongInt(1));
        headers.insert("expires".into(), AMQPValue::Double(expires_unix));
        Self {
            exchange: names.exchange(),
            routing_key: String::new(),
            body: body.to_string().into_bytes(),
            properties: control_properties(headers),
        }
    }
}

/// JSON, transient, as kombu publishes mailbox messages.
fn control_properties(headers: FieldTable) -> Properties {
    Properties {
        content_type: Some(CONTENT_TYPE_JSON.into()),
        content_encoding: Some(CONTENT_ENCODING_UTF8.into()),
        headers,
        delivery_mode: Some(TRANSIENT),
        priority: Some(0),
        ..Properties::default()
    }
}

/// Python's `repr()` of a string, as Celery quotes names in its error replies
/// (`KeyError('nosuch')`).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c) & 0xff)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kombu_request(destination: Value) -> Vec<u8> {
        json!({
            "method": "ping", "arguments": {}, "destination": destination,
            "pattern": null, "matcher": null, "ticket": "t-1",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid-1"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn parses_what_kombu_sends_and_routes_by_destination() {
        let r = ControlRequest::parse(&kombu_request(Value::Null)).unwrap();
        assert_eq!(r.method, "ping");
        assert!(r.is_for("celery@a"));
        let (to, ticket) = r.reply.clone().unwrap();
        assert_eq!(
            (
                to.exchange.as_str(),
                to.routing_key.as_str(),
                ticket.as_str()
            ),
            ("reply.celery.pidbox", "oid-1", "t-1")
        );
        let r = ControlRequest::parse(&kombu_request(json!(["celery@b"]))).unwrap();
        assert!(!r.is_for("celery@a") && r.is_for("celery@b"));
        let cast = br#"{"method": "revoke", "arguments": {"task_id": "x"}, "destination": null}"#;
        assert_eq!(ControlRequest::parse(cast).unwrap().reply, None);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for body in [
            &b"not json"[..],
            b"[1, 2]",
            br#"{"arguments": {}}"#,
            br#"{"method": 5}"#,
            br#"{"method": "ping", "arguments": [1]}"#,
            br#"{"method": "ping", "destination": 7}"#,
            br#"{"method": "ping", "reply_to": {"exchange": "x"}, "ticket": "t"}"#,
            br#"{"method": "ping", "reply_to": {"exchange": "x", "routing_key": "k"}}"#,
        ] {
            assert!(
                ControlRequest::parse(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(matches!(
            ControlRequest::parse(&big),
            Err(ControlError::TooLarge { .. })
        ));
        let long = json!({"method": "x".repeat(MAX_NAME + 1)}).to_string();
        assert!(ControlRequest::parse(long.as_bytes()).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(ControlRequest::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn glob_patterns_match_like_fnmatch() {
        assert!(glob_match(b"celery@*", b"celery@host"));
        assert!(glob_match(b"*@h?st", b"w1@host"));
        assert!(!glob_match(b"celery@*", b"worker@host"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"a*b*c", b"aXbY"));
        let hostile = format!("{}b", "*a".repeat(100));
        assert!(!glob_match(hostile.as_bytes(), "a".repeat(255).as_bytes()));
    }

    #[test]
    fn replies_and_requests_have_kombus_shape() {
        let to = ReplyTo {
            exchange: "reply.celery.pidbox".into(),
            routing_key: "oid".into(),
        };
        let m = ControlMessage::reply(&to, "t-1", "celery@a", &json!({"ok": "pong"}), 3);
        assert_eq!(m.exchange, "reply.celery.pidbox");
        assert_eq!(m.routing_key, "oid");
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body, json!({"celery@a": {"ok": "pong"}}));
        assert_eq!(m.properties.delivery_mode, Some(TRANSIENT));
        let names = MailboxNames::new("celery");
        let q = ControlMessage::request(&names, "ping", &Map::new(), None, Some(("oid", "t")), 1.0);
        assert_eq!(q.exchange, "celery.pidbox");
        let parsed = ControlRequest::parse(&q.body).unwrap();
        assert_eq!(parsed.reply.unwrap().0.exchange, "reply.celery.pidbox");
        assert_eq!(names.node_queue("celery@a"), "celery@a.celery.pidbox");
        assert_eq!(names.reply_queue("oid"), "oid.reply.celery.pidbox");
    }

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(py_repr("nosuch"), "'nosuch'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
    }
}
