//! Keeps the bot under Telegram's limits: about 30 messages a second overall and one a second per
//! chat. Each send reserves the earliest slot that respects both intervals and sleeps until then,
//! so concurrent senders queue fairly without a background task.
//!
//! This limiter is per process. `worker run` shares the limits through Redis instead
//! ([`super::SharedLimits`]), so replicas keep them together; this one is the fallback while
//! Redis does not answer, and the limiter of clients built without Redis (tests, tools).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A reservation-based limiter over a global and a per-chat interval.
#[derive(Debug)]
pub struct RateLimiter {
    global_interval: Duration,
    per_chat_interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next_global: Instant,
    next_per_chat: HashMap<i64, Instant>,
}

/// Past this many remembered chats, entries whose slot has passed are dropped.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    /// A limiter that spaces all sends by `global_interval` and sends to one chat by
    /// `per_chat_interval`.
    pub fn new(global_interval: Duration, per_chat_interval: Duration) -> Self {
        Self {
            global_interval,
            per_chat_interval,
            state: Mutex::new(State {
                next_global: Instant::now(),
                next_per_chat: HashMap::new(),
            }),
        }
    }

    /// Waits until a message to `chat_id` may be sent.
    pub async fn acquire(&self, chat_id: i64) {
        let at = self.reserve(chat_id, Instant::now());
        tokio::time::sleep_until(at).await;
    }

    /// Holds every sender back for `pause` (Telegram's `retry_after` applies to the whole bot).
    pub fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut state = self.lock();
        if state.next_global < until {
            state.next_global = until;
        }
    }

    fn reserve(&self, chat_id: i64, now: Instant) -> Instant {
        let mut state = self.lock();
        let chat_next = state.next_per_chat.get(&chat_id).copied().unwrap_or(now);
        let at = now.max(state.next_global).max(chat_next);
        state.next_global = at + self.global_interval;
        if state.next_per_chat.len() >= PRUNE_AT {
            state.next_per_chat.retain(|_, next| *next > now);
        }
        state
            .next_per_chat
            .insert(chat_id, at + self.per_chat_interval);
        at
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain values: a panic elsewhere cannot leave it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_sends_globally_and_per_chat() {
        let limiter = RateLimiter::new(Duration::from_millis(100), Duration::from_secs(1));
        let now = Instant::now();
        let a = limiter.reserve(1, now);
        let b = limiter.reserve(2, now);
        let c = limiter.reserve(1, now);
        assert_eq!(a, now);
        assert_eq!(b, now + Duration::from_millis(100));
        // Chat 1 waits a full second after its first message, not just the global interval.
        assert_eq!(c, now + Duration::from_secs(1));
        let d = limiter.reserve(3, now);
        assert_eq!(d, now + Duration::from_millis(1100));
    }
}
