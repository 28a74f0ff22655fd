//! Telegram delivery: a small Bot API client (`sendMessage` in HTML parse mode), the rate limits
//! that keep the bot under Telegram's (shared by all replicas through Redis, with a per-process
//! limiter as the fallback), and the HTML escaping every database value goes through.
//!
//! The client retries network errors, 5xx and 429 itself (honouring `retry_after`), so callers see
//! only the final outcome; 400 and 403 (bad markup, a user who blocked the bot) are not retried.

mod client;
mod error;
mod html;
mod limiter;
mod shared_limits;

pub use client::{SentMessage, Telegram, TelegramSettings};
pub use error::TelegramError;
pub use html::escape_html;
pub use limiter::RateLimiter;
pub use shared_limits::SharedLimits;
