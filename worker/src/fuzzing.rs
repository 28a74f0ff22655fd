//! The whole inbound path as one function of bytes, for the fuzz target (`fuzz/`) and for
//! replaying its committed corpus in `cargo test`. Not an API: hidden from the docs.
//!
//! Input layout: two bytes (big-endian) giving the length of an AMQP content-header property
//! list as lapin parses it off the wire (flags, content type, encoding, the header table, ...),
//! those bytes, then the message body. From there it goes the way a delivery goes: the
//! properties are read as the executor reads them ([`crate::wire::delivery::read`]), the
//! arguments are bound to every registered job's parameters, and the documents and messages the
//! worker would write are built: the result documents (SUCCESS, FAILURE, RETRY, REVOKED), the
//! retry message, and the dead letter for a message that cannot be read. The invariants checked
//! are the ones the worker relies on: nothing panics, what we publish stays within the header
//! size and depth we accept ourselves, and every stored document is JSON with the right status.

use chrono::{DateTime, TimeDelta, Utc};
use lapin::protocol::basic::{AMQPProperties, parse_properties};
use serde_json::Value;

use crate::app::registry::{self, CallArgs};
use crate::wire::amqp_value::{self, MAX_HEADER_DEPTH};
use crate::wire::delivery::{self, Delivered};
use crate::wire::message::Limits;
use crate::wire::outgoing::{DeadLetterNote, MAX_KEPT_HEADER_BYTES};
use crate::wire::result::Origin;
use crate::wire::{OutgoingMessage, Properties, ResultMeta, TaskError};

/// Room the worker's own headers (dead-letter reason, detail, time, queue; retry fields) add on
/// top of the original headers it keeps.
const OWN_HEADER_BYTES: usize = 8 * 1024;

/// Which way an input went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Decoded into a task: bound, result documents and retries built.
    Decoded,
    /// Refused: dead letter built.
    Refused,
}

/// Run one input through the inbound path. Panics only when an invariant is broken.
pub fn inbound(data: &[u8]) -> Path {
    let (properties, body) = split(data);
    let delivered = Delivered::new(&properties, body);
    let now = Utc::now();
    let original = Properties::from(&properties);
    match delivery::read(delivered, Limits::DEFAULT) {
        Ok(message) => {
            let call = CallArgs {
                args: message.args.clone(),
                kwargs: message.kwargs.clone(),
            };
            for job in registry::catalogue().iter() {
                // Refusals are the expected outcome for most inputs; a panic is the bug.
                let _ = job.bind(&call);
            }
            let origin = Origin {
                message: &message,
                queue: "fuzz",
                hostname: "fuzz@localhost",
                extended: true,
            };
            let error = TaskError::runtime_error(format!("{:?}", message.args));
            stored(
                &ResultMeta::success(Value::Array(message.args.clone()), origin),
                "SUCCESS",
            );
            stored(&ResultMeta::failure(&error, origin), "FAILURE");
            stored(&ResultMeta::retry(&error, origin), "RETRY");
            stored(
                &ResultMeta::revoked(&TaskError::expired(), origin),
                "REVOKED",
            );
            stored(&ResultMeta::started(origin), "STARTED");
            for eta in [now, message.eta.unwrap_or(now), far(now)] {
                published(&OutgoingMessage::retry("fuzz", &message, eta), &original);
            }
            Path::Decoded
        }
        Err(failure) => {
            let detail = failure.error.to_string();
            let dead = OutgoingMessage::dead_letter(
                "fuzz.dead",
                body,
                &original,
                DeadLetterNote {
                    queue: "fuzz",
                    reason: failure.error.reason(),
                    detail: &detail,
                    at: now,
                },
            );
            published(&dead, &original);
            Path::Refused
        }
    }
}

fn split(data: &[u8]) -> (AMQPProperties, &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return (AMQPProperties::default(), data);
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (header, body) = rest.split_at(len);
    let properties = parse_properties(header).map(|(_, p)| p).unwrap_or_default();
    (properties, body)
}

/// The longest delay the worker publishes, from now.
fn far(now: DateTime<Utc>) -> DateTime<Utc> {
    TimeDelta::from_std(crate::wire::outgoing::MAX_DELAY)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

fn stored(meta: &ResultMeta, status: &str) {
    let json = serde_json::to_string(meta).expect("a result document is always JSON");
    let back: Value = serde_json::from_str(&json).expect("a result document parses back");
    assert_eq!(back["status"], status, "stored status");
}

/// What we publish must be what we would accept: within the depth we read and, unless the
/// original itself was that large and is passed on as it came, within the size we keep.
fn published(message: &OutgoingMessage, original: &Properties) {
    let shape = amqp_value::shape(&message.properties.headers);
    let original_shape = amqp_value::shape(&original.headers);
    assert!(
        shape.depth <= original_shape.depth.max(MAX_HEADER_DEPTH),
        "published headers nested {} deep",
        shape.depth
    );
    if original_shape.encoded_bytes > MAX_KEPT_HEADER_BYTES {
        assert!(
            shape.encoded_bytes <= MAX_KEPT_HEADER_BYTES + OWN_HEADER_BYTES,
            "published headers of {} bytes from an original of {}",
            shape.encoded_bytes,
            original_shape.encoded_bytes
        );
    }
    let _ = message.amqp_properties();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Path as Went;

    /// Every input of the committed corpus (`fuzz/corpus/inbound`) replays without a panic, so
    /// a regression the fuzzer once found stays found without running the fuzzer.
    #[test]
    fn the_committed_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/inbound");
        let (mut decoded, mut refused) = (0, 0);
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/inbound exists") {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            match super::inbound(&data) {
                Went::Decoded => decoded += 1,
                Went::Refused => refused += 1,
            }
        }
        // The seeds (fuzz/seeds.py) hold 20-odd real producer messages and hostile ones, seven of which cannot be read.
        assert!(
            decoded >= 20,
            "{decoded} corpus inputs decoded ({})",
            dir.display()
        );
        assert!(
            refused >= 6,
            "{refused} corpus inputs refused ({})",
            dir.display()
        );
    }
}
