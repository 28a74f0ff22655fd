//! The scheduler's Redis keys: per-tick claims and per-schedule state.
//!
//! * `{prefix}schedule:{name}:tick:{unix_ts}` — the claim that makes a tick exactly-once across
//!   replicas. A replica takes it with `SET NX PX <lease>` holding `claimed:<token>`, publishes,
//!   then overwrites it with `published:<task id>` and a long expiry (past the catch-up window,
//!   at least a day) so no replica can publish that tick again. If publishing fails the claimer
//!   deletes its claim, and if it dies mid-publish the short lease runs out: either way another
//!   replica (or the next attempt) can take the tick, so a failure costs no tick.
//! * `{prefix}schedule:{name}` — a hash with the last published tick (`last_tick`,
//!   `last_tick_unix`), its `task_id`, `published_at`, `task` and `queue`: what catch-up and
//!   `worker schedules` read. It only moves forward.
//!
//! Claim and state updates run as small Lua scripts so each is atomic.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use redis::aio::ConnectionLike;
use serde::Serialize;

/// The last tick a schedule published, as recorded in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRun {
    pub tick: DateTime<Utc>,
    pub task_id: String,
    pub published_at: DateTime<Utc>,
}

/// Result of trying to claim a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This replica holds the claim and must publish (or release).
    Won,
    /// Some replica already published this tick.
    AlreadyPublished,
    /// Another replica is publishing it right now (or died doing so; its lease will run out).
    HeldByOther,
}

pub(crate) fn claim_key(prefix: &str, name: &str, tick: DateTime<Utc>) -> String {
    format!("{prefix}schedule:{name}:tick:{}", tick.timestamp())
}

pub(crate) fn state_key(prefix: &str, name: &str) -> String {
    format!("{prefix}schedule:{name}")
}

/// How long a claimed tick stays claimed after publishing: past any catch-up decision about it.
pub(crate) fn published_ttl(catch_up_window: TimeDelta) -> TimeDelta {
    catch_up_window.max(TimeDelta::days(1)) + TimeDelta::hours(1)
}

const CLAIM_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'won'
end
return redis.call('GET', KEYS[1]) or ''
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

const FINISH_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local previous = tonumber(redis.call('HGET', KEYS[2], 'last_tick_unix') or '')
if previous == nil or previous < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], 'last_tick', ARGV[4], 'last_tick_unix', ARGV[3],
    'task_id', ARGV[5], 'published_at', ARGV[6], 'task', ARGV[7], 'queue', ARGV[8])
end
return 1
";

/// Tries to claim a tick for `lease`; `token` identifies this attempt.
pub(crate) async fn claim<C: ConnectionLike + Send>(
    conn: &mut C,
    key: &str,
    token: &str,
    lease: TimeDelta,
) -> redis::RedisResult<Claim> {
    let reply: String = redis::Script::new(CLAIM_SCRIPT)
        .key(key)
        .arg(token)
        .arg(lease.num_milliseconds().max(1))
        .invoke_async(conn)
        .await?;
    Ok(if reply == "won" {
        Claim::Won
    } else if reply.starts_with("published:") {
        Claim::AlreadyPublished
    } else {
        // Held by another attempt, or (empty reply) released or expired between the SET and the
        // GET: either way not published yet, and the caller looks again shortly.
        Claim::HeldByOther
    })
}

/// Gives a claim back after a failed publish, if it is still ours.
pub(crate) async fn release<C: ConnectionLike + Send>(
    conn: &mut C,
    key: &str,
    token: &str,
) -> redis::RedisResult<()> {
    let _: i64 = redis::Script::new(RELEASE_SCRIPT)
        .key(key)
        .arg(token)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// What `finish` records about a published tick.
pub(crate) struct Published<'a> {
    pub claim_key: &'a str,
    pub state_key: &'a str,
    pub tick: DateTime<Utc>,
    pub task_id: &'a str,
    pub published_at: DateTime<Utc>,
    pub task: &'a str,
    pub queue: &'a str,
    pub ttl: TimeDelta,
}

/// Marks a tick published (for good) and moves the schedule's state forward.
pub(crate) async fn finish<C: ConnectionLike + Send>(
    conn: &mut C,
    done: &Published<'_>,
) -> redis::RedisResult<()> {
    let _: i64 = redis::Script::new(FINISH_SCRIPT)
        .key(done.claim_key)
        .key(done.state_key)
        .arg(format!("published:{}", done.task_id))
        .arg(done.ttl.num_seconds().max(1))
        .arg(done.tick.timestamp())
        .arg(done.tick.to_rfc3339())
        .arg(done.task_id)
        .arg(done.published_at.to_rfc3339())
        .arg(done.task)
        .arg(done.queue)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Reads the last published tick of a schedule; a missing or malformed hash is "no history".
pub(crate) async fn read_last_run<C: ConnectionLike + Send>(
    conn: &mut C,
    prefix: &str,
    name: &str,
) -> redis::RedisResult<Option<LastRun>> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(state_key(prefix, name))
        .query_async(conn)
        .await?;
    let parse_time = |field: &str| {
        fields
            .get(field)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|at| at.with_timezone(&Utc))
    };
    match (
        parse_time("last_tick"),
        fields.get("task_id"),
        parse_time("published_at"),
    ) {
        (Some(tick), Some(task_id), Some(published_at)) => Ok(Some(LastRun {
            tick,
            task_id: task_id.clone(),
            published_at,
        })),
        _ => {
            if !fields.is_empty() {
                tracing::warn!(
                    schedule = name,
                    "schedule state in Redis is malformed; treating it as no history"
                );
            }
            Ok(None)
        }
    }
}
