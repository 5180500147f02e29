//! The dashboard: server-rendered HTML (maud) from the `serve` process, with one small
//! script of its own for live regions. It reads the same store as the API and changes the
//! ledger only through the API's own handlers, so a button does exactly what the API does.

mod fleet;
mod pages;
mod session;

use crate::views::NodeNames;
use std::time::Duration;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use jobward_core::State as ExecState;
use jobward_core::duration::parse_positive_duration;
use jobward_store::TriggerParams;
use jobward_store::{CleanupParams, ExecutionFilter, HealthParams};
use maud::Markup;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::executor::log_path;
use crate::views;
pub use session::Viewer;

/// Rows per page of a job's history.
pub const PAGE: u32 = 50;
/// Executions in a job's duration chart.
pub const CHART: u32 = 50;
/// How much of a log the execution page shows.
pub const LOG_TAIL: u64 = 16 * 1024;
/// Executions the jobs page's success rate is taken over.
pub const RATE_OVER: u32 = 20;
/// How often live pages poll.
pub const POLL_MS: u32 = 1500;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// A dashboard error: an HTML page with the status and one line saying why.
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError {
            status: e.status,
            message: e.message,
        }
    }
}

impl From<jobward_store::StoreError> for PageError {
    fn from(e: jobward_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        html(self.status, pages::error(self.status, &self.message))
    }
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

type Page = Result<Response, PageError>;

fn ok(markup: Markup) -> Page {
    Ok(html(StatusCode::OK, markup))
}

/// Security headers on every dashboard response: no inline script or style, no framing,
/// no caching of pages that may show an operator's view.
async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Lets in visitors with a session (or everyone when tokens are off); others are sent to
/// the login form. Inserts the [`Viewer`].
async fn require_viewer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match session::viewer(&state, req.headers()) {
        Ok(v) => {
            req.extensions_mut().insert(v);
            next.run(req).await
        }
        Err(session::Denied::WorkerToken) => PageError::new(
            StatusCode::FORBIDDEN,
            "a worker token cannot open the dashboard; log in with a read or operate token",
        )
        .into_response(),
        Err(session::Denied::Login) => {
            if req.method() == axum::http::Method::GET {
                let next = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                Redirect::to(&format!("/login?next={}", urlencode(next))).into_response()
            } else {
                PageError::new(StatusCode::UNAUTHORIZED, "log in first").into_response()
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every form post: a CSRF token of this session, from this origin, and the operate role.
fn check_form(
    headers: &HeaderMap,
    viewer: &Viewer,
    csrf: Option<&str>,
) -> Result<Caller, PageError> {
    if !session::form_is_ours(headers, viewer, csrf) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form did not come from this dashboard (missing or wrong CSRF token, or another origin); nothing was changed",
        ));
    }
    if !viewer.can_operate {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            format!(
                "token '{}' has role read; this needs an operate token; nothing was changed",
                viewer.name
            ),
        ));
    }
    Ok(Caller {
        name: format!("dashboard:{}", viewer.name),
        actor: format!("dashboard:{}", viewer.name),
    })
}

/// The dashboard's routes: pages, forms, assets and the login form.
pub fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/{action}", post(job_action))
        .route("/executions/{id}", get(execution))
        .route("/executions", get(fleet::executions))
        .route("/executions/bulk", post(fleet::bulk))
        .route("/executions/{id}/cancel", post(cancel))
        .route("/executions/{id}/{action}", post(fleet::execution_action))
        .route("/nodes", get(fleet::nodes))
        .route("/workers", get(fleet::workers))
        .route("/queues", get(fleet::queues))
        .route("/stale", get(stale).post(apply_stale))
        .route("/logout", post(logout))
        .route_layer(from_fn_with_state(state, require_viewer));
    Router::new()
        .merge(pages)
        .route("/login", get(login_form).post(login))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .layer(from_fn(headers))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

async fn overview(State(state): State<AppState>, Extension(viewer): Extension<Viewer>) -> Page {
    let m = state
        .store
        .health(HealthParams {
            long_running_after: state.health.long_running_after,
            stale_after: None,
        })
        .await?;
    let health = views::health(m, &state.health);
    let running = state
        .store
        .list_executions(ExecutionFilter {
            states: vec![ExecState::Running],
            limit: 200,
            ..Default::default()
        })
        .await?;
    let failures = state
        .store
        .list_executions(ExecutionFilter {
            states: vec![ExecState::Failed, ExecState::TimedOut],
            limit: 15,
            ..Default::default()
        })
        .await?;
    let now = state.store.now().await?;
    let names = NodeNames::new(&state.store.list_nodes().await?);
    ok(pages::overview(
        &viewer, &names, now, &health, &running, &failures,
    ))
}

/// A job's recent executions, for its success rate and chart.
async fn recent(
    state: &AppState,
    job: &str,
    limit: u32,
) -> Result<Vec<jobward_store::ExecutionRow>, PageError> {
    Ok(state
        .store
        .list_executions(ExecutionFilter {
            job: Some(job.to_string()),
            limit,
            ..Default::default()
        })
        .await?)
}

async fn jobs(State(state): State<AppState>, Extension(viewer): Extension<Viewer>) -> Page {
    let rows = state.store.list_jobs().await?;
    // Each job's recent executions, read concurrently (the store's readers are a pool).
    let mut reads = tokio::task::JoinSet::new();
    for (i, j) in rows.iter().enumerate() {
        let (state, name) = (state.clone(), j.spec.name.clone());
        reads.spawn(async move { (i, recent(&state, &name, RATE_OVER).await) });
    }
    let mut rates: Vec<Option<pages::SuccessRate>> = (0..rows.len()).map(|_| None).collect();
    while let Some(done) = reads.join_next().await {
        let (i, recent) =
            done.map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        rates[i] = Some(pages::SuccessRate::of(&recent?));
    }
    let list: Vec<_> = rows
        .into_iter()
        .zip(rates)
        .map(|(j, r)| {
            (
                j,
                r.unwrap_or(pages::SuccessRate {
                    completed: 0,
                    counted: 0,
                }),
            )
        })
        .collect();
    let now = state.store.now().await?;
    ok(pages::jobs(&viewer, now, &list))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    before: Option<String>,
}

async fn job(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Page {
    let not_found = || {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("job '{name}' does not exist"),
        )
    };
    if jobward_core::validate_name("job name", &name).is_err() {
        return Err(not_found());
    }
    let before = match q.before.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(b) => match b.parse::<i64>() {
            Ok(id) if id > 0 => Some(id),
            _ => {
                return Err(PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("before must be a positive execution id, got '{b}'"),
                ));
            }
        },
    };
    let Some(j) = state.store.get_job(&name).await? else {
        return Err(not_found());
    };
    let history = state
        .store
        .list_executions(ExecutionFilter {
            job: Some(name.clone()),
            before_id: before,
            limit: PAGE,
            ..Default::default()
        })
        .await?;
    let chart = if before.is_none() {
        history.iter().take(CHART as usize).cloned().collect()
    } else {
        recent(&state, &name, CHART).await?
    };
    let next_before = (history.len() as u32 == PAGE)
        .then(|| history.last().map(|e| e.id))
        .flatten();
    let now = state.store.now().await?;
    let workers = crate::http::api::recent_workers(&state, &j, now).await?;
    let served = crate::views::served(&j, &workers, now).map(|(text, _)| text);
    let changes = state.store.job_changes(&name).await?;
    ok(pages::job(
        &viewer,
        now,
        &j,
        served.as_deref(),
        &changes,
        &pages::SuccessRate::of(&chart),
        &chart,
        &history,
        before.is_some(),
        next_before,
    ))
}

async fn execution(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Page {
    let not_found = || {
        PageError::new(
            StatusCode::NOT_FOUND,
            format!("execution {id} does not exist"),
        )
    };
    let Some(id_num) = id.parse::<i64>().ok().filter(|i| *i > 0) else {
        return Err(not_found());
    };
    let Some(e) = state.store.get_execution(id_num).await? else {
        return Err(not_found());
    };
    let events = state.store.events(id_num).await?;
    let path = log_path(&state.log_dir, &e.job, e.id);
    let log = tokio::task::spawn_blocking(move || {
        jobward_exec::log::read_tail(&path, LOG_TAIL).ok().flatten()
    })
    .await
    .unwrap_or(None);
    let now = state.store.now().await?;
    let names = NodeNames::new(&state.store.list_nodes().await?);
    ok(pages::execution(
        &viewer,
        &names,
        now,
        &e,
        &events,
        log.as_deref(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct StaleQuery {
    stale_after: Option<String>,
    applied: Option<String>,
}

fn stale_after(v: Option<&str>) -> Result<(String, Duration), PageError> {
    let text = v.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("1h");
    let d = parse_positive_duration(text)
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, format!("stale after: {e}")))?;
    Ok((text.to_string(), d))
}

async fn stale(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<StaleQuery>,
) -> Page {
    let (text, d) = stale_after(q.stale_after.as_deref())?;
    let report = state
        .store
        .cleanup(CleanupParams {
            stale_after: d,
            apply: false,
            actor: format!("dashboard:{}", viewer.name),
            process_notes: None,
        })
        .await?;
    let now = state.store.now().await?;
    let names = NodeNames::new(&state.store.list_nodes().await?);
    ok(pages::stale(
        &viewer,
        &names,
        now,
        &text,
        &report.candidates,
        q.applied.as_deref(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct StaleForm {
    csrf: Option<String>,
    stale_after: Option<String>,
    confirm: Option<String>,
}

async fn apply_stale(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<StaleForm>,
) -> Page {
    let caller = check_form(&headers, &viewer, f.csrf.as_deref())?;
    let (text, _) = stale_after(f.stale_after.as_deref())?;
    if f.confirm.as_deref() != Some("yes") {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "tick the confirmation box to apply the cleanup; nothing was changed",
        ));
    }
    let (text, stale) = stale_after(Some(&text))?;
    let r = state
        .service
        .cleanup(stale, true, caller.actor.clone())
        .await?;
    Ok(Redirect::to(&format!(
        "/stale?stale_after={}&applied={}",
        urlencode(&text),
        r.changed.len()
    ))
    .into_response())
}

/// The fields of a button form.
#[derive(Debug, Deserialize)]
pub struct ButtonForm {
    csrf: Option<String>,
}

/// The job buttons: trigger (then show the new execution), pause and resume.
async fn job_action(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ButtonForm>,
) -> Page {
    let caller = check_form(&headers, &viewer, f.csrf.as_deref())?;
    let back = format!("/jobs/{}", urlencode(&name));
    match action.as_str() {
        "trigger" => {
            let created = state
                .service
                .trigger(TriggerParams {
                    job: name,
                    actor: caller.actor.clone(),
                    ..Default::default()
                })
                .await?;
            let id = created.execution.id;
            return Ok(Redirect::to(&format!("/executions/{id}")).into_response());
        }
        "pause" | "resume" => {
            state
                .service
                .set_paused(&name, action == "pause", &caller.actor)
                .await?;
        }
        other => {
            return Err(PageError::new(
                StatusCode::NOT_FOUND,
                format!("no such button '{other}'"),
            ));
        }
    }
    Ok(Redirect::to(&back).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ButtonForm>,
) -> Page {
    let caller = check_form(&headers, &viewer, f.csrf.as_deref())?;
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("execution {id} does not exist"),
        ));
    };
    state.service.cancel(id, caller.actor.clone()).await?;
    Ok(Redirect::to(&format!("/executions/{id}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

async fn login_form(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let next = session::safe_next(q.next.as_deref());
    html(
        StatusCode::OK,
        pages::login(state.tokens.enabled(), &next, None),
    )
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = session::safe_next(f.next.as_deref());
    if !session::same_origin(&headers) {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "a login must come from this dashboard",
        )
        .into_response();
    }
    if !state.tokens.enabled() {
        return Redirect::to(&next).into_response();
    }
    let refused = |why: &str| {
        html(
            StatusCode::UNAUTHORIZED,
            pages::login(true, &next, Some(why)),
        )
    };
    match state.tokens.find(f.token.trim()) {
        None => refused("that token is not valid"),
        Some(t) if t.role == super::auth::Role::Worker => {
            refused("a worker token cannot open the dashboard; use a read or operate token")
        }
        Some(t) => {
            tracing::info!(token = %t.name, role = %t.role, "dashboard login");
            let mut r = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&session::login_cookie(f.token.trim())) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
    }
}

async fn logout(
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<ButtonForm>,
) -> Page {
    if !session::form_is_ours(&headers, &viewer, f.csrf.as_deref()) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form did not come from this dashboard",
        ));
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::logout_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}
