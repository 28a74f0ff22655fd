//! Connecting to RabbitMQ. An unreachable broker is normal at startup (compose starts services
//! in any order) and during restarts: log which URL, without its password, and keep trying,
//! one warning line per attempt.
//!
//! A wrong RABBITMQ_URL is not a broker that is down, and retrying it forever as "unreachable"
//! hides the mistake. [`parse_url`] lets startup refuse a malformed URL before anything
//! connects. A broker that answers but refuses who we are — ACCESS_REFUSED for the login,
//! NOT_ALLOWED for the vhost — is [`BrokerError::Authentication`] or
//! [`BrokerError::VhostRefused`]: before the first connection ever succeeded that is a setting
//! to fix, and [`connect_with_backoff`] returns it (the worker exits 2); once the worker has
//! connected, it is more likely credentials rotated under it, so it is logged as such and
//! retried at the longest backoff.
//!
//! Unless the URL sets `frame_max`, we ask for 128 KiB frames, RabbitMQ's default and what
//! kombu publishes with. An AMQP content header (the message's properties and Celery's
//! headers) must fit in one frame: with smaller frames a Python client's message whose headers
//! exceed them is a FRAME-ERROR, the connection dies, and the redelivered message kills the
//! next connection the same way. lapin keeps a receive and a send buffer of 32 frames per
//! connection, so the frame size sets that memory; `?frame_max=16384` trades it back where
//! every publisher's headers are known to stay small.
//!
//! RABBITMQ_URL may list several brokers, as Celery's `broker_url` does (`amqp://h1;amqp://h2`,
//! kombu's alternates; commas between URLs work too): [`broker_urls`] splits it, startup checks
//! every entry with [`parse_urls`], and [`connect`] tries them in turn, kombu's round-robin
//! failover. Every connection of the process (consumer, publisher, mailbox, results drainer,
//! CLI) goes through [`connect`], so all of them follow the same list. An attempt starts at the
//! broker that answered last (a process-wide hint that nothing else depends on), so that every
//! connection does not first knock on a node that is gone; when that node dies, the next one in
//! the list is tried, and the log line names the failover.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use tracing::{info, warn};

use super::BrokerError;
use crate::backoff::backoff;
use crate::settings::{ConnectionSettings, redact_text, redact_url};
use crate::shutdown::{Phase, Shutdown};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long one broker of the list gets to answer before the next is tried: a node whose host
/// is down drops packets instead of refusing, and lapin itself never gives up on it (kombu's
/// `broker_connection_timeout` is 4 s; TLS and a loaded node need more).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Brokers in one RABBITMQ_URL, beyond which the list is refused (a list is a cluster's nodes).
const MAX_BROKERS: usize = 32;

/// The index in the list of the broker that answered last (see the module notes).
static LAST_ANSWERED: AtomicUsize = AtomicUsize::new(0);

/// The frame size we ask for when the URL does not say (see the module notes).
pub(crate) const DEFAULT_FRAME_MAX: u32 = 128 * 1024;

/// What [`connect_with_backoff`] does when the broker refuses the login or the vhost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnRefusal {
    /// Return the error: no connection has succeeded yet, so the setting is wrong.
    Fail,
    /// Log it and retry at the longest backoff: the worker was connected before.
    Retry,
}

/// RABBITMQ_URL parsed as lapin will use it: `amqp://` or `amqps://`, a host, a valid port.
pub(crate) fn parse_url(url: &str) -> Result<AMQPUri, BrokerError> {
    url.parse::<AMQPUri>()
        .map_err(|reason| BrokerError::InvalidUrl {
            // amq-protocol quotes the whole URL in some of its reasons.
            reason: if reason.contains(url) {
                "not a URL".to_owned()
            } else {
                redact_text(&reason)
            },
        })
}

/// The CA and client certificate for `amqps://` (WORKER_RABBITMQ_CA_FILE, _CERT_FILE,
/// _KEY_FILE), read once by [`configure_tls`]. Process-wide because every connection of the
/// process (consumer, publisher, control, dead letters) goes to the same broker with the same
/// files, and the URL is all they are handed.
static TLS: OnceLock<TlsFiles> = OnceLock::new();

/// The CA bundle (PEM text) and the client certificate and key (PEM).
type TlsFiles = (Option<String>, Option<(Vec<u8>, Vec<u8>)>);

/// Largest CA/certificate/key file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, BrokerError> {
    let error = |reason: String| BrokerError::TlsFile {
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

/// Read the TLS files the settings name (once per process; later calls change nothing).
pub(crate) fn configure_tls(conn: &ConnectionSettings) -> Result<(), BrokerError> {
    if TLS.get().is_some() {
        return Ok(());
    }
    let ca = match &conn.rabbitmq_ca_file {
        Some(path) => Some(
            String::from_utf8(read_pem("WORKER_RABBITMQ_CA_FILE", path)?).map_err(|_| {
                BrokerError::TlsFile {
                    what: "WORKER_RABBITMQ_CA_FILE",
                    path: path.clone(),
                    reason: "not PEM text".to_owned(),
                }
            })?,
        ),
        None => None,
    };
    let identity = match (&conn.rabbitmq_cert_file, &conn.rabbitmq_key_file) {
        (Some(cert), Some(key)) => Some((
            read_pem("WORKER_RABBITMQ_CERT_FILE", cert)?,
            read_pem("WORKER_RABBITMQ_KEY_FILE", key)?,
        )),
        (None, None) => None,
        (Some(path), None) | (None, Some(path)) => {
            return Err(BrokerError::TlsFile {
                what: "WORKER_RABBITMQ_CERT_FILE/WORKER_RABBITMQ_KEY_FILE",
                path: path.clone(),
                reason: "set both or neither".to_owned(),
            });
        }
    };
    let _ = TLS.set((ca, identity));
    Ok(())
}

/// The TLS configuration for `amqps://`: the CA added to the system roots, the client
/// certificate if any. Plain `amqp://` ignores it.
fn tls_config() -> OwnedTLSConfig {
    let Some((ca, identity)) = TLS.get() else {
        return OwnedTLSConfig::default();
    };
    OwnedTLSConfig {
        identity: identity.as_ref().map(|(pem, key)| OwnedIdentity::PKCS8 {
            pem: pem.clone(),
            key: key.clone(),
        }),
        cert_chain: ca.clone(),
    }
}

/// The URLs of a RABBITMQ_URL list, in order: split at every `;` (kombu's alternates) and at
/// a `,` that an `amqp://` or `amqps://` follows (a comma can be part of a URL's query or of a
/// raw password, a scheme after it cannot), each trimmed, empty entries skipped.
pub(crate) fn broker_urls(list: &str) -> Vec<&str> {
    let mut urls = Vec::new();
    for part in list.split(';') {
        let mut rest = part;
        while let Some(at) = next_comma_before_scheme(rest) {
            urls.push(rest[..at].trim());
            rest = &rest[at + 1..];
        }
        urls.push(rest.trim());
    }
    urls.retain(|u| !u.is_empty());
    urls
}

/// The first `,` in `s` that the scheme of another AMQP URL follows.
fn next_comma_before_scheme(s: &str) -> Option<usize> {
    s.match_indices(',').map(|(i, _)| i).find(|&i| {
        let next = s[i + 1..].trim_start().as_bytes();
        let scheme = |p: &[u8]| next.len() >= p.len() && next[..p.len()].eq_ignore_ascii_case(p);
        scheme(b"amqp://") || scheme(b"amqps://")
    })
}

/// Every URL of RABBITMQ_URL parsed as [`parse_url`] does: one malformed entry makes the whole
/// list malformed (startup exits 2), rather than a node that is silently never tried.
pub(crate) fn parse_urls(list: &str) -> Result<Vec<AMQPUri>, BrokerError> {
    let urls = broker_urls(list);
    if urls.is_empty() {
        return Err(BrokerError::InvalidUrl {
            reason: "empty".to_owned(),
        });
    }
    if urls.len() > MAX_BROKERS {
        return Err(BrokerError::InvalidUrl {
            reason: format!("{} brokers listed, at most {MAX_BROKERS}", urls.len()),
        });
    }
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            parse_url(url).map_err(|e| match e {
                BrokerError::InvalidUrl { reason } if urls.len() > 1 => BrokerError::InvalidUrl {
                    reason: format!("broker {} of {}: {reason}", i + 1, urls.len()),
                },
                other => other,
            })
        })
        .collect()
}

/// One connection attempt on the list: each broker in turn from the one that answered last,
/// the first that answers wins. The error is the last broker's (a refused login or vhost at
/// once: the credentials are the list's, the next node would refuse them too).
pub(crate) async fn connect(list: &str) -> Result<Connection, BrokerError> {
    let urls = broker_urls(list);
    parse_urls(list)?;
    let start = LAST_ANSWERED.load(Ordering::Relaxed) % urls.len().max(1);
    let mut failed: Vec<String> = Vec::new();
    let mut last_error = None;
    for step in 0..urls.len() {
        let index = (start + step) % urls.len();
        let url = urls[index];
        // The last broker's failure is the caller's to report (one line per attempt).
        let more = step + 1 < urls.len();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect_one(url)).await;
        match attempt {
            Ok(Ok(conn)) => {
                LAST_ANSWERED.store(index, Ordering::Relaxed);
                if !failed.is_empty() {
                    info!(
                        url = %redact_url(url),
                        "connected to {} (failover from {})",
                        redact_url(url),
                        failed.join(", ")
                    );
                }
                return Ok(conn);
            }
            Ok(Err(e)) if e.is_refusal() => return Err(e),
            Ok(Err(e)) => {
                if more {
                    warn!(url = %redact_url(url), error = %e, "RabbitMQ broker did not answer; trying the next one");
                }
                last_error = Some(e);
            }
            Err(_) => {
                if more {
                    warn!(url = %redact_url(url), timeout = ?CONNECT_TIMEOUT, "RabbitMQ broker did not answer in time; trying the next one");
                }
                last_error = Some(BrokerError::Timeout {
                    url: redact_url(url),
                    after: CONNECT_TIMEOUT,
                });
            }
        }
        failed.push(redact_url(url));
    }
    Err(last_error.unwrap_or(BrokerError::InvalidUrl {
        reason: "empty".to_owned(),
    }))
}

/// One connection attempt to one broker.
async fn connect_one(url: &str) -> Result<Connection, BrokerError> {
    let mut uri = parse_url(url)?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    let refused_as = Refused::from(&uri);
    let props = ConnectionProperties::default()
        .with_connection_name(format!("staffprobot-worker@{}", crate::settings::hostname()).into());
    let runtime = lapin::runtime::default_runtime().map_err(|source| BrokerError::Connect {
        url: redact_url(url),
        source,
    })?;
    Connection::connect_uri_with_config(uri, props, tls_config(), runtime)
        .await
        .map_err(|source| refused_as.classify(url, source))
}

/// Connect, retrying with capped exponential backoff until connected or the shutdown begins
/// (`Ok(None)`). A refused login or vhost is returned or retried as `on_refusal` says; any
/// other failure is retried.
pub(crate) async fn connect_with_backoff(
    url: &str,
    shutdown: &Shutdown,
    on_refusal: OnRefusal,
) -> Result<Option<Connection>, BrokerError> {
    let mut attempt: u32 = 0;
    loop {
        let wait = match connect(url).await {
            Ok(conn) => {
                info!(url = %redact_url(url), "connected to RabbitMQ");
                return Ok(Some(conn));
            }
            Err(e @ BrokerError::InvalidUrl { .. }) => return Err(e),
            Err(e) if e.is_refusal() => {
                if on_refusal == OnRefusal::Fail {
                    return Err(e);
                }
                attempt = attempt.saturating_add(1);
                let what = match e {
                    BrokerError::VhostRefused { .. } => "RabbitMQ refused the vhost; retrying",
                    BrokerError::CertificateVerifyFailed { .. } => {
                        "RabbitMQ's TLS certificate does not verify; retrying"
                    }
                    _ => "RabbitMQ authentication failed; retrying",
                };
                warn!(url = %redact_url(url), error = %e, retry_in = ?MAX_BACKOFF, attempt, "{what}");
                MAX_BACKOFF
            }
            Err(e) => {
                let wait = backoff(attempt, MAX_BACKOFF);
                attempt = attempt.saturating_add(1);
                warn!(url = %redact_url(url), error = %e, retry_in = ?wait, attempt, "RabbitMQ is unreachable; retrying");
                wait
            }
        };
        tokio::select! {
            _ = shutdown.reached(Phase::StopIntake) => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Who and where a connection is for, to name them when the broker refuses it.
struct Refused {
    user: String,
    host: String,
    port: u16,
    vhost: String,
}

impl From<&AMQPUri> for Refused {
    fn from(uri: &AMQPUri) -> Self {
        Self {
            user: uri.authority.userinfo.username.clone(),
            host: uri.authority.host.clone(),
            port: uri.authority.port,
            vhost: uri.vhost.clone(),
        }
    }
}

impl Refused {
    /// The error for a failed `connect`: a refusal of the login or vhost by name, anything
    /// else as a connection failure.
    fn classify(self, url: &str, source: lapin::Error) -> BrokerError {
        let Self {
            user,
            host,
            port,
            vhost,
        } = self;
        // rustls: "invalid peer certificate: UnknownIssuer" (or BadSignature, NotValidForName...).
        let text = format!("{source:?} {source}").to_ascii_lowercase();
        if text.contains("invalid peer certificate") || text.contains("invalidcertificate") {
            return BrokerError::CertificateVerifyFailed {
                url: redact_url(url),
                reason: redact_text(&source.to_string()),
            };
        }
        match source.kind() {
            ErrorKind::ProtocolError(e) => match e.kind() {
                // RabbitMQ: "ACCESS_REFUSED - Login was refused using authentication mechanism
                // PLAIN", or "access to vhost '/' refused for user 'u'" (also 403).
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                    if e.get_message().as_str().contains("vhost") {
                        BrokerError::VhostRefused {
                            user,
                            vhost,
                            host,
                            port,
                        }
                    } else {
                        BrokerError::Authentication { user, host, port }
                    }
                }
                // "NOT_ALLOWED - vhost x not found", at connection.open.
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => BrokerError::VhostRefused {
                    user,
                    vhost,
                    host,
                    port,
                },
                _ => BrokerError::Connect {
                    url: redact_url(url),
                    source,
                },
            },
            _ => BrokerError::Connect {
                url: redact_url(url),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_refused_without_echoing_them() {
        for url in [
            "not a url",
            "http://localhost:5672",
            "amqp://guest:Zq7u/Kx9?Mw#Tp@Rv:%2Fw@127.0.0.1:5672/%2f",
            "amqp:opaque-Kx9Mw",
            "amqp://u:pw@h:notaport/%2f",
        ] {
            let e = parse_url(url).unwrap_err().to_string();
            assert!(e.starts_with("RABBITMQ_URL is not a valid AMQP URL"), "{e}");
            for secret in ["Kx9", "Mw#", "Rv:", "opaque"] {
                assert!(!e.contains(secret), "{secret} in {e}");
            }
        }
        let uri = parse_url("amqps://u:p%2Fw@rabbit/%2f?frame_max=16384").unwrap();
        assert_eq!(uri.authority.userinfo.password, "p/w");
        assert_eq!(uri.query.frame_max, Some(16384));
    }

    #[test]
    fn a_broker_list_splits_as_celery_writes_it() {
        let a = "amqp://u:p@h1:5672/%2f";
        let b = "amqps://u:p@h2:5671/v";
        assert_eq!(broker_urls(a), vec![a]);
        assert_eq!(broker_urls(&format!("{a};{b}")), vec![a, b]);
        assert_eq!(broker_urls(&format!(" {a} ; {b} ;")), vec![a, b]);
        assert_eq!(broker_urls(&format!("{a},{b}")), vec![a, b]);
        assert_eq!(
            broker_urls(&format!("{a}, AMQP://h3")),
            vec![a, "AMQP://h3"]
        );
        // A comma that no scheme follows belongs to the URL (a raw password, a query).
        let comma = "amqp://u:p,w@h1/%2f?frame_max=16384";
        assert_eq!(broker_urls(&format!("{comma},{b}")), vec![comma, b]);
        assert!(broker_urls(" ; ,").len() <= 1);
        assert_eq!(parse_urls(&format!("{a};{b}")).unwrap().len(), 2);
        assert_eq!(
            parse_urls(&format!("{a};{b}")).unwrap()[1].authority.host,
            "h2"
        );
    }

    #[test]
    fn every_url_of_a_list_is_checked_without_echoing_it() {
        for list in [
            "amqp://u:p@h1/%2f;http://u:Kx9secret@h2/",
            "amqp://u:p@h1/%2f;amqp://u:Kx9secret@h2:notaport/%2f",
            "amqp://u:Kx9secret@h1:99999/%2f,amqp://h2",
            "",
            " ; ",
        ] {
            let e = parse_urls(list).unwrap_err().to_string();
            assert!(e.starts_with("RABBITMQ_URL is not a valid AMQP URL"), "{e}");
            assert!(!e.contains("Kx9"), "{e}");
        }
        let e = parse_urls("amqp://h1;amqp://h2:x").unwrap_err().to_string();
        assert!(e.contains("broker 2 of 2"), "{e}");
        let many = vec!["amqp://h"; MAX_BROKERS + 1].join(";");
        assert!(parse_urls(&many).is_err());
    }

    #[test]
    fn a_broker_list_is_redacted_entry_by_entry() {
        let shown =
            redact_url("amqp://u:Kx9one@h1:5672/%2f;amqps://v:Kx9two@h2/%2f, amqp://w:Kx9three@h3");
        assert!(!shown.contains("Kx9"), "{shown}");
        for host in ["@h1:5672", "@h2/", "@h3"] {
            assert!(shown.contains(host), "{host} in {shown}");
        }
    }

    /// The first broker of the list refuses connections (nothing listens on its port): the
    /// second, the local RabbitMQ, answers.
    #[tokio::test]
    async fn a_dead_broker_of_the_list_is_passed_over() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let list = format!(
            "amqp://guest:guest@127.0.0.1:{port}/%2f;amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        LAST_ANSWERED.store(0, Ordering::Relaxed);
        let conn = connect(&list).await.expect("the second broker answers");
        assert_eq!(LAST_ANSWERED.load(Ordering::Relaxed), 1);
        let _ = conn.close(200, "test".into()).await;
        let none = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        assert!(matches!(
            connect(&none).await,
            Err(BrokerError::Connect { .. })
        ));
    }

    /// Against the local RabbitMQ (guest with a wrong password): returned before the first
    /// connection, retried (slowly) after it.
    #[tokio::test]
    async fn a_refused_login_is_returned_or_retried_as_asked() {
        let url = "amqp://guest:not-the-password@127.0.0.1:5672/%2f";
        let shutdown = Shutdown::new();
        let failed = tokio::time::timeout(
            Duration::from_secs(5),
            connect_with_backoff(url, &shutdown, OnRefusal::Fail),
        )
        .await
        .expect("a refused login is returned at once");
        match failed {
            Err(BrokerError::Authentication { user, host, port }) => {
                assert_eq!(
                    (user.as_str(), host.as_str(), port),
                    ("guest", "127.0.0.1", 5672)
                );
            }
            other => panic!("expected Authentication, got {other:?}"),
        }
        let retried = tokio::time::timeout(
            Duration::from_millis(1500),
            connect_with_backoff(url, &shutdown, OnRefusal::Retry),
        )
        .await;
        assert!(retried.is_err(), "still waiting out the longest backoff");
        shutdown.begin();
        let stopped = connect_with_backoff(url, &shutdown, OnRefusal::Retry).await;
        assert!(matches!(stopped, Ok(None)), "{stopped:?}");
    }
}
