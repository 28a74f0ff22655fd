//! Connecting to Redis, for every Redis adapter (results, revoked ids, remote control, the
//! failure log, the migration of the old delayed store), and the error type of their commands.
//! The one place that knows where Redis is: one server (`redis://`, `rediss://`) or a master
//! that Sentinel names (Celery's `sentinel://h1:26379/0;sentinel://h2:26379/0`, with the
//! master's name in `WORKER_REDIS_MASTER_NAME`, Celery's `master_name` transport option).
//!
//! [`RedisConn`] is what the adapters hold: a clone shares one `ConnectionManager`, which
//! multiplexes commands over one connection and reconnects by itself. Behind Sentinel the
//! manager is bound to the master's address, so after a failover it would reconnect to the old
//! master, now a replica (`READONLY`) or gone: a command that fails with a connection error or
//! `READONLY` asks the sentinels again, and when the master moved, a new manager on the new
//! address replaces the old one for every clone. A command refused with `READONLY` was not
//! run, so it is sent once more to the new master; any other failed command is returned as an
//! error (the result writer then keeps the result in the durable undelivered-results queue).
//!
//! TLS: `rediss://` (or `WORKER_REDIS_CA_FILE` with Sentinel, for the master) verifies the
//! server against `WORKER_REDIS_CA_FILE` when set (else the system roots), and presents
//! `WORKER_REDIS_CERT_FILE`/`WORKER_REDIS_KEY_FILE` when set. A certificate that does not
//! verify is reported as such, never retried as "unreachable" before the first connection.
//!
//! Connecting retries with backoff while Redis is unreachable (compose starts services in any
//! order); every log line and error names the URL with its password hidden. A URL the client
//! cannot parse is refused by [`check_target`] at startup instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisFuture,
    ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use tracing::{info, warn};

use crate::backoff::backoff;
use crate::settings::{ConnectionSettings, redact_text, redact_url};

/// Largest CA/certificate/key file read (a PEM bundle of a few hundred certificates).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Most sentinels in one `sentinel://` list.
const MAX_SENTINELS: usize = 16;

/// Redis could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RedisConnectError {
    #[error("Redis at {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// The server's certificate does not verify against the CA we were given.
    #[error(
        "Redis at {url}: TLS certificate verify failed ({reason}); check WORKER_REDIS_CA_FILE and the server's certificate"
    )]
    CertificateVerifyFailed { url: String, reason: String },
    #[error("reading {what} {path}: {reason}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// REDIS_URL cannot be parsed (checked at startup, before anything connects).
#[derive(Debug, thiserror::Error)]
#[error(
    "REDIS_URL is not a valid Redis URL ({reason}); expected redis://[user:password@]host:6379[/db] (or rediss://), or sentinel://[:password@]host:26379[/db];sentinel://... with WORKER_REDIS_MASTER_NAME, with any / ? # @ : % ; in the password percent-encoded"
)]
pub struct InvalidRedisUrl {
    reason: String,
}

/// A command on one of our keys failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the value stored for {key} is not what this worker writes: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where Redis is and how to talk to it, from the settings.
#[derive(Clone)]
pub(crate) struct RedisTarget {
    /// REDIS_URL with REDIS_DB applied (one server), or the `sentinel://` list as given.
    url: String,
    db: i64,
    master_name: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl RedisTarget {
    pub(crate) fn new(conn: &ConnectionSettings) -> Self {
        let sentinel = is_sentinel(&conn.redis_url);
        Self {
            url: if sentinel {
                conn.redis_url.clone()
            } else {
                conn.redis_url_with_db()
            },
            db: conn.redis_db,
            master_name: conn.redis_master_name.clone(),
            ca_file: conn.redis_ca_file.clone(),
            cert_file: conn.redis_cert_file.clone(),
            key_file: conn.redis_key_file.clone(),
        }
    }

    /// A `redis://` URL as it is, with no TLS files or Sentinel.
    pub(crate) fn plain(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            db: 0,
            master_name: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    /// The URL with its secrets hidden.
    pub(crate) fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

fn is_sentinel(url: &str) -> bool {
    url.trim_start()
        .get(..11)
        .is_some_and(|s| s.eq_ignore_ascii_case("sentinel://"))
}

/// One `sentinel://[user:password@]host:port[/db]` of the list.
struct SentinelUrl {
    addr: ConnectionAddr,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
}

/// The sentinels of a `sentinel://a;sentinel://b` list. As Celery does, the password (and
/// user and db) of the first entry are those of the master; the sentinels get none.
fn parse_sentinels(url: &str) -> Result<Vec<SentinelUrl>, InvalidRedisUrl> {
    let bad = |reason: &str| InvalidRedisUrl {
        reason: reason.to_owned(),
    };
    let chunks: Vec<&str> = url.split(';').filter(|c| !c.trim().is_empty()).collect();
    if chunks.is_empty() || chunks.len() > MAX_SENTINELS {
        return Err(bad("a sentinel:// list needs 1 to 16 sentinels"));
    }
    chunks
        .into_iter()
        .map(|chunk| {
            // Parsed as a redis:// URL: same userinfo, host, port and db rules.
            let chunk = chunk.trim();
            if !is_sentinel(chunk) {
                return Err(bad(
                    "every entry of a sentinel list starts with sentinel://",
                ));
            }
            let as_redis = format!("redis://{}", &chunk[11..]);
            let info = redis::IntoConnectionInfo::into_connection_info(as_redis.as_str())
                .map_err(|e| bad(&redact_text(&e.to_string())))?;
            let addr = match info.addr() {
                ConnectionAddr::Tcp(host, port) => ConnectionAddr::Tcp(host.clone(), *port),
                _ => return Err(bad("a sentinel is host:port")),
            };
            let redis = info.redis_settings();
            let path = chunk[11..].split_once('/').map(|(_, p)| p);
            Ok(SentinelUrl {
                addr,
                username: redis.username().map(str::to_owned),
                password: redis.password().map(str::to_owned),
                db: path.filter(|p| !p.is_empty()).map(|_| redis.db()),
            })
        })
        .collect()
}

/// Whether `target` is one the client accepts; nothing connects.
pub(crate) fn check_target(target: &RedisTarget) -> Result<(), InvalidRedisUrl> {
    if is_sentinel(&target.url) {
        parse_sentinels(&target.url)?;
        if target.master_name.as_deref().is_none_or(str::is_empty) {
            return Err(InvalidRedisUrl {
                reason: "a sentinel:// URL needs the master's name in WORKER_REDIS_MASTER_NAME (Celery's master_name transport option)".to_owned(),
            });
        }
        return Ok(());
    }
    Client::open(target.url.as_str())
        .map(drop)
        .map_err(|e| InvalidRedisUrl {
            reason: redact_text(&e.to_string()),
        })
}

/// A PEM file, bounded in size.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, RedisConnectError> {
    let error = |reason: String| RedisConnectError::TlsFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(error(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    std::fs::read(path).map_err(|e| error(e.to_string()))
}

/// The CA and client certificate the settings name, if any.
fn certificates(target: &RedisTarget) -> Result<Option<TlsCertificates>, RedisConnectError> {
    let root_cert = match &target.ca_file {
        Some(path) => Some(read_pem("WORKER_REDIS_CA_FILE", path)?),
        None => None,
    };
    let client_tls = match (&target.cert_file, &target.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem("WORKER_REDIS_CERT_FILE", cert)?,
            client_key: read_pem("WORKER_REDIS_KEY_FILE", key)?,
        }),
        (None, None) => None,
        (Some(path), None) | (None, Some(path)) => {
            return Err(RedisConnectError::TlsFile {
                what: "WORKER_REDIS_CERT_FILE/WORKER_REDIS_KEY_FILE",
                path: path.clone(),
                reason: "set both or neither".to_owned(),
            });
        }
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// Whether a connection error is a certificate that did not verify.
fn certificate_failure(e: &redis::RedisError) -> Option<String> {
    let text = format!("{e:?} {e}");
    let lower = text.to_ascii_lowercase();
    [
        "invalidcertificate",
        "unknownissuer",
        "certificate verify failed",
        "badsignature",
        "notvalidforname",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
    .then(|| redact_text(&e.to_string()))
}

/// The sentinels, and the connection settings of the master they name.
struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    /// When the master was last asked for: a burst of failing commands asks once.
    resolved_at: std::sync::Mutex<Instant>,
}

struct Shared {
    current: RwLock<(ConnectionManager, Client)>,
    sentinel: Option<Sentinel>,
    config: ConnectionManagerConfig,
    redacted: String,
}

/// The Redis connection every adapter holds (see the module notes). Cheap to clone.
#[derive(Clone)]
pub struct RedisConn(Arc<Shared>);

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("url", &self.0.redacted)
            .finish()
    }
}

impl RedisConn {
    fn manager(&self) -> ConnectionManager {
        self.0
            .current
            .read()
            .map_or_else(|p| p.into_inner().0.clone(), |g| g.0.clone())
    }

    /// A client on the current master, for what a manager cannot do (pub/sub).
    pub(crate) fn client(&self) -> Client {
        self.0
            .current
            .read()
            .map_or_else(|p| p.into_inner().1.clone(), |g| g.1.clone())
    }

    /// Behind Sentinel, the `redis://` URL of the master as it is now, for the jobs' own
    /// connection (the jobs crate takes a plain URL; it does not follow a later failover).
    pub(crate) fn master_url(&self) -> Option<String> {
        self.0.sentinel.as_ref()?;
        let client = self.client();
        let info = client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let redis = info.redis_settings();
        let userinfo = match (redis.username(), redis.password()) {
            (user, Some(pw)) => format!(
                "{}:{}@",
                percent_encode(user.unwrap_or_default()),
                percent_encode(pw)
            ),
            (Some(user), None) => format!("{}@", percent_encode(user)),
            (None, None) => String::new(),
        };
        Some(format!("redis://{userinfo}{host}:{port}/{}", redis.db()))
    }

    /// After a failed command: whether the error may mean the master moved.
    fn may_have_moved(e: &redis::RedisError) -> bool {
        e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || Self::refused_write(e)
            || e.kind() == ErrorKind::Server(ServerErrorKind::MasterDown)
    }

    /// The server refused the command before running it: a replica (`READONLY`), or a master
    /// that lost its replicas (`NOREPLICAS`, with `min-replicas-to-write`, which is how an old
    /// master cut off by a failover stops taking writes that its demotion would discard).
    fn refused_write(e: &redis::RedisError) -> bool {
        e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
            || e.code() == Some("NOREPLICAS")
            || e.to_string().contains("NOREPLICAS")
    }

    /// Ask the sentinels for the master; when it moved, replace the manager. Returns whether
    /// the manager was replaced.
    async fn re_resolve(&self) -> bool {
        let Some(sentinel) = &self.0.sentinel else {
            return false;
        };
        let mut client = sentinel.client.lock().await;
        {
            let mut at = sentinel
                .resolved_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Another command just asked: its answer stands.
            if at.elapsed() < Duration::from_millis(200) {
                return false;
            }
            *at = Instant::now();
        }
        let master = match client.async_get_client().await {
            Ok(master) => master,
            Err(e) => {
                warn!(url = %self.0.redacted, error = %redact_text(&e.to_string()), "Sentinel could not name the Redis master");
                return false;
            }
        };
        drop(client);
        let old = self.client().get_connection_info().addr().to_string();
        let new = master.get_connection_info().addr().to_string();
        if old == new {
            return false;
        }
        match ConnectionManager::new_with_config(master.clone(), self.0.config.clone()).await {
            Ok(manager) => {
                warn!(url = %self.0.redacted, old_master = %old, new_master = %new, "the Redis master moved (Sentinel failover); now using the new master");
                *self.0.current.write().unwrap_or_else(|p| p.into_inner()) = (manager, master);
                true
            }
            Err(e) => {
                warn!(url = %self.0.redacted, master = %new, error = %redact_text(&e.to_string()), "cannot reach the new Redis master yet");
                false
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.manager().req_packed_command(cmd).await;
            match result {
                Err(e) if self.0.sentinel.is_some() && Self::may_have_moved(&e) => {
                    let moved = self.re_resolve().await;
                    // Refused before it ran: safe to send it again, to the new master.
                    if moved && Self::refused_write(&e) {
                        return self.manager().req_packed_command(cmd).await;
                    }
                    Err(e)
                }
                other => other,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.manager().req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &result
                && self.0.sentinel.is_some()
                && Self::may_have_moved(e)
            {
                // A pipeline may have partly run: never sent again.
                self.re_resolve().await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

/// Behind Sentinel, ask for the master every second while any clone of the connection lives.
/// A failover promotes the replica at once but demotes the old master only at the sentinels'
/// next poll (~10 s): until then it still takes writes, which its resync then discards. Errors
/// alone would notice the move only at the demotion; this bounds the window to about a second
/// (and `min-replicas-to-write 1` on the servers closes it, see docs/deployment.md).
async fn watch_master(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        RedisConn(shared).re_resolve().await;
    }
}

/// Every byte outside RFC 3986's unreserved set, percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection on `target`, retrying while Redis is unreachable (`attempts` = None: forever).
pub(crate) async fn connect(
    target: &RedisTarget,
    attempts: Option<u32>,
) -> Result<RedisConn, RedisConnectError> {
    let redacted = target.redacted();
    let unreachable = |source| RedisConnectError::Unreachable {
        url: redacted.clone(),
        source,
    };
    let certs = certificates(target)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let sentinel = if is_sentinel(&target.url) {
        let list = parse_sentinels(&target.url).map_err(|e| {
            unreachable(redis::RedisError::from((
                ErrorKind::InvalidClientConfig,
                "invalid sentinel list",
                e.to_string(),
            )))
        })?;
        let first = &list[0];
        let mut builder = SentinelClientBuilder::new(
            list.iter().map(|s| s.addr.clone()),
            target.master_name.clone().unwrap_or_default(),
            SentinelServerType::Master,
        )
        .map_err(unreachable)?
        .set_client_to_redis_db(first.db.unwrap_or(target.db));
        if let Some(user) = &first.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &first.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(certs) = certs.clone() {
            // A CA or client certificate with Sentinel: the master speaks TLS.
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_redis_certificates(certs);
        }
        Some(Sentinel {
            client: tokio::sync::Mutex::new(builder.build().map_err(unreachable)?),
            resolved_at: std::sync::Mutex::new(Instant::now() - Duration::from_secs(1)),
        })
    } else {
        None
    };
    let mut attempt: u32 = 0;
    loop {
        let client = match &sentinel {
            Some(s) => s.client.lock().await.async_get_client().await,
            None => match &certs {
                Some(certs) => Client::build_with_tls(target.url.as_str(), certs.clone()),
                None => Client::open(target.url.as_str()),
            },
        };
        let connected = match client {
            Ok(client) => ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .map(|manager| (manager, client)),
            Err(e) => Err(e),
        };
        match connected {
            Ok(current) => {
                if sentinel.is_some() {
                    info!(url = %redacted, master = %current.1.get_connection_info().addr(), "connected to the Redis master Sentinel names");
                }
                let conn = RedisConn(Arc::new(Shared {
                    current: RwLock::new(current),
                    sentinel,
                    config,
                    redacted,
                }));
                if conn.0.sentinel.is_some() {
                    tokio::spawn(watch_master(Arc::downgrade(&conn.0)));
                }
                return Ok(conn);
            }
            Err(source) => {
                if let Some(reason) = certificate_failure(&source) {
                    return Err(RedisConnectError::CertificateVerifyFailed {
                        url: redacted,
                        reason,
                    });
                }
                if source.kind() == ErrorKind::InvalidClientConfig {
                    return Err(unreachable(source));
                }
                attempt = attempt.saturating_add(1);
                if attempts.is_some_and(|max| attempt >= max) {
                    return Err(unreachable(source));
                }
                let wait = backoff(attempt, Duration::from_secs(30));
                warn!(url = %redacted, error = %redact_text(&source.to_string()), retry_in = ?wait, "Redis is unreachable; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_lists_parse_as_celery_writes_them() {
        let list = parse_sentinels("sentinel://:s3cret@h1:26379/2;sentinel://h2:26380/2").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].password.as_deref(), Some("s3cret"));
        assert_eq!(list[0].db, Some(2));
        assert!(matches!(&list[1].addr, ConnectionAddr::Tcp(h, 26380) if h == "h2"));
        assert!(parse_sentinels("sentinel://h1:26379;redis://h2").is_err());
        assert!(parse_sentinels(&"sentinel://h:1;".repeat(17)).is_err());
        let mut target = RedisTarget::plain("sentinel://h1:26379");
        assert!(
            check_target(&target)
                .unwrap_err()
                .to_string()
                .contains("WORKER_REDIS_MASTER_NAME")
        );
        target.master_name = Some("mymaster".to_owned());
        check_target(&target).unwrap();
        let e = check_target(&RedisTarget::plain("sentinel://:pw@h1:notaport"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw@"), "{e}");
    }
}
