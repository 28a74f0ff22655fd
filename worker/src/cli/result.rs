//! `worker result ID`: a task's state and result, optionally waiting for it to finish.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::Outcome;
use super::output::print_result;
use crate::adapters::redis_conn;
use crate::adapters::results::ResultStore;
use crate::settings::ConnectionSettings;

#[derive(Debug, Args)]
pub(crate) struct ResultArgs {
    /// The task id.
    pub id: String,
    /// Wait until the task succeeds, fails or is revoked.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Print the stored JSON document.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn open_results(conn: &ConnectionSettings) -> anyhow::Result<ResultStore> {
    let redis = redis_conn::connect(&redis_conn::RedisTarget::new(conn), Some(3)).await?;
    Ok(ResultStore::new(
        redis,
        &conn.result_key_prefix,
        conn.result_expires,
    ))
}

pub(crate) async fn result(conn: &ConnectionSettings, args: ResultArgs) -> anyhow::Result<Outcome> {
    let store = open_results(conn).await?;
    show(&store, &args.id, args.wait, args.timeout, args.json).await
}

/// Print a result (waiting if asked) and return its outcome; shared with `send --wait`.
pub(crate) async fn show(
    store: &ResultStore,
    id: &str,
    wait: bool,
    timeout: f64,
    json: bool,
) -> anyhow::Result<Outcome> {
    let meta = if wait {
        let timeout = Duration::try_from_secs_f64(timeout)
            .context("--timeout must be a positive number of seconds")?;
        store.wait(id, timeout).await?
    } else {
        store.get(id).await?
    };
    let timed_out = wait && !meta.as_ref().is_some_and(|m| m.status.is_ready());
    let raw = store.get_raw(id).await?;
    let raw = raw.filter(|r| {
        meta.as_ref()
            .is_some_and(|m| r.get("status").and_then(|s| s.as_str()) == Some(m.status.as_str()))
    });
    Ok(print_result(
        id,
        meta.as_ref(),
        raw.as_ref(),
        json,
        timed_out,
    ))
}
