//! The worker's HTTP side: `/healthz`, `/readyz`, `/metrics`, `/results/{id}`, `/schedules`,
//! and the operators' status page `/status` with its JSON under `/api/...` ([`status`]).
//!
//! Liveness says only that the process answers; readiness checks each dependency live and names
//! it, so a probe or an operator sees which one is down. Nothing here prints a URL or a secret:
//! a failed check is a fixed phrase (`unreachable`, `timed out`, `authentication failed`, ...),
//! never a server's error text, which can name hosts, users and databases.
//!
//! What protects it, each in one place: [`auth`] (the optional `WORKER_HTTP_TOKEN`), a timeout
//! layer on the router (a request is answered within `WORKER_HTTP_TIMEOUT`, or gets 503), and
//! [`server`] (the connection cap and the header-read timeout).

mod auth;
mod readiness;
mod server;
mod status;

pub(crate) use readiness::{BrokerProbe, Dependencies, refresh_loop};
pub(crate) use status::StatusSources;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tracing::{info, warn};

use crate::adapters::results::ResultStore;
use crate::metrics::METRICS;
use crate::settings::HttpSettings;
use crate::shutdown::Shutdown;

/// Produces the `/schedules` document (the scheduler's status, as `worker schedules --json`).
pub(crate) type SchedulesSource = Arc<dyn Fn() -> BoxFuture<'static, Value> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct HttpState {
    pub results: ResultStore,
    pub dependencies: Arc<Dependencies>,
    pub schedules: Option<SchedulesSource>,
    /// What the status page and `/api/...` read (see [`status`]).
    pub status: Arc<StatusSources>,
}

/// The routes, behind the token check and the request timeout.
fn router(state: HttpState, http: &HttpSettings) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/results/{id}", get(result))
        .route("/schedules", get(schedules))
        .route("/status", get(status::page))
        .route("/api/status", get(status::api_status))
        .route("/api/workers", get(status::api_workers))
        .route("/api/queues", get(status::api_queues))
        .route("/api/failures", get(status::api_failures))
        .route("/api/schedules", get(status::api_schedules))
        .route("/api/dead-letters", get(status::api_dead_letters))
        // Every action is a POST that no other site may make the browser send.
        .merge(
            Router::new()
                .route("/status/schedules/{name}/run", post(status::page_run))
                .route("/status/schedules/{name}/pause", post(status::page_pause))
                .route("/status/schedules/{name}/resume", post(status::page_resume))
                .route(
                    "/status/dead-letters/{queue}/replay",
                    post(status::page_replay),
                )
                .route(
                    "/status/dead-letters/{queue}/delete",
                    post(status::page_delete),
                )
                .route("/api/schedules/{name}/run", post(status::api_run))
                .route("/api/schedules/{name}/pause", post(status::api_pause))
                .route("/api/schedules/{name}/resume", post(status::api_resume))
                .route("/api/dead-letters/{queue}/replay", post(status::api_replay))
                .route("/api/dead-letters/{queue}/delete", post(status::api_delete))
                .route_layer(middleware::from_fn(status::refuse_cross_site)),
        )
        .with_state(state);
    protected(routes, http)
}

/// `routes` behind the token check (every path, unmatched ones included) and the timeout.
fn protected(routes: Router, http: &HttpSettings) -> Router {
    let timeout = http.timeout();
    routes
        .layer(middleware::from_fn_with_state(
            Arc::new(auth::Access::new(http)),
            auth::require_token,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(
                    move |_: tower::BoxError| async move { timed_out(timeout) },
                ))
                .timeout(timeout),
        )
}

fn timed_out(timeout: std::time::Duration) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": format!("no answer within WORKER_HTTP_TIMEOUT ({} s)", timeout.as_secs())})),
    )
        .into_response()
}

/// The HTTP server, bound and not serving yet.
pub(crate) struct HttpServer {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    limits: server::Limits,
}

impl HttpServer {
    /// Bind `addr` (port 0: any free port, see [`HttpServer::addr`]).
    pub(crate) async fn bind(
        addr: SocketAddr,
        state: HttpState,
        http: &HttpSettings,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        info!(addr = %addr, token = http.token().is_some(), "http listening");
        if http.token().is_none() && !addr.ip().is_loopback() {
            warn!(
                addr = %addr,
                "the HTTP server is reachable beyond this host and WORKER_HTTP_TOKEN is not set: /results, /schedules, /status and /api (with its actions) are open to anyone who can connect"
            );
        }
        Ok(Self {
            listener,
            addr,
            router: router(state, http),
            limits: server::Limits {
                max_connections: http.http_max_connections,
                timeout: http.timeout(),
            },
        })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until the background loops stop.
    pub(crate) async fn serve(self, shutdown: Shutdown) {
        server::serve(self.listener, self.router, self.limits, shutdown).await;
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let report = state.dependencies.check().await;
    let ok = report.values().all(|c| c["ok"] == true);
    let degraded = report.values().any(|c| c["degraded"] == true);
    let status = match (ok, degraded) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    let body = json!({"status": status, "checks": report});
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(),
    )
        .into_response()
}

async fn result(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.results.get_raw(&id).await {
        Ok(Some(doc)) => Json(doc).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no result stored for task {id}: it is pending, unknown, or expired")}))).into_response(),
        Err(e) => {
            // The details are for the log, not for whoever asks.
            warn!(task_id = %id, error = %e, "cannot read a result for /results");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "cannot read results from Redis"}))).into_response()
        }
    }
}

async fn schedules(State(state): State<HttpState>) -> Response {
    match &state.schedules {
        Some(source) => Json(source().await).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "the scheduler is not running in this process"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn settings(token: Option<&str>, timeout: u64) -> HttpSettings {
        HttpSettings {
            http_token: token.map(str::to_owned),
            http_metrics_auth: false,
            http_timeout: timeout,
            http_max_connections: 256,
        }
    }

    async fn status(app: &Router, path: &str, auth: Option<&str>) -> StatusCode {
        let mut request = Request::get(path);
        if let Some(value) = auth {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        response.status()
    }

    #[tokio::test]
    async fn a_handler_slower_than_the_timeout_is_answered_503() {
        let routes = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        let app = protected(routes, &settings(None, 1));
        assert_eq!(
            status(&app, "/slow", None).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(&app, "/healthz", None).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_token_guards_unmatched_paths_too() {
        let routes = Router::new().route("/healthz", get(|| async { "ok" }));
        let app = protected(routes, &settings(Some("t0ken"), 10));
        assert_eq!(status(&app, "/healthz", None).await, StatusCode::OK);
        assert_eq!(
            status(&app, "/elsewhere", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&app, "/elsewhere", Some("Bearer t0ken")).await,
            StatusCode::NOT_FOUND
        );
    }
}
