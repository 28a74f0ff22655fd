//! Who may ask: with `WORKER_HTTP_TOKEN` set, every request needs the token except the
//! probes' — `/healthz`, `/readyz`, and `/metrics` unless `WORKER_HTTP_METRICS_AUTH` — since
//! orchestrators and scrapers call those without credentials and they reveal no task data.
//!
//! The rule is by exact path, checked before routing, so anything else (a route added later, a
//! path that matches none) is closed by default. The token is accepted as `Authorization:
//! Bearer <token>` or as the password of HTTP basic auth (any user name; what a browser or
//! `curl -u :token` sends), and compared in constant time (the length aside). A refusal is 401
//! with both challenges in `WWW-Authenticate`; nothing about the token is ever logged.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::settings::HttpSettings;

/// The access rule of one server.
pub(crate) struct Access {
    token: Option<Vec<u8>>,
    metrics_open: bool,
}

impl Access {
    pub(crate) fn new(http: &HttpSettings) -> Self {
        Self {
            token: http.token().map(|t| t.as_bytes().to_vec()),
            metrics_open: !http.http_metrics_auth,
        }
    }

    fn is_open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && self.metrics_open)
    }

    /// Whether a request for `path` with `headers` may go on.
    fn allows(&self, path: &str, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        self.is_open(path)
            || presented(headers).is_some_and(|given| bool::from(given.ct_eq(token.as_slice())))
    }
}

/// The middleware: lets the request through or answers 401.
pub(crate) async fn require_token(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    if access.allows(request.uri().path(), request.headers()) {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": "this path needs WORKER_HTTP_TOKEN: send `Authorization: Bearer <token>`, or HTTP basic auth with the token as password"
        })),
    )
        .into_response();
    let challenges = response.headers_mut();
    for challenge in [r#"Bearer realm="worker""#, r#"Basic realm="worker""#] {
        challenges.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// The token a request presents: a bearer token, or a basic auth password.
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(credentials.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(credentials).ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        Some(decoded.get(colon.saturating_add(1)..)?.to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>, metrics_auth: bool) -> Access {
        Access::new(&HttpSettings {
            http_token: token.map(str::to_owned),
            http_metrics_auth: metrics_auth,
            http_timeout: 10,
            http_max_connections: 256,
        })
    }

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn without_a_token_everything_is_open() {
        for a in [access(None, false), access(Some("  "), true)] {
            assert!(a.allows("/results/x", &HeaderMap::new()));
        }
    }

    #[test]
    fn with_a_token_only_the_probes_are_open() {
        let a = access(Some("s3cret-token"), false);
        let none = HeaderMap::new();
        for open in ["/healthz", "/readyz", "/metrics"] {
            assert!(a.allows(open, &none), "{open}");
        }
        for closed in [
            "/results/x",
            "/schedules",
            "/healthz/",
            "/nothing",
            "//healthz",
        ] {
            assert!(!a.allows(closed, &none), "{closed}");
        }
        assert!(a.allows("/schedules", &auth("Bearer s3cret-token")));
        assert!(a.allows("/schedules", &auth("bearer   s3cret-token ")));
        let basic = format!("Basic {}", STANDARD.encode("anyone:s3cret-token"));
        assert!(a.allows("/schedules", &auth(&basic)));
        let empty_user = format!("Basic {}", STANDARD.encode(":s3cret-token"));
        assert!(a.allows("/schedules", &auth(&empty_user)));
        for wrong in [
            "Bearer s3cret-tokeN".to_owned(),
            "Bearer s3cret-token-and-more".to_owned(),
            "Bearer ".to_owned(),
            "s3cret-token".to_owned(),
            "Token s3cret-token".to_owned(),
            format!("Basic {}", STANDARD.encode("s3cret-token")),
            format!("Basic {}", STANDARD.encode("s3cret-token:x")),
            "Basic !!!not-base64".to_owned(),
        ] {
            assert!(!a.allows("/schedules", &auth(&wrong)), "{wrong}");
        }
        let a = access(Some("s3cret-token"), true);
        assert!(!a.allows("/metrics", &none));
        assert!(a.allows("/metrics", &auth("Bearer s3cret-token")));
    }
}
