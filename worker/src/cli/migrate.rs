//! `worker migrate`: apply the jobs' migrations to DATABASE_URL. `worker run` never migrates by
//! itself: schema changes are a deliberate step (compose runs this as a one-shot service).

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;

use super::Outcome;
use crate::config::{ConnectionSettings, redact_url};

pub async fn migrate(conn: &ConnectionSettings) -> anyhow::Result<Outcome> {
    let url = conn.database_url_for_sqlx();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact_url(&url)))?;
    jobs::migrate(&pool).await.context("applying migrations")?;
    println!("migrations applied to {}", redact_url(&url));
    Ok(Outcome::Success)
}
