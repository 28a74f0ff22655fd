//! Chord state in Redis, laid out exactly as Celery 5.7's Redis backend lays it out
//! (celery/backends/redis.py `on_chord_part_return`), so that a Python worker and ours can each
//! finish parts of the same chord and exactly one of them sends the body.
//!
//! Keys, under the results' key prefix: `celery-taskset-meta-<gid>` with suffixes `.j` (a ZSET
//! of `[1, tid, state, result]` scored by `group_index`), `.t` (total diff), `.s` (chord size,
//! set by the client), `.d` (the parts recorded, so a redelivered part counts once) and `.c`
//! (the claim: whoever sets it sends the body; `done` once cleaned up). The three scripts are
//! Celery's own, byte for byte: same keys, same arguments, same claim semantics.

use crate::adapters::redis_conn::RedisConn;
use redis::Script;
use serde_json::Value;

use super::ResultStore;
use crate::adapters::redis_conn::StoreError;

/// Celery's `CHORD_PART_RETURN_LUA`.
const PART_RETURN: &str = r#"
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, ordered, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
local claim_expires = tonumber(ARGV[7])
local claim_token = ARGV[8]

-- Prevent late duplicates from recreating chord state after successful cleanup.
local done_marker = redis.call('GET', ckey)
if done_marker == 'done' then
    return {-1, 0, 0, 0}
end

-- Key the check on the task id and header index, so it doesn't merge two
-- header entries that share the task id of a reused frozen signature.
local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
    if ordered == '1' then
        redis.call('ZADD', jkey, score, value)
    else
        redis.call('RPUSH', jkey, value)
    end
    redis.call('SADD', dkey, member)
end
local readycount
if ordered == '1' then
    readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    readycount = redis.call('LLEN', jkey)
end
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, expires)
    end
    if group_expires > 0 then
        redis.call('EXPIRE', gkey, group_expires)
    end
end

local totaldiff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
local claimed = 0
if size and readycount == tonumber(size) + tonumber(totaldiff or 0) then
    if redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then
        claimed = 1
    end
end

return {readycount, totaldiff, size, claimed}
"#;

/// Celery's `CHORD_CLEANUP_LUA`.
const CLEANUP: &str = r#"
local ckey = KEYS[1]
local jkey = KEYS[2]
local tkey = KEYS[3]
local skey = KEYS[4]
local dkey = KEYS[5]
local token = ARGV[1]
local done_expires = tonumber(ARGV[2])

if redis.call('GET', ckey) == token then
    redis.call('DEL', jkey, tkey, skey, dkey)
    if done_expires and done_expires > 0 then
        redis.call('SET', ckey, 'done', 'EX', done_expires)
    end
    return 1
end
return 0
"#;

/// Celery's `CHORD_CLAIM_EXTEND_LUA`.
const CLAIM_EXTEND: &str = r#"
local ckey, skey = KEYS[1], KEYS[2]
local token = ARGV[1]
local expires = tonumber(ARGV[2])
if redis.call('GET', ckey) == token then
    return redis.call('EXPIRE', ckey, expires)
end
if not redis.call('GET', ckey) and redis.call('EXISTS', skey) == 1 then
    return redis.call('SET', ckey, token, 'EX', expires, 'NX') and 1 or 0
end
return 0
"#;

/// Celery's claim lifetime with its default `result_chord_join_timeout` (5 s): twice that.
pub(crate) const CLAIM_SECONDS: u64 = 10;
/// What Celery extends the claim to before publishing the body, with its default publish
/// retry policy (3 retries, 4 s connection timeout): `ceil(4 * 4 + 0.6 + 4)`.
pub(crate) const PUBLISH_CLAIM_SECONDS: u64 = 21;
/// How long the `done` marker keeps late duplicates from reviving a finished chord.
const DONE_SECONDS: u64 = 300;
/// A chord header larger than this is not read back (Celery has no bound; a body would not
/// fit in a message anyway).
pub(crate) const MAX_PARTS: usize = 100_000;

/// Whether a saved GroupResult (`{"result": [[gid, parent], [member, ...]]}`) has a member
/// that is itself a group (a member tuple with nodes of its own). Unreadable counts as nested:
/// we do not know it.
fn nested_header(saved: &str) -> bool {
    let Ok(doc) = serde_json::from_str::<Value>(saved) else {
        return true;
    };
    match doc.get("result").and_then(|r| r.get(1)) {
        Some(Value::Array(members)) => members
            .iter()
            .any(|m| m.get(1).is_some_and(|nodes| !nodes.is_null())),
        _ => true,
    }
}

/// What recording one part did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PartReturn {
    /// The chord was already finished and cleaned up (a late duplicate).
    Finished,
    /// Other parts are still to come, or another worker holds the claim.
    Waiting,
    /// This was the last part and this worker claimed the body: the parts in header order,
    /// each `[1, tid, state, result]`.
    Claimed { token: String, parts: Vec<Value> },
}

/// A layout of chord state this worker does not know how to finish.
pub(crate) type LayoutProblem = String;

#[derive(Clone)]
pub(crate) struct ChordStore {
    conn: RedisConn,
    prefix: String,
    expires: u64,
}

impl ChordStore {
    pub(crate) fn new(store: &ResultStore) -> Self {
        Self {
            conn: store.connection(),
            prefix: store.prefix().to_owned(),
            expires: store.expires(),
        }
    }

    fn key(&self, gid: &str, suffix: &str) -> String {
        format!("{}celery-taskset-meta-{gid}{suffix}", self.prefix)
    }

    /// Whether the chord's state is in a layout we finish: not an unordered chord (`.j` a
    /// list: `result_chord_ordered=False`) and no saved GroupResult (a header of nested groups,
    /// which Celery joins through its own result classes).
    pub(crate) async fn layout_problem(
        &self,
        gid: &str,
    ) -> Result<Option<LayoutProblem>, StoreError> {
        let mut conn = self.conn.clone();
        let kind: String = redis::cmd("TYPE")
            .arg(self.key(gid, ".j"))
            .query_async(&mut conn)
            .await?;
        if kind != "none" && kind != "zset" {
            return Ok(Some(format!(
                "a chord whose header results are a Redis {kind} (result_chord_ordered=False); only the ordered layout is supported"
            )));
        }
        // A saved GroupResult: Celery saves one for a header of nested groups and joins it
        // through its own result classes; a plain saved group (an application's own
        // `GroupResult.save()`) reads the same as the parts recorded here.
        let saved: Option<String> = redis::cmd("GET")
            .arg(self.key(gid, ""))
            .query_async(&mut conn)
            .await?;
        if saved.as_deref().is_some_and(nested_header) {
            return Ok(Some(
                "a chord whose header holds groups (a saved GroupResult)".into(),
            ));
        }
        Ok(None)
    }

    /// Record this part (`result` as the result backend encodes it) and claim the body if
    /// it was the last one.
    pub(crate) async fn part_return(
        &self,
        gid: &str,
        tid: &str,
        group_index: Option<u64>,
        state: &str,
        result: &Value,
    ) -> Result<PartReturn, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let encoded = serde_json::json!([1, tid, state, result]).to_string();
        let score = group_index.map_or_else(|| "+inf".to_owned(), |i| i.to_string());
        let mut conn = self.conn.clone();
        let (ready, _diff, size, claimed): (i64, Option<i64>, Option<i64>, i64) =
            Script::new(PART_RETURN)
                .key(self.key(gid, ".j"))
                .key(self.key(gid, ".t"))
                .key(self.key(gid, ".s"))
                .key(self.key(gid, ".d"))
                .key(self.key(gid, ""))
                .key(self.key(gid, ".c"))
                .arg(tid)
                .arg(encoded)
                .arg(1)
                .arg(score)
                .arg(self.expires)
                .arg(self.expires)
                .arg(CLAIM_SECONDS)
                .arg(&token)
                .invoke_async(&mut conn)
                .await?;
        if ready == -1 {
            return Ok(PartReturn::Finished);
        }
        if size.is_none() || claimed != 1 {
            return Ok(PartReturn::Waiting);
        }
        let raw: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.key(gid, ".j"))
            .arg(0)
            .arg(i64::try_from(MAX_PARTS).unwrap_or(i64::MAX) - 1)
            .query_async(&mut conn)
            .await?;
        let parts = raw
            .iter()
            .map(|s| serde_json::from_str(s).unwrap_or(Value::Null))
            .collect();
        Ok(PartReturn::Claimed { token, parts })
    }

    /// Extend this worker's claim before publishing the body; false when it was lost.
    pub(crate) async fn extend_claim(&self, gid: &str, token: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let extended: i64 = Script::new(CLAIM_EXTEND)
            .key(self.key(gid, ".c"))
            .key(self.key(gid, ".s"))
            .arg(token)
            .arg(PUBLISH_CLAIM_SECONDS)
            .invoke_async(&mut conn)
            .await?;
        Ok(extended == 1)
    }

    /// Remove the chord's state and leave the `done` marker; false when the claim was lost.
    pub(crate) async fn cleanup(&self, gid: &str, token: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let cleaned: i64 = Script::new(CLEANUP)
            .key(self.key(gid, ".c"))
            .key(self.key(gid, ".j"))
            .key(self.key(gid, ".t"))
            .key(self.key(gid, ".s"))
            .key(self.key(gid, ".d"))
            .arg(token)
            .arg(DONE_SECONDS)
            .invoke_async(&mut conn)
            .await?;
        Ok(cleaned == 1)
    }

    /// After a ChordError: drop the chord size, so a late copy of a part does not fail the
    /// chord again (Celery keeps the recorded results).
    pub(crate) async fn drop_size(&self, gid: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(self.key(gid, ".s"))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_header_of_groups_is_a_layout_we_do_not_know() {
        let plain = r#"{"result": [["g", null], [[["a", null], null], [["b", null], null]]]}"#;
        assert!(!nested_header(plain));
        let nested = r#"{"result": [["g", null], [[["a", null], null], [["h", null], [[["c", null], null]]]]]}"#;
        assert!(nested_header(nested));
        assert!(nested_header("not json"));
    }
}
