//! `worker migrate`: create the database DATABASE_URL names if it does not exist, apply the
//! jobs' migrations, and create the scheduler's table. `worker run` migrates only when asked (`--migrate`): in production, schema
//! changes are a deliberate step (compose runs this as a one-shot service).

use super::Outcome;
use crate::adapters::postgres;
use crate::settings::{ConnectionSettings, redact_url};

pub(crate) async fn migrate(conn: &ConnectionSettings) -> anyhow::Result<Outcome> {
    let url = conn.database_url_for_sqlx();
    postgres::create_and_migrate(&url).await?;
    // The scheduler's tick claims and last runs (it creates the table itself too, so a
    // deployment that never runs `migrate` still works).
    let pool = postgres::lazy_pool(&url, 1)?;
    let prepared = crate::app::scheduler::prepare_state(&pool).await;
    pool.close().await;
    prepared.map_err(|e| {
        anyhow::anyhow!(
            "creating the scheduler's table: {}",
            crate::settings::redact_text(&e.to_string())
        )
    })?;
    println!("migrations applied to {}", redact_url(&url));
    Ok(Outcome::Success)
}
