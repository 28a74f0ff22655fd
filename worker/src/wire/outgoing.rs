//! Every message the worker publishes is built here: new tasks (`worker send`, scheduler
//! ticks), retries, dead letters, delayed messages and results waiting for Redis. Each builder returns an
//! [`OutgoingMessage`] — exchange, routing key, body, [`Properties`] — that the broker adapter
//! publishes as it is; no other module assembles headers or AMQP properties.
//!
//! Delays use Celery 5.5+'s native delayed delivery (kombu's `native_delayed_delivery`): a
//! message due in `n` whole seconds is published to the topic exchange `celery_delayed_27` with
//! routing key [`delayed_routing_key`] — `n` as 28 binary digits joined by dots, then the
//! destination queue — and RabbitMQ's per-level TTLs bring it to `celery_delayed_delivery`,
//! bound to the queue by `#.<queue>`, after `n` seconds.
//!
//! Pure: the clock and the publisher's identity (`origin`) are arguments.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Value, json};

use super::amqp_value::json_to_table;
use super::canvas::{CanvasError, Signature};
use super::properties::{PERSISTENT, Properties};
use super::{OutgoingTask, ResultMeta, TaskMessage};

/// Headers a dead letter carries besides the original ones.
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
pub const DEAD_LETTER_DETAIL: &str = "x-dead-letter-detail";
pub const DEAD_LETTER_AT: &str = "x-dead-letter-at";
pub const DEAD_LETTER_QUEUE: &str = "x-original-queue";
/// Set, with the original headers' size, when they were too large to keep (see below).
pub const DEAD_LETTER_HEADERS_DROPPED: &str = "x-dead-letter-headers-dropped";
/// All of them, for stripping on replay.
pub const DEAD_LETTER_HEADERS: [&str; 5] = [
    DEAD_LETTER_REASON,
    DEAD_LETTER_DETAIL,
    DEAD_LETTER_AT,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_HEADERS_DROPPED,
];

/// The largest original header table a dead letter keeps whole. A message's properties travel
/// in one frame (128 KiB as kombu and we negotiate it); headers that nearly fill it would not
/// fit with ours added, and a dead letter that cannot be published is a message that cannot be
/// settled. Above this, only the small top-level headers (`id`, `task`, ...) are kept.
pub const MAX_KEPT_HEADER_BYTES: usize = 96 * 1024;
/// The largest top-level header kept when the others are dropped.
const MAX_KEPT_HEADER_VALUE: usize = 256;

/// The longest `x-dead-letter-detail` we write. The detail may quote the message (an invalid
/// `eta`, say); unbounded, it could push the dead letter's headers past the frame size, and a
/// dead letter that cannot be published is a message that cannot be settled.
pub const MAX_DEAD_LETTER_DETAIL: usize = 1024;

/// The longest delay a message can wait (an eta, a countdown, a retry's backoff): 2^28 - 1
/// seconds, about 8.5 years — what kombu's native delayed delivery can express, so every
/// producer and this worker agree on it.
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs((1 << 28) - 1);

/// Bits of a delay's routing key (kombu's `MAX_NUMBER_OF_BITS_TO_USE`): levels 0..=27.
pub const DELAY_BITS: u32 = 28;
/// Where delayed messages end: the topic exchange our queues are bound to by `#.<queue>`.
pub const DELAYED_DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

/// The exchange and queue of delay level `level` (kombu's `level_name`, no prefix).
pub fn delay_level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// Why a delayed message cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    #[error("a delay must be at least 1 s and at most {max} s; got {0} s", max = (1u64 << DELAY_BITS) - 1)]
    OutOfRange(u64),
    #[error("a delayed message needs a destination queue")]
    NoQueue,
    #[error("the delayed routing key for queue {0:?} is longer than AMQP's 255 bytes")]
    KeyTooLong(String),
}

/// kombu's `calculate_routing_key`: `countdown` as 28 binary digits joined by dots, then
/// `.<routing_key>` with any delay prefix an earlier delay left on it removed first (a retried
/// task's routing key may carry one).
pub fn delayed_routing_key(countdown: u64, routing_key: &str) -> Result<String, DelayError> {
    if !(1..1 << DELAY_BITS).contains(&countdown) {
        return Err(DelayError::OutOfRange(countdown));
    }
    let base = strip_delay_prefix(routing_key);
    if base.is_empty() {
        return Err(DelayError::NoQueue);
    }
    let mut key = String::with_capacity(2 * DELAY_BITS as usize + base.len());
    for bit in (0..DELAY_BITS).rev() {
        key.push(if countdown >> bit & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(base);
    if key.len() > 255 {
        return Err(DelayError::KeyTooLong(base.to_owned()));
    }
    Ok(key)
}

/// `routing_key` without one leading delay prefix (28 `[01].` groups), as kombu strips it.
pub fn strip_delay_prefix(routing_key: &str) -> &str {
    let bytes = routing_key.as_bytes();
    let prefix = 2 * DELAY_BITS as usize;
    let is_prefix = bytes.len() >= prefix
        && bytes[..prefix]
            .chunks(2)
            .all(|c| (c[0] == b'0' || c[0] == b'1') && c[1] == b'.');
    if is_prefix {
        &routing_key[prefix..]
    } else {
        routing_key
    }
}

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// Empty: the default exchange, where the routing key is the queue (Celery routes tasks so);
    /// `celery_delayed_27` for a delayed message.
    pub exchange: String,
    /// The queue, or for a delayed message [`delayed_routing_key`].
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: Properties,
}

/// Why and when a message went to the dead-letter queue.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterNote<'a> {
    /// The queue it came from.
    pub queue: &'a str,
    /// A short stable word (`not_json`, `not_registered`, ...).
    pub reason: &'a str,
    /// The error, for people; truncated to [`MAX_DEAD_LETTER_DETAIL`] bytes.
    pub detail: &'a str,
    pub at: DateTime<Utc>,
}

/// A signature sent on by the worker: Celery's `sig.apply_async(args, **options)` from inside
/// a task (a callback, the next chain step, an errback, a chord body).
#[derive(Debug, Clone, Copy)]
pub struct SignatureCall<'a> {
    pub signature: &'a Signature,
    /// Prepended to its args unless it is immutable: the parent's result, or a failed task's id.
    pub first: Option<&'a Value>,
    pub parent_id: &'a str,
    pub root_id: &'a str,
    /// The rest of a chain, passed on as the new message's own `chain` (still reversed).
    pub chain: Option<&'a [Signature]>,
    /// `(group_id, group_index)` when it is sent as a member of a group.
    pub group: Option<(&'a str, usize)>,
    /// The queue when the signature names none: its task's route.
    pub default_queue: &'a str,
}

/// A signature's time option: seconds from now (`countdown`, a numeric `expires`) or an
/// ISO-8601 time (`eta`, `expires`), within [`MAX_DELAY`].
fn option_time(
    value: Option<&Value>,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(-1.0);
            if !(0.0..=MAX_DELAY.as_secs_f64()).contains(&secs) {
                return Err(format!(
                    "{name} must be between 0 and {} seconds",
                    MAX_DELAY.as_secs()
                ));
            }
            chrono::Duration::from_std(std::time::Duration::from_secs_f64(secs))
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .map(Some)
                .ok_or_else(|| format!("{name} is out of range"))
        }
        Some(Value::String(t)) => super::message::parse_time(t)
            .map(Some)
            .ok_or_else(|| format!("{name} is not an ISO-8601 time")),
        Some(_) => Err(format!("{name} must be seconds or an ISO-8601 time")),
    }
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// `s` cut to at most `max` bytes, on a character boundary, marked when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The top-level headers that are not tables or lists and are at most
/// [`MAX_KEPT_HEADER_VALUE`] bytes.
fn small_top_level_headers(headers: &FieldTable) -> FieldTable {
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        let small = match v {
            AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => false,
            AMQPValue::LongString(s) => s.as_bytes().len() <= MAX_KEPT_HEADER_VALUE,
            AMQPValue::ByteArray(b) => b.as_slice().len() <= MAX_KEPT_HEADER_VALUE,
            _ => true,
        };
        if small {
            kept.insert(ShortString::from(k.as_str()), v.clone());
        }
    }
    kept
}

impl OutgoingMessage {
    /// A new task, as kombu publishes it: JSON, persistent, the task id as correlation id, and a
    /// per-message TTL (`expiration`) when the task expires in the future. An expiry already
    /// passed gets no TTL: the consumer must see the message to store REVOKED.
    pub fn task(queue: &str, task: &OutgoingTask, origin: &str, now: DateTime<Utc>) -> Self {
        let mut properties =
            Properties::celery_task(&task.id, json_to_table(&task.headers(origin)));
        if let Some(expires) = task.expires {
            let ms = (expires - now).num_milliseconds();
            if ms > 0 {
                properties.expiration = Some(ms.to_string());
            }
        }
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: task.body(),
            properties,
        }
    }

    /// A signature sent as a new task, as Celery's `Signature.apply_async` inside a worker
    /// would: its frozen `task_id` (else a new id), `parent_id`/`root_id` of the sending task,
    /// its options mapped to headers (`countdown`/`eta`, `expires`, time limits, `group_id`,
    /// `link` and `link_error` as the new message's callbacks and errbacks), to the queue it
    /// names or else `call.default_queue`. Returns the new task's id with the message.
    pub fn signature(
        call: SignatureCall<'_>,
        origin: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, Self), CanvasError> {
        let sig = call.signature;
        let o = &sig.options;
        let invalid = |problem: String| CanvasError::Invalid {
            problem,
            at: format!("signature of {}", truncate(&sig.task, 64)),
        };
        let mut task = OutgoingTask::new(
            sig.task.clone(),
            sig.args_with(call.first),
            sig.kwargs.clone(),
        );
        if let Some(id) = sig.task_id() {
            task.id = id.to_owned();
        }
        task.eta = match option_time(o.get("countdown"), "countdown", now).map_err(invalid)? {
            Some(eta) => Some(eta),
            None => option_time(o.get("eta"), "eta", now).map_err(invalid)?,
        };
        task.expires = option_time(o.get("expires"), "expires", now).map_err(invalid)?;
        task.parent_id = Some(call.parent_id.to_owned());
        task.root_id = Some(call.root_id.to_owned());
        let h = &mut task.extra_headers;
        let (group, index) = match call.group {
            Some((gid, i)) => (json!(gid), json!(i)),
            None => (
                o.get("group_id").cloned().unwrap_or(Value::Null),
                o.get("group_index").cloned().unwrap_or(Value::Null),
            ),
        };
        h.insert("group".into(), group);
        h.insert("group_index".into(), index);
        let limit = |k: &str| {
            o.get(k)
                .filter(|v| v.is_number())
                .cloned()
                .unwrap_or(Value::Null)
        };
        h.insert(
            "timelimit".into(),
            json!([limit("time_limit"), limit("soft_time_limit")]),
        );
        if let Some(v) = o.get("ignore_result").filter(|v| v.is_boolean()) {
            h.insert("ignore_result".into(), v.clone());
        }
        if let Some(v) = o.get("shadow").filter(|v| v.is_string()) {
            h.insert("shadow".into(), v.clone());
        }
        let e = &mut task.embed;
        let list = |k: &str| match o.get(k) {
            Some(v @ Value::Array(_)) => v.clone(),
            Some(v @ Value::Object(_)) => json!([v]),
            _ => Value::Null,
        };
        e.insert("callbacks".into(), list("link"));
        e.insert("errbacks".into(), list("link_error"));
        let chain = match call.chain {
            Some(rest) if !rest.is_empty() => {
                Value::Array(rest.iter().map(Signature::to_json).collect())
            }
            Some(_) => Value::Null,
            None => list("chain"),
        };
        e.insert("chain".into(), chain);
        e.insert(
            "chord".into(),
            o.get("chord")
                .filter(|c| c.is_object())
                .cloned()
                .unwrap_or(Value::Null),
        );
        // We publish through the default exchange, by queue name: a signature that names
        // another exchange would land somewhere else, so it is refused (before the task runs:
        // the executor builds every message of a canvas first).
        let exchange = o
            .get("exchange")
            .and_then(Value::as_str)
            .filter(|x| !x.is_empty());
        if let (None, Some(x)) = (sig.queue(), exchange) {
            return Err(CanvasError::Unsupported {
                what: format!("publishing to the exchange {:?}", truncate(x, 64)),
                at: format!("signature of {}", truncate(&sig.task, 64)),
            });
        }
        let queue = sig.queue().unwrap_or(call.default_queue);
        let mut message = Self::task(queue, &task, origin, now);
        if let Some(p) = o.get("priority").and_then(Value::as_u64) {
            message.properties.priority = u8::try_from(p.min(255)).ok();
        }
        if let Some(r) = o.get("reply_to").and_then(Value::as_str) {
            message.properties.reply_to = Some(truncate(r, 255));
        }
        Ok((task.id, message))
    }

    /// Celery's `task.retry()`: the same id, body and bookkeeping, `retries + 1`, the new `eta`,
    /// back to the same queue.
    pub fn retry(queue: &str, message: &TaskMessage, eta: DateTime<Utc>) -> Self {
        let mut headers = message.headers.clone();
        headers.insert("lang".into(), json!("py"));
        headers.insert("task".into(), json!(message.task));
        headers.insert("id".into(), json!(message.id));
        headers.insert("retries".into(), json!(message.retries.saturating_add(1)));
        headers.insert("eta".into(), json!(iso(eta)));
        headers.insert(
            "root_id".into(),
            json!(message.root_id.as_deref().unwrap_or(&message.id)),
        );
        let body = json!([message.args, message.kwargs, message.embed]);
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: body.to_string().into_bytes(),
            properties: Properties::celery_task(&message.id, json_to_table(&headers)),
        }
    }

    /// A copy of a message for `<queue>.dead`: body and properties as they came, plus headers
    /// saying why and when, persistent, and without a per-message TTL (which would silently
    /// delete the dead letter).
    pub fn dead_letter(
        dead_letter_queue: &str,
        body: &[u8],
        original: &Properties,
        note: DeadLetterNote<'_>,
    ) -> Self {
        let mut properties = original.clone();
        properties.expiration = None;
        properties.delivery_mode = Some(PERSISTENT);
        let size = super::amqp_value::shape(&original.headers).encoded_bytes;
        if size > MAX_KEPT_HEADER_BYTES {
            properties.headers = small_top_level_headers(&original.headers);
            properties.headers.insert(
                DEAD_LETTER_HEADERS_DROPPED.into(),
                AMQPValue::LongLongInt(i64::try_from(size).unwrap_or(i64::MAX)),
            );
        }
        let h = &mut properties.headers;
        h.insert(DEAD_LETTER_REASON.into(), text(note.reason));
        h.insert(
            DEAD_LETTER_DETAIL.into(),
            text(&truncate(note.detail, MAX_DEAD_LETTER_DETAIL)),
        );
        h.insert(
            DEAD_LETTER_AT.into(),
            text(&note.at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        h.insert(DEAD_LETTER_QUEUE.into(), text(note.queue));
        Self {
            exchange: String::new(),
            routing_key: dead_letter_queue.to_owned(),
            body: body.to_vec(),
            properties,
        }
    }

    /// A dead letter on its way back to `queue`: the original message, without our headers.
    pub fn replayed(queue: &str, body: &[u8], dead: &Properties) -> Self {
        let mut properties = dead.clone();
        let mut headers = FieldTable::default();
        for (k, v) in dead.headers.inner() {
            if !DEAD_LETTER_HEADERS.contains(&k.as_str()) {
                headers.insert(ShortString::from(k.as_str()), v.clone());
            }
        }
        properties.headers = headers;
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: body.to_vec(),
            properties,
        }
    }

    /// A final result Redis could not take, parked in our durable queue until it can: the
    /// result document as the store writes it, persistent, with the task id as correlation id.
    pub fn undelivered_result(queue: &str, result: &ResultMeta) -> Result<Self, serde_json::Error> {
        let properties = Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            delivery_mode: Some(PERSISTENT),
            correlation_id: Some(result.task_id.clone()),
            ..Properties::default()
        };
        Ok(Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: serde_json::to_vec(result)?,
            properties,
        })
    }

    /// A message published again unchanged, straight to its queue (a delayed message of the
    /// old Redis store whose time has come).
    pub fn republish(queue: &str, body: Vec<u8>, properties: Properties) -> Self {
        Self {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body,
            properties,
        }
    }

    /// `message` (meant for its queue, `message.routing_key`) into the delay topology, to
    /// arrive in that queue after `countdown` whole seconds: the body and properties stay as
    /// they are (id, headers and `eta` included), only the exchange and routing key change.
    /// Persistent, since the wait must survive a broker restart.
    pub fn delayed(message: OutgoingMessage, countdown: u64) -> Result<Self, DelayError> {
        let routing_key = delayed_routing_key(countdown, &message.routing_key)?;
        let mut properties = message.properties;
        properties.delivery_mode = Some(PERSISTENT);
        Ok(Self {
            exchange: delay_level_name(DELAY_BITS - 1),
            routing_key,
            body: message.body,
            properties,
        })
    }

    /// The queue a message ends in: its routing key, without a delay prefix.
    pub fn destination_queue(&self) -> &str {
        strip_delay_prefix(&self.routing_key)
    }

    /// The AMQP properties, for publishing.
    pub fn amqp_properties(&self) -> BasicProperties {
        self.properties.clone().into()
    }

    /// A header as JSON (tests and logs).
    pub fn header(&self, name: &str) -> Option<Value> {
        self.properties
            .headers
            .inner()
            .get(name)
            .map(super::amqp_value::to_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn delayed_routing_keys_match_kombu() {
        // kombu: calculate_routing_key(864000, "q") (a 10-day countdown).
        let key = delayed_routing_key(864_000, "q").unwrap();
        assert_eq!(
            key,
            "0.0.0.0.0.0.0.0.1.1.0.1.0.0.1.0.1.1.1.1.0.0.0.0.0.0.0.0.q"
        );
        assert_eq!(
            delayed_routing_key(1, &key).unwrap(),
            format!("{}1.q", "0.".repeat(27))
        );
        assert_eq!(strip_delay_prefix(&key), "q");
        assert_eq!(strip_delay_prefix("0.1.q"), "0.1.q");
        assert_eq!(delayed_routing_key(0, "q"), Err(DelayError::OutOfRange(0)));
        assert_eq!(
            delayed_routing_key(1 << 28, "q"),
            Err(DelayError::OutOfRange(1 << 28))
        );
        assert_eq!(delayed_routing_key(5, ""), Err(DelayError::NoQueue));
        assert!(matches!(
            delayed_routing_key(5, &"x".repeat(250)),
            Err(DelayError::KeyTooLong(_))
        ));
        let mut t = OutgoingTask::new("worker.ping", vec![], Default::default());
        t.eta = Some(Utc::now());
        let m = OutgoingMessage::task("q", &t, "gen1@h", Utc::now());
        let d = OutgoingMessage::delayed(m.clone(), 3).unwrap();
        assert_eq!(d.exchange, "celery_delayed_27");
        assert_eq!(d.destination_queue(), "q");
        assert_eq!(d.properties.headers, m.properties.headers);
        assert_eq!(d.body, m.body);
    }

    proptest::proptest! {
        #[test]
        fn delayed_keys_encode_the_countdown_and_never_grow(
            countdown in 1u64..(1 << DELAY_BITS),
            again in 1u64..(1 << DELAY_BITS),
            queue in "[a-z0-9._-]{1,40}",
        ) {
            let key = delayed_routing_key(countdown, &queue).unwrap();
            let bits: String = key.split('.').take(DELAY_BITS as usize).collect();
            proptest::prop_assert_eq!(u64::from_str_radix(&bits, 2).unwrap(), countdown);
            proptest::prop_assert_eq!(strip_delay_prefix(&key), queue.as_str());
            // A retry of a delayed message replaces the prefix instead of adding one.
            let twice = delayed_routing_key(again, &key).unwrap();
            proptest::prop_assert_eq!(twice.len(), key.len());
        }
    }

    #[test]
    fn a_task_that_expires_gets_a_ttl_unless_already_expired() {
        let now = Utc::now();
        let mut t = OutgoingTask::new("worker.ping", vec![], Default::default());
        t.expires = Some(now + TimeDelta::seconds(2));
        let m = OutgoingMessage::task("q", &t, "gen1@h", now);
        assert_eq!(m.properties.expiration.as_deref(), Some("2000"));
        assert_eq!(m.properties.correlation_id.as_deref(), Some(t.id.as_str()));
        assert_eq!(m.properties.delivery_mode, Some(2));
        t.expires = Some(now - TimeDelta::seconds(2));
        let m = OutgoingMessage::task("q", &t, "gen1@h", now);
        assert_eq!(m.properties.expiration, None);
        assert!(m.header("expires").unwrap().as_str().is_some());
    }

    fn sig(v: Value) -> Signature {
        let embed = json!({ "callbacks": [v] });
        super::super::canvas::parse(embed.as_object().unwrap())
            .unwrap()
            .callbacks
            .remove(0)
    }

    #[test]
    fn a_signature_is_sent_as_celery_would_send_it() {
        let now = Utc::now();
        let s = sig(json!({"task": "t.next", "args": [2], "kwargs": {"k": 1},
            "options": {"task_id": "frozen", "queue": "named", "countdown": 10,
                        "link": {"task": "t.cb", "options": {}}, "time_limit": 30},
            "subtask_type": null, "immutable": false}));
        let rest = vec![sig(
            json!({"task": "t.last", "options": {"task_id": "last"}}),
        )];
        let call = SignatureCall {
            signature: &s,
            first: Some(&json!("result")),
            parent_id: "parent",
            root_id: "root",
            chain: Some(&rest),
            group: Some(("gid", 3)),
            default_queue: "celery",
        };
        let (id, m) = OutgoingMessage::signature(call, "gen1@h", now).unwrap();
        assert_eq!((id.as_str(), m.routing_key.as_str()), ("frozen", "named"));
        assert_eq!(m.header("parent_id").unwrap(), "parent");
        assert_eq!(m.header("root_id").unwrap(), "root");
        assert_eq!(m.header("group").unwrap(), "gid");
        assert_eq!(m.header("group_index").unwrap(), 3);
        assert_eq!(m.header("timelimit").unwrap(), json!([30, null]));
        let eta = super::super::message::parse_time(m.header("eta").unwrap().as_str().unwrap());
        assert!(((eta.unwrap() - now).num_milliseconds() - 10_000).abs() <= 1);
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body[0], json!(["result", 2]));
        assert_eq!(body[1], json!({"k": 1}));
        assert_eq!(body[2]["callbacks"][0]["task"], "t.cb");
        assert_eq!(body[2]["chain"][0]["options"]["task_id"], "last");
        assert_eq!(body[2]["chord"], Value::Null);
    }

    #[test]
    fn an_immutable_signature_keeps_its_args_and_unnamed_queues_take_the_route() {
        let s = sig(json!({"task": "t", "args": [1], "immutable": true}));
        let call = SignatureCall {
            signature: &s,
            first: Some(&json!("result")),
            parent_id: "p",
            root_id: "p",
            chain: None,
            group: None,
            default_queue: "shifts",
        };
        let (id, m) = OutgoingMessage::signature(call, "gen1@h", Utc::now()).unwrap();
        assert_eq!(m.routing_key, "shifts");
        assert_eq!(m.header("id").unwrap(), id.as_str());
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body[0], json!([1]));
        let s = sig(json!({"task": "t", "options": {"exchange": "elsewhere", "routing_key": "k"}}));
        let err = OutgoingMessage::signature(
            SignatureCall {
                signature: &s,
                ..call
            },
            "g",
            Utc::now(),
        );
        assert_eq!(err.unwrap_err().reason(), "unsupported_canvas");
        for bad in [json!(-1), json!(1e12), json!("soon")] {
            let s = sig(json!({"task": "t", "options": {"countdown": bad}}));
            let call = SignatureCall {
                signature: &s,
                ..call
            };
            assert!(OutgoingMessage::signature(call, "g", Utc::now()).is_err());
        }
    }

    #[test]
    fn retry_keeps_identity_and_counts() {
        let mut m = TaskMessage::minimal("abc", Some("t"));
        m.retries = 2;
        let eta = Utc::now();
        let out = OutgoingMessage::retry("q", &m, eta);
        assert_eq!(out.header("id").unwrap(), "abc");
        assert_eq!(out.header("retries").unwrap(), 3);
        assert_eq!(out.header("root_id").unwrap(), "abc");
        assert_eq!(out.header("eta").unwrap(), iso(eta));
        assert_eq!(
            serde_json::from_slice::<Value>(&out.body).unwrap()[0],
            json!([])
        );
    }

    #[test]
    fn dead_letters_drop_the_ttl_bound_their_detail_and_replay_clean() {
        let mut original = Properties::celery_task("id1", FieldTable::default());
        original.expiration = Some("5000".into());
        original.headers.insert("task".into(), text("worker.ping"));
        let long = "é".repeat(5000);
        let note = DeadLetterNote {
            queue: "q",
            reason: "invalid_message",
            detail: &long,
            at: Utc::now(),
        };
        let dead = OutgoingMessage::dead_letter("q.dead", b"body", &original, note);
        assert_eq!(dead.routing_key, "q.dead");
        assert_eq!(dead.properties.expiration, None);
        let detail = dead.header(DEAD_LETTER_DETAIL).unwrap();
        assert!(detail.as_str().unwrap().len() <= MAX_DEAD_LETTER_DETAIL);
        assert_eq!(dead.header(DEAD_LETTER_QUEUE).unwrap(), "q");
        assert_eq!(dead.header(DEAD_LETTER_HEADERS_DROPPED), None);
        let back = OutgoingMessage::replayed("q", &dead.body, &dead.properties);
        assert_eq!(back.header(DEAD_LETTER_REASON), None);
        assert_eq!(back.header("task").unwrap(), "worker.ping");
        assert_eq!(back.body, b"body");
    }

    #[test]
    fn headers_too_large_to_keep_are_dropped_but_the_identity_stays() {
        let mut original = Properties::celery_task("id1", FieldTable::default());
        original.headers.insert("id".into(), text("id1"));
        original.headers.insert("task".into(), text("worker.ping"));
        original
            .headers
            .insert("huge".into(), text(&"x".repeat(120 * 1024)));
        let note = DeadLetterNote {
            queue: "q",
            reason: "invalid_message",
            detail: "d",
            at: Utc::now(),
        };
        let dead = OutgoingMessage::dead_letter("q.dead", b"{}", &original, note);
        assert_eq!(dead.header("huge"), None);
        assert_eq!(dead.header("id").unwrap(), "id1");
        assert_eq!(dead.header("task").unwrap(), "worker.ping");
        assert!(
            dead.header(DEAD_LETTER_HEADERS_DROPPED)
                .unwrap()
                .as_i64()
                .unwrap()
                > 120 * 1024
        );
        assert!(super::super::amqp_value::shape(&dead.properties.headers).encoded_bytes < 4096);
    }
}
