//! `worker revoke ID... [--terminate]`: Celery's `app.control.revoke` (and `celery control
//! revoke`), sent with a reply wanted so the operator sees which nodes took it. Python Celery
//! workers understand it as well.

use clap::Args;
use serde_json::{Map, Value, json};

use super::Outcome;
use super::inspect::{Target, broadcast};
use crate::settings::ConnectionSettings;

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The task ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Also cancel the task where it is running (it is stored REVOKED at once).
    #[arg(long)]
    pub terminate: bool,
    /// The signal Celery's prefork pool would send; carried for Python workers.
    #[arg(long, default_value = "SIGTERM")]
    pub signal: String,
    #[command(flatten)]
    pub target: Target,
}

pub(crate) async fn revoke(conn: &ConnectionSettings, a: RevokeArgs) -> anyhow::Result<Outcome> {
    let mut arguments = Map::new();
    let ids: Value = if a.ids.len() == 1 {
        json!(a.ids[0])
    } else {
        json!(a.ids)
    };
    arguments.insert("task_id".into(), ids);
    arguments.insert("terminate".into(), json!(a.terminate));
    arguments.insert("signal".into(), json!(a.signal));
    broadcast(conn, "revoke", arguments, &a.target).await
}
