//! The worker's HTTP side: `/healthz`, `/readyz`, `/metrics`, `/results/{id}`, `/schedules`.
//!
//! Liveness says only that the process answers; readiness checks each dependency live and names
//! it, so a probe or an operator sees which one is down. Nothing here prints a URL or a secret:
//! checks report the service's name and the error's text, never the connection string.

mod readiness;

pub(crate) use readiness::{BrokerProbe, Dependencies, refresh_loop};

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::info;

use crate::adapters::results::{ResultStore, ResultWriter};
use crate::metrics::METRICS;
use crate::shutdown::{Phase, Shutdown};

/// Produces the `/schedules` document (the scheduler's status, as `worker schedules --json`).
pub(crate) type SchedulesSource = Arc<dyn Fn() -> BoxFuture<'static, Value> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct HttpState {
    pub results: ResultStore,
    pub writer: Option<Arc<ResultWriter>>,
    pub dependencies: Arc<Dependencies>,
    pub schedules: Option<SchedulesSource>,
}

pub(crate) fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/results/{id}", get(result))
        .route("/schedules", get(schedules))
        .with_state(state)
}

/// Bind `addr`; returns the listener and the address it got (useful with port 0).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "http listening");
    Ok((listener, bound))
}

/// Serve on `listener` until the background loops stop.
pub(crate) async fn serve(listener: TcpListener, state: HttpState, shutdown: Shutdown) {
    let _ = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.reached(Phase::StopBackground).await })
        .await;
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let report = state.dependencies.check().await;
    let ok = report.values().all(|c| c["ok"] == true);
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "checks": report});
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    if let Some(w) = &state.writer {
        METRICS
            .result_buffer_length
            .set(i64::try_from(w.buffered()).unwrap_or(i64::MAX));
        METRICS
            .results_dropped
            .set(i64::try_from(w.dropped()).unwrap_or(i64::MAX));
    }
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
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response(),
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
