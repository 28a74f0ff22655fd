//! What can go wrong talking to the Bot API, and which of it is worth retrying.

/// A failed Bot API call, after the client's own retries.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    /// The request did not get an answer: DNS, connect, TLS, timeout, reset.
    /// The URL (which carries the bot token) is stripped before this is built.
    #[error("telegram request failed: {0}")]
    Network(#[source] reqwest::Error),

    /// Telegram answered `ok: false`.
    #[error("telegram answered {status}: {description}")]
    Api {
        /// HTTP status (Telegram's `error_code` is the same number).
        status: u16,
        /// Telegram's `description`.
        description: String,
        /// Seconds to wait, from `parameters.retry_after` on a 429.
        retry_after: Option<u64>,
    },

    /// The answer was not the JSON the Bot API documents.
    #[error("telegram answered {status} with an unreadable body: {detail}")]
    BadResponse {
        /// HTTP status.
        status: u16,
        /// Why the body could not be read.
        detail: String,
    },
}

impl TelegramError {
    /// Network failures, server errors and flood control may pass; 400 (bad request, e.g.
    /// unparsable markup) and 403 (the user blocked the bot) will not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Network(_) => true,
            Self::Api { status, .. } | Self::BadResponse { status, .. } => {
                *status == 429 || *status >= 500
            }
        }
    }

    /// How long Telegram asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TelegramError;

    fn api(status: u16) -> TelegramError {
        TelegramError::Api {
            status,
            description: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn only_rate_limits_and_server_errors_are_transient() {
        assert!(api(429).is_transient());
        assert!(api(500).is_transient());
        assert!(api(502).is_transient());
        assert!(!api(400).is_transient());
        assert!(!api(403).is_transient());
        assert!(!api(404).is_transient());
    }
}
