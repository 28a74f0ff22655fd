//! Celery's soft and hard time limits, for async jobs.
//!
//! The job runs on its own tokio task. At the soft limit it is cancelled cooperatively (its
//! future is dropped at its next await point) and the outcome is `SoftTimeLimitExceeded`; if it
//! does not stop by the hard limit — a job stuck without awaiting — it is abandoned and the
//! outcome is `TimeLimitExceeded`. Both use `exc_module = "billiard.exceptions"`, as Python
//! expects. A panic inside the job becomes a `RuntimeError` outcome; the worker lives on.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tracing::warn;

use crate::settings::TimeLimits;
use crate::wire::TaskError;

/// The limits of one run: the message's `timelimit` header `[hard, soft]` wins over the worker
/// defaults.
pub(crate) fn for_message(defaults: TimeLimits, header: (Option<f64>, Option<f64>)) -> TimeLimits {
    let secs = |s: f64| Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero());
    TimeLimits {
        hard: header.0.and_then(secs).or(defaults.hard),
        soft: header.1.and_then(secs).or(defaults.soft),
    }
}

fn soft_exceeded(limit: Duration) -> TaskError {
    TaskError::new(
        "billiard.exceptions",
        "SoftTimeLimitExceeded",
        format!("SoftTimeLimitExceeded({})", limit.as_secs_f64()),
    )
}

fn hard_exceeded(limit: Duration) -> TaskError {
    TaskError::new(
        "billiard.exceptions",
        "TimeLimitExceeded",
        format!("TimeLimitExceeded({})", limit.as_secs_f64()),
    )
}

/// Run `job` within `limits`.
pub(crate) async fn run_limited(
    job: BoxFuture<'static, Result<Value, TaskError>>,
    limits: TimeLimits,
) -> Result<Value, TaskError> {
    let mut handle = tokio::spawn(job);
    let far = Duration::from_secs(365 * 24 * 3600);
    let hard = limits.hard.unwrap_or(far);
    let soft = limits.soft.unwrap_or(far).min(hard);

    let joined = tokio::select! {
        joined = &mut handle => joined,
        _ = tokio::time::sleep(soft) => {
            handle.abort();
            let left = hard.saturating_sub(soft);
            return match tokio::time::timeout(left, &mut handle).await {
                // It stopped when cancelled (or finished just then): the soft limit applies,
                // unless soft and hard are the same limit.
                Ok(_) if soft < hard => {
                    warn!(limit_s = soft.as_secs_f64(), "soft time limit exceeded; the task was cancelled");
                    Err(soft_exceeded(soft))
                }
                _ => {
                    warn!(limit_s = hard.as_secs_f64(), "hard time limit exceeded; the task was abandoned");
                    Err(hard_exceeded(hard))
                }
            };
        }
    };
    match joined {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(TaskError::runtime_error(format!("task panicked: {what}")))
        }
        Err(_) => Err(TaskError::runtime_error("task was cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn limits(soft: u64, hard: u64) -> TimeLimits {
        TimeLimits {
            soft: Some(Duration::from_millis(soft)),
            hard: Some(Duration::from_millis(hard)),
        }
    }

    #[tokio::test]
    async fn finishes_within_limits() {
        let r = run_limited(async { Ok(Value::from(1)) }.boxed(), limits(100, 200)).await;
        assert_eq!(r, Ok(Value::from(1)));
    }

    #[tokio::test]
    async fn soft_limit_cancels_cooperative_jobs() {
        let job = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Value::Null)
        };
        let e = run_limited(job.boxed(), limits(50, 1000))
            .await
            .unwrap_err();
        assert_eq!(
            (e.exc_module.as_str(), e.exc_type.as_str()),
            ("billiard.exceptions", "SoftTimeLimitExceeded")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hard_limit_abandons_stuck_jobs() {
        let job = async {
            std::thread::sleep(Duration::from_millis(400)); // never awaits: cannot be cancelled
            Ok(Value::Null)
        };
        let e = run_limited(job.boxed(), limits(50, 100)).await.unwrap_err();
        assert_eq!(e.exc_type, "TimeLimitExceeded");
    }

    #[tokio::test]
    async fn panics_become_runtime_errors() {
        let job = async { panic!("boom") };
        let e = run_limited(job.boxed(), limits(1000, 2000))
            .await
            .unwrap_err();
        assert_eq!(e.exc_type, "RuntimeError");
        assert!(e.message.contains("boom"));
    }

    #[test]
    fn header_wins_over_defaults() {
        let d = limits(1_500_000, 1_800_000);
        let l = for_message(d, (Some(10.0), None));
        assert_eq!(l.hard, Some(Duration::from_secs(10)));
        assert_eq!(l.soft, d.soft);
    }
}
