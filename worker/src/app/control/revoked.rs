//! The ids of revoked tasks this worker knows, in memory: what the executor checks on every
//! delivery before it runs anything (one hash lookup under a mutex held for no I/O).
//!
//! Bounded like Celery's `worker_state.revoked` (a `LimitedSet`): at most [`MAX_REVOKED`] ids,
//! each forgotten [`REVOKE_EXPIRES`] after it was revoked; when full, the oldest goes first.
//! Ids longer than [`MAX_ID`] bytes are not kept (no Celery id is that long). The same bounds
//! hold in Redis (see `adapters::control::store`), where revokes outlive a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Celery's `REVOKES_MAX`.
pub(crate) const MAX_REVOKED: usize = 50_000;
/// Celery's `REVOKE_EXPIRES`: three hours.
pub(crate) const REVOKE_EXPIRES: Duration = Duration::from_secs(3 * 3600);
/// The longest task id kept.
pub(crate) const MAX_ID: usize = 255;

#[derive(Default)]
struct Inner {
    /// id -> when it is forgotten.
    until: HashMap<String, DateTime<Utc>>,
    /// Insertion order, oldest first; may hold stale entries for ids re-revoked later.
    order: VecDeque<(String, DateTime<Utc>)>,
}

/// The revoked ids; shared by the executor and the control commands.
#[derive(Default)]
pub(crate) struct Revoked {
    inner: Mutex<Inner>,
}

impl Revoked {
    /// Remember `id` as revoked until `until`; returns false when the id is not kept (too long).
    pub(crate) fn insert(&self, id: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        if id.is_empty() || id.len() > MAX_ID || until <= now {
            return false;
        }
        let mut inner = self.lock();
        inner.purge(now);
        let later = inner.until.get(id).is_none_or(|u| *u < until);
        if later {
            inner.until.insert(id.to_owned(), until);
            inner.order.push_back((id.to_owned(), until));
        }
        while inner.until.len() > MAX_REVOKED {
            inner.pop_oldest();
        }
        // Stale entries of re-revoked ids: never more than the live ones.
        if inner.order.len() > 2 * MAX_REVOKED {
            let Inner { until, order } = &mut *inner;
            order.retain(|(id, u)| until.get(id) == Some(u));
        }
        true
    }

    /// Revoked now?
    pub(crate) fn contains(&self, id: &str, now: DateTime<Utc>) -> bool {
        self.lock().until.get(id).is_some_and(|u| *u > now)
    }

    /// The live ids, oldest first (the `revoked` command; `hello` for Celery's mingle).
    pub(crate) fn ids(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut inner = self.lock();
        inner.purge(now);
        let Inner { until, order } = &*inner;
        order
            .iter()
            .filter(|(id, u)| until.get(id) == Some(u))
            .map(|(id, _)| id.clone())
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().until.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; if something did, the set is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    /// Drop expired ids from the front (insertion order is close to expiry order).
    fn purge(&mut self, now: DateTime<Utc>) {
        while let Some((_, u)) = self.order.front() {
            if *u > now {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, u)) = self.order.pop_front()
            && self.until.get(&id) == Some(&u)
        {
            self.until.remove(&id);
        }
    }
}

/// When an id revoked at `now` is forgotten.
pub(crate) fn expiry(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(REVOKE_EXPIRES).unwrap_or(chrono::Duration::hours(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_expire_and_the_set_stays_bounded() {
        let set = Revoked::default();
        let now = Utc::now();
        assert!(set.insert("a", expiry(now), now));
        assert!(set.contains("a", now));
        assert!(!set.contains("a", expiry(now) + chrono::Duration::seconds(1)));
        assert!(!set.insert(&"x".repeat(MAX_ID + 1), expiry(now), now));
        for i in 0..MAX_REVOKED + 10 {
            set.insert(&format!("id-{i}"), expiry(now), now);
        }
        assert_eq!(set.len(), MAX_REVOKED);
        assert!(!set.contains("a", now), "the oldest went first");
        assert!(set.contains(&format!("id-{}", MAX_REVOKED + 9), now));
        // Re-revoking one id many times does not grow the order queue without bound.
        for i in 0..3 * MAX_REVOKED as i64 {
            let later = now + chrono::Duration::milliseconds(i);
            set.insert("again", expiry(later), later);
        }
        assert!(set.lock().order.len() <= 2 * MAX_REVOKED + 1);
        let ids = set.ids(now);
        assert_eq!(ids.len(), MAX_REVOKED);
        assert_eq!(ids.last().map(String::as_str), Some("again"));
    }
}
