//! PostgreSQL as the worker itself sees it: one pool shared by the jobs and `/readyz`, a startup
//! probe that says in one log line what is wrong and what to do, and `--migrate` / `worker
//! migrate`, which create the database when it does not exist yet and apply the jobs' schema.
//!
//! The worker never needs PostgreSQL to start: Celery tasks that touch no database keep
//! running while it is down, StaffProBot's jobs fail into retries, and `/readyz` names it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tracing::{info, warn};

use crate::settings::{redact_text, redact_url};

/// How long the startup probe waits for PostgreSQL.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What is wrong with the database, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error(
        "DATABASE_URL is not a valid PostgreSQL URL ({0}); expected postgresql://user:password@host:5432/dbname, with any / ? # @ : % in the password percent-encoded"
    )]
    InvalidUrl(String),
    #[error(
        "PostgreSQL database {name:?} does not exist at {url}: run `worker migrate` (it creates and migrates the database) or start with `worker run --migrate`"
    )]
    Missing { name: String, url: String },
    #[error("PostgreSQL at {url} refused the login: check the user and password in DATABASE_URL")]
    Authentication { url: String },
    #[error(
        "PostgreSQL at {url} is unreachable ({reason}): start it, or fix the host and port in DATABASE_URL"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "PostgreSQL at {url}: TLS certificate verify failed: check sslrootcert (and sslmode) in DATABASE_URL"
    )]
    CertificateVerifyFailed { url: String },
    #[error("PostgreSQL at {url}: {reason}")]
    Other { url: String, reason: String },
    #[error("applying the migrations to {url}: {reason}")]
    Migrate { url: String, reason: String },
}

/// Whether an io error of a TLS handshake is a certificate that did not verify.
pub(crate) fn is_certificate_failure(io: &std::io::Error) -> bool {
    let text = format!("{io:?} {io}").to_ascii_lowercase();
    text.contains("invalid peer certificate") || text.contains("invalidcertificate")
}

impl DatabaseError {
    fn classify(url: &str, name: &str, e: &sqlx::Error) -> Self {
        let url = redact_url(url);
        match e {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // invalid_catalog_name
                Some("3D000") => Self::Missing {
                    name: name.to_owned(),
                    url,
                },
                // invalid_password, invalid_authorization_specification
                Some("28P01") | Some("28000") => Self::Authentication { url },
                _ => Self::Other {
                    url,
                    reason: db.message().to_owned(),
                },
            },
            // rustls through sqlx: an io error "invalid peer certificate: UnknownIssuer".
            sqlx::Error::Io(io) if is_certificate_failure(io) => {
                Self::CertificateVerifyFailed { url }
            }
            sqlx::Error::Io(io) => Self::Unreachable {
                url,
                reason: io.kind().to_string(),
            },
            sqlx::Error::PoolTimedOut => Self::Unreachable {
                url,
                reason: "timed out".into(),
            },
            sqlx::Error::Tls(_) => Self::Other {
                url,
                reason: "TLS negotiation failed".into(),
            },
            // Other variants can quote the URL; say only what kind of failure it was.
            sqlx::Error::Configuration(_) => Self::InvalidUrl("bad option".into()),
            _ => Self::Other {
                url,
                reason: "unexpected error".into(),
            },
        }
    }
}

/// Whether `url` (as sqlx takes it, `+asyncpg` removed) is a PostgreSQL URL; nothing connects.
pub(crate) fn check_url(url: &str) -> Result<(), DatabaseError> {
    options(url).map(drop)
}

fn options(url: &str) -> Result<PgConnectOptions, DatabaseError> {
    // sqlx takes any scheme; `http://...` is a mistake, not a database.
    match url.split_once("://") {
        Some(("postgres" | "postgresql", _)) => {}
        Some((scheme, _))
            if scheme.len() <= 16
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+') =>
        {
            return Err(DatabaseError::InvalidUrl(format!(
                "the scheme is {scheme}, not postgresql"
            )));
        }
        _ => return Err(DatabaseError::InvalidUrl("not a URL".into())),
    }
    PgConnectOptions::from_str(url).map_err(|e| {
        DatabaseError::InvalidUrl(match e {
            sqlx::Error::Configuration(c) => {
                // The parser's message may quote the URL, password included.
                let text = c.to_string();
                if text.contains(url) {
                    "cannot parse it".into()
                } else {
                    redact_text(&text)
                }
            }
            _ => "cannot parse it".into(),
        })
    })
}

/// A pool that connects on first use, for a process that runs no jobs (`worker scheduler`,
/// `worker schedules`): the scheduler keeps its claims and last runs in PostgreSQL.
pub(crate) fn lazy_pool(url: &str, max_connections: u32) -> Result<PgPool, DatabaseError> {
    let target = options(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(target))
}

/// Check once that the jobs' database answers; on failure, log one line that says what is
/// wrong and what to do. The worker starts either way.
pub(crate) async fn probe_at_startup(pool: &PgPool, url: &str) {
    let name = options(url)
        .ok()
        .and_then(|o| o.get_database().map(str::to_owned))
        .unwrap_or_default();
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await;
    let problem = match outcome {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => DatabaseError::classify(url, &name, &e),
        Err(_) => DatabaseError::Unreachable {
            url: redact_url(url),
            reason: format!("no answer within {PROBE_TIMEOUT:?}"),
        },
    };
    warn!(
        "{problem}. StaffProBot jobs fail (and are retried) until PostgreSQL is usable; tasks that need no database run normally; /readyz reports postgres"
    );
}

/// Create the database `url` names if it does not exist, then apply the jobs' migrations.
pub(crate) async fn create_and_migrate(url: &str) -> Result<(), DatabaseError> {
    let target = options(url)?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    match target.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
        }
        Err(e) => match DatabaseError::classify(url, &name, &e) {
            DatabaseError::Missing { .. } => create_database(url, &target, &name).await?,
            other => return Err(other),
        },
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(target)
        .await
        .map_err(|e| DatabaseError::classify(url, &name, &e))?;
    // sqlx takes an advisory lock, so replicas migrating at once take turns.
    let migrated = jobs::migrate(&pool).await;
    pool.close().await;
    migrated.map_err(|e| DatabaseError::Migrate {
        url: redact_url(url),
        reason: redact_text(&e.to_string()),
    })?;
    info!(database = %name, "database schema is up to date");
    Ok(())
}

async fn create_database(
    url: &str,
    target: &PgConnectOptions,
    name: &str,
) -> Result<(), DatabaseError> {
    // CREATE DATABASE runs from the server's maintenance database.
    let mut admin = target
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(|e| DatabaseError::classify(url, "postgres", &e))?;
    let statement = format!("CREATE DATABASE {}", quote_identifier(name));
    let created = sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
    match created {
        Ok(_) => {
            info!(database = %name, "created the database");
            Ok(())
        }
        // duplicate_database: another replica created it a moment ago.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(DatabaseError::classify(url, name, &e)),
    }
}

/// `name` as a PostgreSQL identifier, quoted: any character is allowed, `"` doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_whatever_they_hold() {
        assert_eq!(quote_identifier("staffprobot"), "\"staffprobot\"");
        assert_eq!(quote_identifier("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }

    #[test]
    fn an_invalid_url_does_not_echo_the_password() {
        for url in [
            "postgresql://u:s3cret@h:notaport/db",
            "postgresql://u:Zq7u/s3cret?Mw#Tp@Rv:%2Fw@h:5432/db",
            "http://u:s3cret@h/db",
            "not a url s3cret",
        ] {
            let e = options(url).unwrap_err().to_string();
            assert!(e.starts_with("DATABASE_URL is not a valid"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(check_url("postgres://u:p%2Fw@h:5432/db?password=x").is_ok());
    }
}
