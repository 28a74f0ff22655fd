//! Redis for the bench: watching results arrive (the same PUBLISH Python's `AsyncResult.get()`
//! waits on), checking every stored result before a number is reported, and the Redis ceiling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use tokio::sync::oneshot;
// The worker's own store script, so the bench times the write pattern the worker really uses.
use worker::results::STORE_SCRIPT;

pub const KEY_PREFIX: &str = "celery-task-meta-";

pub async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")
}

#[derive(Deserialize)]
struct Doc {
    status: String,
    #[serde(default)]
    result: serde_json::Value,
}

/// When each watched task's SUCCESS was first published.
pub struct Seen {
    pub at: Vec<Option<Instant>>,
    pub count: usize,
    /// Results published with another final status (FAILURE, REVOKED, …): never expected.
    pub other: usize,
}

/// A running subscription on `celery-task-meta-*`, counting SUCCESS for a known set of ids.
pub struct Watch {
    handle: tokio::task::JoinHandle<anyhow::Result<Seen>>,
    stop: Option<oneshot::Sender<()>>,
    /// Fires once every id has been seen.
    pub all_seen: Option<oneshot::Receiver<()>>,
}

/// Subscribe (before anything is published) and watch for `ids`. `on_first`/`on_last` run the
/// moment the first and the last SUCCESS arrive (CPU snapshots are taken there).
pub async fn watch(
    client: &redis::Client,
    ids: &[String],
    on_first: impl FnOnce() + Send + 'static,
    on_last: impl FnOnce() + Send + 'static,
) -> anyhow::Result<Watch> {
    let index: Arc<HashMap<String, usize>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, id)| (format!("{KEY_PREFIX}{id}"), i))
            .collect(),
    );
    let n = ids.len();
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .context("Redis pubsub connection")?;
    pubsub
        .psubscribe(format!("{KEY_PREFIX}*"))
        .await
        .context("PSUBSCRIBE")?;
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let (all_tx, all_rx) = oneshot::channel();
    let handle = tokio::spawn(async move {
        let mut seen = Seen {
            at: vec![None; n],
            count: 0,
            other: 0,
        };
        let mut on_first = Some(on_first);
        let mut on_last = Some(on_last);
        let mut all_tx = Some(all_tx);
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                msg = messages.next() => {
                    let Some(msg) = msg else { bail!("Redis pubsub connection closed") };
                    let now = Instant::now();
                    let Some(&i) = index.get(msg.get_channel_name()) else { continue };
                    let Ok(doc) = serde_json::from_slice::<Doc>(msg.get_payload_bytes()) else {
                        continue;
                    };
                    match doc.status.as_str() {
                        "SUCCESS" if seen.at[i].is_none() => {
                            seen.at[i] = Some(now);
                            seen.count += 1;
                            if seen.count == 1 && let Some(f) = on_first.take() {
                                f();
                            }
                            if seen.count == n {
                                if let Some(f) = on_last.take() {
                                    f();
                                }
                                if let Some(tx) = all_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                        }
                        "FAILURE" | "REVOKED" | "REJECTED" => seen.other += 1,
                        _ => {}
                    }
                }
            }
        }
        Ok(seen)
    });
    Ok(Watch {
        handle,
        stop: Some(stop_tx),
        all_seen: Some(all_rx),
    })
}

impl Watch {
    /// Wait until every id was seen or `timeout` passed, then stop and return what was seen.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<Seen> {
        if let Some(rx) = self.all_seen.take() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.handle.await.context("result watcher panicked")?
    }
}

/// Read back every result: all must be present, SUCCESS and `"pong"`. Returns how many passed;
/// fails with a sample of what was wrong otherwise. Polls for up to `timeout` for stragglers.
pub async fn verify_all(
    conn: &mut MultiplexedConnection,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut bad = Vec::new();
        let mut ok = 0usize;
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|id| format!("{KEY_PREFIX}{id}")).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(conn)
                .await
                .context("MGET results")?;
            for (id, v) in chunk.iter().zip(values) {
                match v.map(|raw| serde_json::from_slice::<Doc>(&raw)) {
                    Some(Ok(doc)) if doc.status == "SUCCESS" && doc.result == "pong" => ok += 1,
                    Some(Ok(doc)) => bad.push(format!("{id}: {} {}", doc.status, doc.result)),
                    Some(Err(e)) => bad.push(format!("{id}: not a result document ({e})")),
                    None => bad.push(format!("{id}: missing")),
                }
            }
        }
        if bad.is_empty() {
            return Ok(ok);
        }
        if Instant::now() > deadline {
            bail!(
                "only {ok}/{} results are present and SUCCESS; e.g. {:?}",
                ids.len(),
                &bad[..bad.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Remove the results this run produced (they would expire anyway).
pub async fn delete_results(conn: &mut MultiplexedConnection, ids: &[String]) {
    for chunk in ids.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|id| format!("{KEY_PREFIX}{id}")).collect();
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(conn).await;
    }
}

/// A result document of the size and shape the worker writes for `worker.ping`.
fn sample_document(id: &str) -> String {
    serde_json::json!({
        "status": "SUCCESS", "result": "pong", "traceback": null, "children": [],
        "date_done": "2026-11-01T12:00:00.000000+00:00", "task_id": id,
        "name": "worker.ping", "args": [], "kwargs": {}, "worker": "worker@bench",
        "retries": 0, "queue": "bench"
    })
    .to_string()
}

/// Ceiling: `n` SETEX+PUBLISH pairs in pipelines of `batch` pairs, on one connection.
pub async fn ceiling_pipelined(
    conn: &mut MultiplexedConnection,
    run: &str,
    n: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    let keys: Vec<String> = (0..n).map(|i| format!("bench-ceiling-{run}-{i}")).collect();
    let docs: Vec<String> = keys.iter().map(|k| sample_document(k)).collect();
    let started = Instant::now();
    for (ks, ds) in keys.chunks(batch).zip(docs.chunks(batch)) {
        let mut pipe = redis::pipe();
        for (k, d) in ks.iter().zip(ds) {
            pipe.cmd("SETEX").arg(k).arg(60).arg(d).ignore();
            pipe.cmd("PUBLISH").arg(k).arg(d).ignore();
        }
        let () = pipe
            .query_async(conn)
            .await
            .context("SETEX+PUBLISH pipeline")?;
    }
    let took = started.elapsed();
    for chunk in keys.chunks(1000) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(conn).await;
    }
    Ok(took)
}

/// The worker's pattern: `in_flight` tasks, each awaiting one script call per result, sharing a
/// multiplexed connection (which pipelines concurrent requests on its own).
pub async fn ceiling_script(
    conn: &MultiplexedConnection,
    run: &str,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<Duration> {
    let script = redis::Script::new(STORE_SCRIPT);
    // Load it once so the timed part is EVALSHA, as in the worker after its first call.
    let mut c = conn.clone();
    let _: i64 = script
        .key(format!("bench-script-{run}-warm"))
        .arg("{}")
        .arg(60)
        .arg("0")
        .invoke_async(&mut c)
        .await
        .context("loading the store script")?;
    let started = Instant::now();
    let per = n.div_ceil(in_flight);
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let mut c = conn.clone();
        let script = script.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (w * per)..((w + 1) * per).min(n) {
                let key = format!("bench-script-{run}-{i}");
                let doc = sample_document(&key);
                let _: i64 = script
                    .key(&key)
                    .arg(doc)
                    .arg(60)
                    .arg("0")
                    .invoke_async(&mut c)
                    .await?;
            }
            Ok::<_, redis::RedisError>(())
        }));
    }
    for t in tasks {
        t.await.context("script writer panicked")??;
    }
    let took = started.elapsed();
    let mut c = conn.clone();
    let keys: Vec<String> = (0..n).map(|i| format!("bench-script-{run}-{i}")).collect();
    for chunk in keys.chunks(1000) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
    }
    let _: Result<i64, _> = redis::cmd("DEL")
        .arg(format!("bench-script-{run}-warm"))
        .query_async(&mut c)
        .await;
    Ok(took)
}
