//! When a failed run is retried, and how the retry is published.
//!
//! A job asks for a retry with a countdown (`TaskError::retry_in`), or fails with a transient
//! error (database or network unavailable, Telegram 5xx/429): both are retried up to the job's
//! `MAX_RETRIES`, transient ones with exponential backoff and full jitter so that a recovering
//! service is not hit by every replica at once. As Celery's `task.retry()`, the retry is the same
//! task id republished to the same queue with `retries + 1` and an `eta`; RETRY is stored.

use std::time::Duration;

use crate::wire::TaskError;
use crate::wire::outgoing::MAX_DELAY;

/// Backoff of transient errors: 2 s, 4 s, 8 s ... capped, then jittered.
const BASE: Duration = Duration::from_secs(2);
const CAP: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Retry {
        countdown: Duration,
    },
    /// Store FAILURE with this error.
    Fail(TaskError),
}

pub(crate) fn decide(err: &TaskError, retries: u32, max_retries: u32) -> Decision {
    if retries >= max_retries {
        return Decision::Fail(err.clone());
    }
    if let Some(countdown) = err.retry_in {
        if countdown > MAX_DELAY {
            return Decision::Fail(TaskError::value_error(format!(
                "retry countdown of {} s is longer than the longest delay, {} s (about 8.5 years); \
                 the task failed with: {err}",
                countdown.as_secs(),
                MAX_DELAY.as_secs()
            )));
        }
        return Decision::Retry { countdown };
    }
    if err.transient {
        let exp = BASE.saturating_mul(1u32 << retries.min(16)).min(CAP);
        // Full jitter over the upper half: never shorter than half the backoff.
        let jitter = 0.5 + fastrand::f64() * 0.5;
        return Decision::Retry {
            countdown: exp.mul_f64(jitter),
        };
    }
    Decision::Fail(err.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_back_off_until_retries_run_out() {
        let e = TaskError::runtime_error("db down").transient(true);
        for retries in 0..5 {
            match decide(&e, retries, 5) {
                Decision::Retry { countdown } => {
                    let full = BASE.saturating_mul(1 << retries).min(CAP);
                    assert!(
                        countdown >= full / 2 && countdown <= full,
                        "{countdown:?} vs {full:?}"
                    );
                }
                Decision::Fail(_) => panic!("retry {retries} should be retried"),
            }
        }
        assert_eq!(decide(&e, 5, 5), Decision::Fail(e.clone()));
        let bad = TaskError::value_error("bad");
        assert_eq!(decide(&bad, 0, 5), Decision::Fail(bad.clone()));
    }

    #[test]
    fn requested_countdown_is_used() {
        let e = TaskError::value_error("later").retry_in(Duration::from_secs(7));
        assert_eq!(
            decide(&e, 0, 3),
            Decision::Retry {
                countdown: Duration::from_secs(7)
            }
        );
    }

    #[test]
    fn absurd_countdowns_fail_instead_of_overflowing() {
        let e = TaskError::value_error("later").retry_in(Duration::from_secs_f64(1e13));
        match decide(&e, 0, 3) {
            Decision::Fail(f) => {
                assert_eq!(f.exc_type, "ValueError");
                assert!(f.message.contains("longest delay"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
    }
}
