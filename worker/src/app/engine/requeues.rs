//! How often a message could not be settled, so that none is requeued forever.
//!
//! A delivery goes back to its queue when its outcome cannot be recorded (the retry, the dead
//! letter or the delayed copy could not be published). That is right for an outage, and wrong
//! for a message that can never be settled — it would circle between the queue and the worker
//! for ever, taking a slot each time. So each requeue is counted per message (by task id, or
//! by a hash of the body when there is none); after [`MAX_ATTEMPTS`] the executor parks the
//! message in the dead-letter queue instead.
//!
//! The counts live in memory and are bounded ([`CAPACITY`] messages, the oldest forgotten
//! first): a replica that restarts, or another replica, starts counting again, which only
//! delays the parking. RabbitMQ's classic queues carry no delivery count we could use instead
//! (only the `redelivered` flag).

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

/// Requeues of one message before it is parked in the dead-letter queue.
pub(crate) const MAX_ATTEMPTS: u32 = 5;
/// Messages whose requeues are remembered.
const CAPACITY: usize = 10_000;

/// Identifies a message across its redeliveries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum MessageKey {
    TaskId(String),
    Body(u64),
}

impl MessageKey {
    /// By task id when the message names one, else by its body.
    pub(crate) fn of(task_id: Option<&str>, body: &[u8]) -> Self {
        match task_id.filter(|id| !id.is_empty()) {
            Some(id) => Self::TaskId(id.to_owned()),
            None => {
                let mut h = DefaultHasher::new();
                body.hash(&mut h);
                Self::Body(h.finish())
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    attempts: HashMap<MessageKey, u32>,
    order: VecDeque<MessageKey>,
}

/// Requeue counts per message, bounded.
#[derive(Default)]
pub(crate) struct Requeues {
    counts: Mutex<Counts>,
}

impl Requeues {
    /// Count one more failed settlement of `key`; returns how many there were so far.
    pub(crate) fn record(&self, key: &MessageKey) -> u32 {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !c.attempts.contains_key(key) {
            if c.order.len() >= CAPACITY
                && let Some(oldest) = c.order.pop_front()
            {
                c.attempts.remove(&oldest);
            }
            c.order.push_back(key.clone());
        }
        let n = c.attempts.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// The message was settled: forget it.
    pub(crate) fn forget(&self, key: &MessageKey) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.attempts.remove(key).is_some() {
            c.order.retain(|k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_message_and_forgets_settled_ones() {
        let r = Requeues::default();
        let a = MessageKey::of(Some("a"), b"x");
        let b = MessageKey::of(None, b"body");
        assert_eq!(r.record(&a), 1);
        assert_eq!(r.record(&a), 2);
        assert_eq!(r.record(&b), 1);
        assert_eq!(MessageKey::of(None, b"body"), b);
        r.forget(&a);
        assert_eq!(r.record(&a), 1);
    }

    #[test]
    fn stays_bounded() {
        let r = Requeues::default();
        for i in 0..(CAPACITY + 10) {
            r.record(&MessageKey::TaskId(i.to_string()));
        }
        let c = r.counts.lock().unwrap();
        assert_eq!(c.attempts.len(), CAPACITY);
        assert_eq!(c.order.len(), CAPACITY);
        assert!(!c.attempts.contains_key(&MessageKey::TaskId("0".into())));
    }
}
