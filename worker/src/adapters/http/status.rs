//! The operators' status page, `/status`, and the same data as JSON under `/api/...`: workers
//! online, queue depths and consumers, the schedules with their next and last runs, recent
//! failures and retries, and dead letters — with "run now", "pause" and "resume" for a
//! schedule and "replay" and "delete" for a dead letter.
//!
//! Everything is behind `WORKER_HTTP_TOKEN` (the auth layer guards every path but the probes).
//! Actions are POST only, so a link or an image on another site cannot trigger one. Since a
//! browser re-sends basic-auth credentials on its own, a POST must also come from this page:
//! one that a browser marks as cross-site (`Sec-Fetch-Site`), or whose `Origin` is not this
//! host, is refused with 403. No cookie is set, so there is no session to ride on.
//!
//! What is shown comes from messages and Redis — task names, exception text, headers, node
//! names: attacker input. All of it goes through [`html::esc`] on the page; the JSON is built
//! by serde. Each read is bounded (at most [`MAX_LETTERS`] dead letters per queue, at most
//! [`MAX_FAILURES`] failures), and a source that fails shows a fixed phrase while the details go
//! to the log only (a broker error may name hosts).

mod html;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;

use super::HttpState;
use crate::adapters::broker::dead_letter::{self, DeadLetter, Pick};
use crate::adapters::broker::publisher::Publisher;
use crate::adapters::failures::{Entry, FailureLog};
use crate::adapters::overview::{self, QueueRow, WorkerRow};
use crate::app::scheduler::service::StatusReporter;
use crate::app::scheduler::{self, Pauses, RunNowError, parse_duration};

/// Dead letters shown per queue.
pub(crate) const MAX_LETTERS: usize = 50;
/// Failures shown.
pub(crate) const MAX_FAILURES: usize = 200;
/// How long the workers' replies are waited for (each reply restarts the wait).
const WORKERS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long the pauses are waited for.
const PAUSES_TIMEOUT: Duration = Duration::from_secs(2);
/// The default window of recent failures.
const DEFAULT_SINCE: &str = "24h";

/// What the status page reads from, built by the composition root.
pub(crate) struct StatusSources {
    pub rabbitmq_url: String,
    pub control_exchange: String,
    /// The task queues watched (the worker's; for the scheduler alone, its schedules').
    pub queues: Vec<String>,
    /// The undelivered-results queue ("" when this process has none).
    pub undelivered_queue: String,
    pub failures: FailureLog,
    /// Replays dead letters and publishes "run now" (the scheduler's own publisher).
    pub publisher: Arc<Publisher>,
    pub scheduler: Option<StatusReporter>,
    /// Paused schedules (PostgreSQL); `None` without a scheduler.
    pub pauses: Option<Arc<Pauses>>,
}

/// One section's data, or why it is missing.
type Section<T> = Result<T, &'static str>;

/// The dead letters of one queue.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetters {
    pub queue: String,
    /// `false`: `<queue>.dead` does not exist (nothing was ever dead-lettered there).
    pub exists: bool,
    pub letters: Vec<DeadLetter>,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub(crate) struct Overview {
    pub at: DateTime<Utc>,
    pub workers: Section<Vec<WorkerRow>>,
    pub queues: Section<Vec<QueueRow>>,
    pub schedules: Section<Value>,
    pub failures: Section<Vec<Entry>>,
    pub dead_letters: Section<Vec<DeadLetters>>,
}

impl StatusSources {
    async fn queues(&self) -> Section<Vec<QueueRow>> {
        let watched = overview::watched(&self.queue_names(), &self.undelivered_queue);
        match overview::depths(&self.rabbitmq_url, &watched).await {
            // The 28 delay levels are listed only where they exist.
            Ok(rows) => Ok(rows
                .into_iter()
                .filter(|r| r.depth.is_some() || r.role != overview::Role::Delayed)
                .collect()),
            Err(e) => {
                warn!(error = %e, "status page: cannot read the queues");
                Err("RabbitMQ unreachable")
            }
        }
    }

    async fn workers(&self) -> Section<Vec<WorkerRow>> {
        overview::workers(&self.rabbitmq_url, &self.control_exchange, WORKERS_TIMEOUT)
            .await
            .map_err(|e| {
                warn!(error = %e, "status page: cannot ask the workers");
                "RabbitMQ unreachable"
            })
    }

    async fn schedules(&self) -> Section<Value> {
        let Some(reporter) = &self.scheduler else {
            return Err("the scheduler does not run in this process");
        };
        let mut doc = reporter.report().await;
        // Each schedule says whether it is paused (`null`: PostgreSQL did not answer).
        let paused = match &self.pauses {
            Some(p) => match tokio::time::timeout(PAUSES_TIMEOUT, p.list()).await {
                Ok(Ok(list)) => Some(list),
                Ok(Err(e)) => {
                    warn!(error = %crate::settings::redact_text(&e.to_string()), "status page: cannot read the pauses");
                    None
                }
                Err(_) => None,
            },
            None => Some(Vec::new()),
        };
        if let Some(list) = doc.as_array_mut() {
            for s in list.iter_mut() {
                let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
                let (is, at) = match &paused {
                    Some(all) => match all.iter().find(|p| p.schedule == name) {
                        Some(p) => (json!(true), json!(p.paused_at)),
                        None => (json!(false), Value::Null),
                    },
                    None => (Value::Null, Value::Null),
                };
                if let Some(obj) = s.as_object_mut() {
                    obj.insert("paused".into(), is);
                    obj.insert("paused_at".into(), at);
                }
            }
        }
        Ok(doc)
    }

    async fn failures(&self, since: DateTime<Utc>, limit: usize) -> Section<Vec<Entry>> {
        self.failures
            .since(since, limit.min(MAX_FAILURES))
            .await
            .map_err(|e| {
                warn!(error = %e, "status page: cannot read the failures");
                "Redis unreachable"
            })
    }

    async fn dead_letters(&self) -> Section<Vec<DeadLetters>> {
        let mut out = Vec::new();
        for queue in &self.queue_names() {
            match dead_letter::list(&self.rabbitmq_url, queue, MAX_LETTERS).await {
                Ok(found) => out.push(DeadLetters {
                    queue: queue.clone(),
                    exists: found.is_some(),
                    letters: found.unwrap_or_default(),
                }),
                Err(e) => {
                    warn!(error = %e, "status page: cannot read the dead letters");
                    return Err("RabbitMQ unreachable");
                }
            }
        }
        Ok(out)
    }

    /// The task queues: the configured ones, and for the scheduler the queues it publishes to.
    fn queue_names(&self) -> Vec<String> {
        let mut names = self.queues.clone();
        if let Some(reporter) = &self.scheduler
            && let Ok(schedules) = reporter.load()
        {
            for s in schedules {
                if !names.contains(&s.queue) {
                    names.push(s.queue);
                }
            }
        }
        names
    }

    async fn overview(&self) -> Overview {
        let since = Utc::now() - chrono::Duration::hours(24);
        // The queues before the dead letters: listing holds the letters unacked for a moment,
        // and a passive declare counts only ready messages.
        let queues_then_letters = async { (self.queues().await, self.dead_letters().await) };
        let (workers, (queues, dead_letters), schedules, failures) = tokio::join!(
            self.workers(),
            queues_then_letters,
            self.schedules(),
            self.failures(since, MAX_FAILURES),
        );
        Overview {
            at: Utc::now(),
            workers,
            queues,
            schedules,
            failures,
            dead_letters,
        }
    }
}

fn section<T: Serialize>(s: &Section<T>) -> Value {
    match s {
        Ok(v) => serde_json::to_value(v).unwrap_or(Value::Null),
        Err(e) => json!({ "error": e }),
    }
}

fn json_section<T: Serialize>(s: Section<T>) -> Response {
    match s {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response(),
    }
}

// ---- pages and API reads ----

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    /// A fixed note code after an action (see [`html::note_text`]).
    note: Option<String>,
    /// How many messages the action concerned.
    n: Option<u32>,
}

pub(crate) async fn page(State(state): State<HttpState>, Query(q): Query<PageQuery>) -> Response {
    let overview = state.status.overview().await;
    let note = q
        .note
        .as_deref()
        .and_then(|code| html::note_text(code, q.n));
    let body = html::render(&overview, note.as_deref());
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            // `no-referrer` would make the browser send `Origin: null` with the page's own forms.
            (header::REFERRER_POLICY, "same-origin"),
        ],
        Html(body),
    )
        .into_response()
}

pub(crate) async fn api_status(State(state): State<HttpState>) -> Response {
    let o = state.status.overview().await;
    Json(json!({
        "at": o.at,
        "workers": section(&o.workers),
        "queues": section(&o.queues),
        "schedules": section(&o.schedules),
        "failures": section(&o.failures),
        "dead_letters": section(&o.dead_letters),
    }))
    .into_response()
}

pub(crate) async fn api_queues(State(state): State<HttpState>) -> Response {
    json_section(state.status.queues().await)
}

pub(crate) async fn api_workers(State(state): State<HttpState>) -> Response {
    json_section(state.status.workers().await)
}

pub(crate) async fn api_schedules(State(state): State<HttpState>) -> Response {
    match state.status.schedules().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, Json(json!({ "error": e }))).into_response(),
    }
}

pub(crate) async fn api_dead_letters(State(state): State<HttpState>) -> Response {
    json_section(state.status.dead_letters().await)
}

#[derive(Debug, Deserialize)]
pub(crate) struct FailuresQuery {
    since: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn api_failures(
    State(state): State<HttpState>,
    Query(q): Query<FailuresQuery>,
) -> Response {
    let text = q.since.as_deref().unwrap_or(DEFAULT_SINCE);
    let Some(since) = parse_duration(text)
        .ok()
        .and_then(|back| Utc::now().checked_sub_signed(back))
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "since: a duration such as 30m, 1h, 7d"})),
        )
            .into_response();
    };
    json_section(
        state
            .status
            .failures(since, q.limit.unwrap_or(MAX_FAILURES))
            .await,
    )
}

// ---- actions ----

/// Whether a POST comes from this site: refused when the browser says it is cross-site, or
/// its `Origin` names another host. Clients that are not browsers send neither and pass (they
/// still need the token).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // The browser's own word, when it gives it, decides (a page's script cannot set it).
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

/// Layered on every action route (they are all POSTs): a cross-site request is refused before
/// its handler runs, whatever token it carries.
pub(crate) async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if !same_origin(request.headers()) {
        return forbidden();
    }
    next.run(request).await
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": "cross-site request refused: actions are taken from the status page itself"})),
    )
        .into_response()
}

/// What an action did, for the API's answer and the page's note.
struct Done {
    note: &'static str,
    count: u32,
    body: Value,
}

enum ActionError {
    NotFound(&'static str),
    Unavailable(&'static str),
}

async fn run_schedule(state: &HttpState, name: &str) -> Result<Done, ActionError> {
    let Some(reporter) = &state.status.scheduler else {
        return Err(ActionError::NotFound(
            "the scheduler does not run in this process",
        ));
    };
    let schedules = reporter
        .load()
        .map_err(|_| ActionError::Unavailable("the schedules file does not load"))?;
    match scheduler::run_now(&schedules, name, state.status.publisher.as_ref()).await {
        Ok(message) => Ok(Done {
            note: "published",
            count: 1,
            body: json!({"task_id": message.task_id, "task": message.task, "queue": message.queue}),
        }),
        Err(RunNowError::Unknown(_)) => Err(ActionError::NotFound("no such schedule")),
        Err(RunNowError::Publish(e)) => {
            warn!(error = %e, "status page: run now failed");
            Err(ActionError::Unavailable("publishing to RabbitMQ failed"))
        }
    }
}

async fn pause_schedule(state: &HttpState, name: &str, pause: bool) -> Result<Done, ActionError> {
    let (Some(reporter), Some(pauses)) = (&state.status.scheduler, &state.status.pauses) else {
        return Err(ActionError::NotFound(
            "the scheduler does not run in this process",
        ));
    };
    // Only a schedule the file has: a request's name is not stored.
    let schedules = reporter
        .load()
        .map_err(|_| ActionError::Unavailable("the schedules file does not load"))?;
    if !schedules.iter().any(|s| s.name == name) {
        return Err(ActionError::NotFound("no such schedule"));
    }
    let changed = if pause {
        pauses.pause(name).await
    } else {
        pauses.resume(name).await
    };
    match changed {
        Ok(changed) => Ok(Done {
            note: if pause { "paused" } else { "resumed" },
            count: u32::from(changed),
            body: json!({"schedule": name, "paused": pause, "changed": changed}),
        }),
        Err(e) => {
            warn!(error = %crate::settings::redact_text(&e.to_string()), "status page: pause/resume failed");
            Err(ActionError::Unavailable("PostgreSQL unreachable"))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LetterAction {
    Replay,
    Delete,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LetterForm {
    task_id: String,
}

async fn letter_action(
    state: &HttpState,
    queue: &str,
    task_id: &str,
    action: LetterAction,
) -> Result<Done, ActionError> {
    // Only the queues this page shows: an action names no other queue.
    if !state.status.queue_names().iter().any(|q| q == queue) {
        return Err(ActionError::NotFound("not a queue of this worker"));
    }
    let url = &state.status.rabbitmq_url;
    let pick = Pick {
        task_ids: vec![task_id.to_owned()],
    };
    let done = match action {
        LetterAction::Replay => {
            dead_letter::replay(url, &state.status.publisher, queue, &pick, 1).await
        }
        LetterAction::Delete => dead_letter::delete(url, queue, &pick, 1).await,
    };
    match done {
        Ok(Some(letters)) if !letters.is_empty() => Ok(Done {
            note: match action {
                LetterAction::Replay => "replayed",
                LetterAction::Delete => "deleted",
            },
            count: u32::try_from(letters.len()).unwrap_or(u32::MAX),
            body: json!({"queue": queue, "letters": letters}),
        }),
        Ok(_) => Err(ActionError::NotFound("no such dead letter")),
        Err(e) => {
            warn!(error = %e, "status page: dead-letter action failed");
            Err(ActionError::Unavailable("RabbitMQ unreachable"))
        }
    }
}

fn api_answer(result: Result<Done, ActionError>) -> Response {
    match result {
        Ok(done) => Json(done.body).into_response(),
        Err(ActionError::NotFound(e)) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": e }))).into_response()
        }
        Err(ActionError::Unavailable(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response()
        }
    }
}

/// A form's answer: back to the page (303, so a reload does not repeat the POST) with a note.
fn page_answer(result: Result<Done, ActionError>) -> Response {
    let target = match result {
        Ok(done) => format!("/status?note={}&n={}", done.note, done.count),
        Err(ActionError::NotFound(_)) => "/status?note=not-found".to_owned(),
        Err(ActionError::Unavailable(_)) => "/status?note=failed".to_owned(),
    };
    Redirect::to(&target).into_response()
}

pub(crate) async fn api_run(State(state): State<HttpState>, Path(name): Path<String>) -> Response {
    api_answer(run_schedule(&state, &name).await)
}

pub(crate) async fn page_run(State(state): State<HttpState>, Path(name): Path<String>) -> Response {
    page_answer(run_schedule(&state, &name).await)
}

pub(crate) async fn api_pause(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Response {
    api_answer(pause_schedule(&state, &name, true).await)
}

pub(crate) async fn api_resume(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Response {
    api_answer(pause_schedule(&state, &name, false).await)
}

pub(crate) async fn page_pause(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Response {
    page_answer(pause_schedule(&state, &name, true).await)
}

pub(crate) async fn page_resume(
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Response {
    page_answer(pause_schedule(&state, &name, false).await)
}

pub(crate) async fn api_replay(
    State(state): State<HttpState>,
    Path(queue): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    api_answer(letter_action(&state, &queue, &form.task_id, LetterAction::Replay).await)
}

pub(crate) async fn api_delete(
    State(state): State<HttpState>,
    Path(queue): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    api_answer(letter_action(&state, &queue, &form.task_id, LetterAction::Delete).await)
}

pub(crate) async fn page_replay(
    State(state): State<HttpState>,
    Path(queue): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    page_answer(letter_action(&state, &queue, &form.task_id, LetterAction::Replay).await)
}

pub(crate) async fn page_delete(
    State(state): State<HttpState>,
    Path(queue): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    page_answer(letter_action(&state, &queue, &form.task_id, LetterAction::Delete).await)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&headers(&[])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null"),
        ])));
    }
}
