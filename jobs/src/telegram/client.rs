//! The Bot API client: `sendMessage` with HTML parse mode and link previews off, rate limited,
//! with retries for what may pass (network errors, 5xx, 429 after its `retry_after`).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{RateLimiter, SharedLimits, TelegramError};

/// How to reach the Bot API and how patient to be with it.
#[derive(Clone)]
pub struct TelegramSettings {
    /// `TELEGRAM_BOT_TOKEN`.
    pub token: String,
    /// `TELEGRAM_API_URL`, `https://api.telegram.org` by default; tests point it at a fake.
    pub api_url: String,
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time up to `max_backoff`.
    pub initial_backoff: Duration,
    /// The longest backoff between attempts.
    pub max_backoff: Duration,
    /// A 429 asking to wait longer than this fails at once (as transient) instead of holding the
    /// job; the worker's own retry picks it up later.
    pub max_retry_after: Duration,
    /// Spacing between any two messages (1/30 s: Telegram's ~30 messages/s per bot).
    pub global_interval: Duration,
    /// Spacing between two messages to one chat (Telegram's ~1 message/s per chat).
    pub per_chat_interval: Duration,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl TelegramSettings {
    /// Production defaults for `token` at `api_url`.
    pub fn new(token: impl Into<String>, api_url: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            api_url: api_url.into(),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            global_interval: Duration::from_micros(1_000_000 / 30),
            per_chat_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(15),
        }
    }
}

// The token is a secret: never print it.
impl std::fmt::Debug for TelegramSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramSettings")
            .field("token", &"<redacted>")
            .field("api_url", &self.api_url)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// A delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentMessage {
    /// Telegram's id of the message in the chat.
    pub message_id: i64,
    /// How many attempts it took.
    pub attempts: u32,
}

/// A cheap-to-clone Bot API client shared by all jobs.
#[derive(Clone, Debug)]
pub struct Telegram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    send_message_url: String,
    settings: TelegramSettings,
    limiter: RateLimiter,
    /// Set once by [`Telegram::share_limits`]; the local limiter is then only the fallback.
    shared: std::sync::OnceLock<SharedLimits>,
}

/// The Bot API envelope: `{"ok": true, "result": ...}` or `{"ok": false, "description": ...}`.
#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<MessageResult>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct MessageResult {
    message_id: i64,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
}

impl Telegram {
    /// Builds the client; fails only if the TLS backend cannot be set up.
    pub fn new(settings: TelegramSettings) -> Result<Self, TelegramError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()
            .map_err(|e| TelegramError::Network(e.without_url()))?;
        let send_message_url = format!(
            "{}/bot{}/sendMessage",
            settings.api_url.trim_end_matches('/'),
            settings.token
        );
        let limiter = RateLimiter::new(settings.global_interval, settings.per_chat_interval);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                send_message_url,
                settings,
                limiter,
                shared: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Keep the bot's limits in Redis, shared with every replica that uses the same Redis, key
    /// prefix and bot (see [`SharedLimits`]). Called once; later calls change nothing.
    pub fn share_limits(&self, redis: redis::aio::ConnectionManager, key_prefix: &str) {
        let _ = self.inner.shared.set(SharedLimits::new(
            redis,
            key_prefix,
            &self.inner.settings.token,
        ));
    }

    /// Waits for this send's slot: from Redis when the limits are shared, else (or when Redis
    /// does not answer within a second) from this process's own limiter.
    async fn wait_for_slot(&self, chat_id: i64) {
        let settings = &self.inner.settings;
        if let Some(shared) = self.inner.shared.get() {
            let reserved = tokio::time::timeout(
                Duration::from_secs(1),
                shared.reserve(
                    chat_id,
                    settings.global_interval,
                    settings.per_chat_interval,
                ),
            )
            .await;
            match reserved {
                Ok(Ok(wait)) => {
                    tokio::time::sleep(wait).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "shared Telegram limits unavailable; limiting this process alone")
                }
                Err(_) => tracing::warn!(
                    "shared Telegram limits: Redis did not answer; limiting this process alone"
                ),
            }
        }
        self.inner.limiter.acquire(chat_id).await;
    }

    /// Holds every sender back for `wait`, in every replica when the limits are shared.
    async fn pause_all(&self, wait: Duration) {
        self.inner.limiter.pause(wait);
        if let Some(shared) = self.inner.shared.get()
            && let Err(e) = shared.pause(wait).await
        {
            tracing::warn!(error = %e, "could not share Telegram's retry_after with other replicas");
        }
    }

    /// Sends `html` (already escaped where it holds data) to `chat_id`, retrying what may pass.
    pub async fn send_message(
        &self,
        chat_id: i64,
        html: &str,
    ) -> Result<SentMessage, TelegramError> {
        let settings = &self.inner.settings;
        let max_attempts = settings.max_attempts.max(1);
        let mut backoff = settings.initial_backoff;
        let mut attempt = 1;
        loop {
            self.wait_for_slot(chat_id).await;
            let error = match self.send_once(chat_id, html).await {
                Ok(message_id) => {
                    return Ok(SentMessage {
                        message_id,
                        attempts: attempt,
                    });
                }
                Err(e) => e,
            };
            if !error.is_transient() || attempt >= max_attempts {
                return Err(error);
            }
            let wait = match error.retry_after() {
                Some(seconds) => {
                    let wait = Duration::from_secs(seconds);
                    if wait > settings.max_retry_after {
                        return Err(error);
                    }
                    // Flood control is per bot: hold back every sender, not just this one.
                    self.pause_all(wait).await;
                    wait
                }
                None => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(settings.max_backoff);
                    wait
                }
            };
            tracing::warn!(chat_id, attempt, ?wait, error = %error, "telegram send failed, retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn send_once(&self, chat_id: i64, html: &str) -> Result<i64, TelegramError> {
        let body = json!({
            "chat_id": chat_id,
            "text": html,
            "parse_mode": "HTML",
            "link_preview_options": { "is_disabled": true },
        });
        let response = self
            .inner
            .http
            .post(&self.inner.send_message_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| TelegramError::Network(e.without_url()))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TelegramError::Network(e.without_url()))?;
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                return Err(TelegramError::BadResponse {
                    status,
                    detail: e.to_string(),
                });
            }
        };
        match (envelope.ok, envelope.result) {
            (true, Some(result)) if status < 300 => Ok(result.message_id),
            (true, _) => Err(TelegramError::BadResponse {
                status,
                detail: "ok without a message".to_owned(),
            }),
            (false, _) => Err(TelegramError::Api {
                status: if status < 300 { 500 } else { status },
                description: envelope.description.unwrap_or_default(),
                retry_after: envelope.parameters.and_then(|p| p.retry_after),
            }),
        }
    }
}
