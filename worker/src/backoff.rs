//! Capped exponential backoff, shared by everything that reconnects (broker, Redis).

use std::time::Duration;

/// 0.5 s, 1 s, 2 s ... up to `max`.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert_eq!(
            backoff(0, Duration::from_secs(30)),
            Duration::from_millis(500)
        );
        assert_eq!(backoff(3, Duration::from_secs(30)), Duration::from_secs(4));
        assert_eq!(
            backoff(40, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}
