//! `worker migrate`: create the database DATABASE_URL names if it does not exist, and apply the
//! jobs' migrations. `worker run` migrates only when asked (`--migrate`): in production, schema
//! changes are a deliberate step (compose runs this as a one-shot service).

use super::Outcome;
use crate::adapters::postgres;
use crate::settings::{ConnectionSettings, redact_url};

pub(crate) async fn migrate(conn: &ConnectionSettings) -> anyhow::Result<Outcome> {
    let url = conn.database_url_for_sqlx();
    postgres::create_and_migrate(&url).await?;
    println!("migrations applied to {}", redact_url(&url));
    Ok(Outcome::Success)
}
