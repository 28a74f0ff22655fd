//! Telegram's limits across worker replicas. The limits belong to the bot, not to a process:
//! about 30 messages a second in all and one a second per chat, whatever the number of
//! replicas sending. Each send reserves its slot in Redis (one script, Redis's own clock), so
//! every replica sharing the bot token and the Redis waits its turn in one queue.
//!
//! The keys are `{prefix}telegram:{bot id}:next` and `{prefix}telegram:{bot id}:chat:{chat}`,
//! microsecond timestamps that expire once their slot has passed. The bot id is the public part
//! of the token, before the colon; the secret part never reaches Redis.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// KEYS[1] the bot's next free slot, KEYS[2] the chat's; ARGV[1] and ARGV[2] the global and
/// per-chat intervals in microseconds. Reserves the earliest slot both allow; returns how many
/// microseconds from now it is.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at = math.max(now, tonumber(redis.call('GET', KEYS[1]) or 0),
                    tonumber(redis.call('GET', KEYS[2]) or 0))
local global_next = at + tonumber(ARGV[1])
local chat_next = at + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', global_next),
           'PX', math.ceil((global_next - now) / 1000) + 1000)
redis.call('SET', KEYS[2], string.format('%d', chat_next),
           'PX', math.ceil((chat_next - now) / 1000) + 1000)
return at - now
"#;

/// KEYS[1] the bot's next free slot; ARGV[1] a pause in microseconds: no slot before it ends.
const PAUSE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause_end = now + tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or 0) < pause_end then
  redis.call('SET', KEYS[1], string.format('%d', pause_end),
             'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 0
"#;

/// The bot's send slots, kept in Redis for every replica.
pub struct SharedLimits {
    redis: ConnectionManager,
    global_key: String,
    chat_key_prefix: String,
    reserve: Script,
    pause: Script,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("global_key", &self.global_key)
            .finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl SharedLimits {
    /// Slots of the bot whose token is `token`, under `key_prefix`.
    pub fn new(redis: ConnectionManager, key_prefix: &str, token: &str) -> Self {
        let bot = token.split(':').next().unwrap_or_default();
        let base = format!("{key_prefix}telegram:{bot}:");
        Self {
            redis,
            global_key: format!("{base}next"),
            chat_key_prefix: format!("{base}chat:"),
            reserve: Script::new(RESERVE),
            pause: Script::new(PAUSE),
        }
    }

    /// Reserves the next slot for `chat_id`; returns how long to wait for it.
    pub async fn reserve(
        &self,
        chat_id: i64,
        global_interval: Duration,
        per_chat_interval: Duration,
    ) -> Result<Duration, redis::RedisError> {
        let mut conn = self.redis.clone();
        let wait: i64 = self
            .reserve
            .key(&self.global_key)
            .key(format!("{}{chat_id}", self.chat_key_prefix))
            .arg(micros(global_interval))
            .arg(micros(per_chat_interval))
            .invoke_async(&mut conn)
            .await?;
        Ok(Duration::from_micros(u64::try_from(wait).unwrap_or(0)))
    }

    /// No replica sends before `pause` has passed (Telegram's `retry_after` is per bot).
    pub async fn pause(&self, pause: Duration) -> Result<(), redis::RedisError> {
        let mut conn = self.redis.clone();
        let _: i64 = self
            .pause
            .key(&self.global_key)
            .arg(micros(pause))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
