//! Transactions that count their `BEGIN` and `COMMIT`, so [`crate::Context::statements_executed`]
//! reports every round trip a job makes, and the schema migrations.

use sqlx::{PgPool, Postgres, Transaction};

use crate::{Context, JobError};

/// The schema the jobs need (`jobs/migrations/`), embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the pending migrations. Only `worker migrate` calls it: `worker run` never changes a
/// schema by itself.
pub async fn migrate(pool: &PgPool) -> Result<(), JobError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Starts a transaction, counting the `BEGIN`.
pub(crate) async fn begin(ctx: &Context) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    ctx.count_statement();
    ctx.db().begin().await
}

/// Waits for the transaction-scoped advisory lock named `name` (counted): runs that take the same
/// name inside a transaction take turns until the first one commits or rolls back.
pub(crate) async fn lock_named(
    ctx: &Context,
    tx: &mut Transaction<'static, Postgres>,
    name: &str,
) -> Result<(), sqlx::Error> {
    ctx.count_statement();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Commits, counting the `COMMIT`.
pub(crate) async fn commit(
    ctx: &Context,
    tx: Transaction<'static, Postgres>,
) -> Result<(), sqlx::Error> {
    ctx.count_statement();
    tx.commit().await
}
