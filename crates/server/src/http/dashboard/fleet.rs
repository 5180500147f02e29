//! The pages across jobs: every execution (filters, counts per state, bulk cancel and retry),
//! and the nodes, workers and queues that run them. Actions go through the service layer,
//! with the session's CSRF token and the operate role.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, RawForm, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use jobward_core::{State as ExecState, Timestamp};
use jobward_store::{ExecutionFilter, ExecutionRow, TriggerParams};
use maud::{Markup, html};

use super::pages::{ago, button, exec_badge, exec_link, job_link, layout, reason, when};
use super::session::Viewer;
use super::{Page, PageError, check_form, ok, urlencode};
use crate::http::AppState;
use crate::http::api::{ListQuery, filter_of, running_rows};
use crate::views::{self, NodeNames};

/// Rows per page of executions.
const PAGE: u32 = 50;
/// Counts per state stop past this (a page never counts a whole history).
const COUNT_CAP: u64 = 10_000;
/// Most executions one bulk action takes.
const BULK_MAX: usize = 200;

fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The filter of the executions page, from its query string (the API's parameters).
fn query_of(pairs: &[(String, String)]) -> ListQuery {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    ListQuery {
        job: get("job"),
        status: get("status"),
        since: get("since"),
        until: get("until"),
        stale_after: None,
        reason: get("reason"),
        trigger: get("trigger"),
        owner: get("owner"),
        lease_expired: get("lease_expired").map(|v| v == "true" || v == "on"),
        before: get("before").and_then(|v| v.parse().ok()),
        limit: Some(i64::from(PAGE)),
    }
}

pub async fn executions(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Page {
    let pairs = pairs(raw.as_deref());
    let q = query_of(&pairs);
    let filter = filter_of(&q).map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e.message))?;
    let rows = state.store.list_executions(filter.clone()).await?;
    let counts = state
        .store
        .count_executions(
            ExecutionFilter {
                states: vec![],
                ..filter.clone()
            },
            COUNT_CAP,
        )
        .await?;
    let now = state.store.now().await?;
    let names = NodeNames::new(&state.store.list_nodes().await?);
    let next_before = (rows.len() as u32 == PAGE)
        .then(|| rows.last().map(|e| e.id))
        .flatten();
    ok(executions_page(
        &viewer,
        &names,
        now,
        &pairs,
        &counts,
        &rows,
        next_before,
    ))
}

/// A query string of the current filter with `key` set to `value` (or removed when empty).
fn with(pairs: &[(String, String)], key: &str, value: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if k != key && k != "before" && !v.is_empty() {
            out.append_pair(k, v);
        }
    }
    if !value.is_empty() {
        out.append_pair(key, value);
    }
    out.finish()
}

fn executions_page(
    v: &Viewer,
    names: &NodeNames,
    now: Timestamp,
    pairs: &[(String, String)],
    counts: &[(ExecState, u64)],
    rows: &[ExecutionRow],
    next_before: Option<i64>,
) -> Markup {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let status = get("status");
    let body = html! {
        h1 { "Executions" }
        section.card #filters {
            form.filters method="get" action="/executions" {
                label { "Job " input name="job" value=(get("job")) size="14"; }
                label { "Status "
                    select name="status" {
                        option value="" selected[status.is_empty()] { "any" }
                        @for s in ExecState::ALL {
                            option value=(s.as_str()) selected[status == s.as_str()] { (s.as_str()) }
                        }
                    }
                }
                label { "Reason " input name="reason" value=(get("reason")) size="14" placeholder="e.g. heartbeat_timeout"; }
                label { "Trigger "
                    select name="trigger" {
                        @for t in ["", "schedule", "catch_up", "manual", "retry", "backfill", "external"] {
                            option value=(t) selected[get("trigger") == t] { @if t.is_empty() { "any" } @else { (t) } }
                        }
                    }
                }
                label { "Node or worker " input name="owner" value=(get("owner")) size="14"; }
                label { "Queued since " input name="since" value=(get("since")) size="20" placeholder="RFC 3339"; }
                label { "until " input name="until" value=(get("until")) size="20" placeholder="RFC 3339"; }
                label { input type="checkbox" name="lease_expired" value="true" checked[get("lease_expired") == "true"]; " lease expired" }
                button type="submit" { "Filter" }
                a href="/executions" { "Clear" }
            }
            p #counts {
                @for (s, n) in counts {
                    a.count href={ "/executions?" (with(pairs, "status", s.as_str())) } {
                        (super::pages::badge(s.as_str())) " "
                        @if *n > COUNT_CAP { (COUNT_CAP) "+" } @else { (n) }
                    }
                    " "
                }
            }
        }
        section.card #executions data-live {
            @if rows.is_empty() { p.muted { "No execution matches." } }
            @else {
                form #bulk method="post" action="/executions/bulk" data-confirm-count="id" {
                    @if v.can_operate {
                        input type="hidden" name="csrf" value=(v.csrf);
                        div.actions {
                            button type="submit" name="action" value="cancel" class="danger" { "Cancel selected" }
                            button type="submit" name="action" value="retry" { "Retry selected" }
                            span.muted { "Cancel stops queued and running ones; retry starts another attempt of failed, timed-out or cancelled ones." }
                        }
                    }
                    div.scroll { table.stack {
                        thead { tr {
                            @if v.can_operate { th { input type="checkbox" #select-all aria-label="select all"; } }
                            th { "Run" } th { "Job" } th { "Status" } th { "Trigger" } th { "Where" } th { "Queued" } th { "Finished" } th { "Reason" }
                        } }
                        tbody { @for e in rows {
                            tr data-execution=(e.id) {
                                @if v.can_operate { td { input type="checkbox" name="id" value=(e.id) aria-label={ "select execution " (e.id) }; } }
                                td data-label="Run" { (exec_link(e)) }
                                td data-label="Job" { (job_link(&e.job)) }
                                td data-label="Status" { (exec_badge(e, now)) }
                                td data-label="Trigger" { (e.trigger) }
                                td data-label="Where" { (names.where_of(e)) }
                                td data-label="Queued" { (when(Some(e.queued_at), now)) }
                                td data-label="Finished" { (when(e.finished_at, now)) }
                                td data-label="Reason" { (reason(e)) }
                            }
                        } }
                    } }
                }
            }
            div.pager {
                @if !get("before").is_empty() { a href={ "/executions?" (with(pairs, "before", "")) } { "← Newest" } }
                @if let Some(b) = next_before { a href={ "/executions?" (with(pairs, "before", &b.to_string())) } { "Older →" } }
            }
        }
    };
    // Not polled: a refresh would drop the selection.
    layout(Some(v), "Executions", "/executions", false, body)
}

/// Bulk cancel or retry of the selected executions; the browser confirms with the count and
/// the ids first (see app.js), and the answer page says what happened to each.
pub async fn bulk(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    RawForm(form): RawForm,
) -> Page {
    let fields: Vec<(String, String)> = form_urlencoded::parse(&form).into_owned().collect();
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let caller = check_form(&headers, &viewer, field("csrf"))?;
    let action = field("action").unwrap_or("");
    let ids: Vec<i64> = fields
        .iter()
        .filter(|(k, _)| k == "id")
        .filter_map(|(_, v)| v.parse().ok())
        .filter(|i| *i > 0)
        .collect();
    if ids.is_empty() {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "no execution was selected; nothing was changed",
        ));
    }
    if ids.len() > BULK_MAX {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {BULK_MAX} executions at once; nothing was changed"),
        ));
    }
    let mut results: Vec<(i64, String)> = Vec::new();
    for id in &ids {
        let said = match action {
            "cancel" => match state.service.cancel(*id, caller.actor.clone()).await {
                Ok(jobward_store::CancelOutcome::Cancelled { .. }) => "cancelled".to_string(),
                Ok(jobward_store::CancelOutcome::Requested { .. }) => {
                    "cancel requested: its owner stops it".to_string()
                }
                Ok(jobward_store::CancelOutcome::AlreadyTerminal { execution }) => {
                    format!("already {}", execution.state)
                }
                Err(e) => format!("not changed: {e}"),
            },
            "retry" => match state.service.retry_now(*id, caller.actor.clone()).await {
                Ok(r) => format!("retried: execution {} queued", r.id),
                Err(e) => format!("not changed: {e}"),
            },
            other => {
                return Err(PageError::new(
                    StatusCode::BAD_REQUEST,
                    format!("no such action '{other}'; nothing was changed"),
                ));
            }
        };
        results.push((*id, said));
    }
    let body = html! {
        h1 { (if action == "cancel" { "Cancelled" } else { "Retried" }) " " (ids.len()) @if ids.len() == 1 { " execution" } @else { " executions" } }
        section.card #bulk-result {
            ul { @for (id, said) in &results { li { a href={ "/executions/" (id) } { "execution " (id) } ": " (said) } } }
            p { a href="/executions" { "← Executions" } }
        }
    };
    ok(layout(
        Some(&viewer),
        "Bulk action",
        "/executions",
        false,
        body,
    ))
}

/// "Retry now" of one execution, and "run again with the same payload".
pub async fn execution_action(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    RawForm(form): RawForm,
) -> Page {
    let fields: Vec<(String, String)> = form_urlencoded::parse(&form).into_owned().collect();
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    let caller = check_form(&headers, &viewer, csrf)?;
    let Some(id) = id.parse::<i64>().ok().filter(|i| *i > 0) else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("execution {id} does not exist"),
        ));
    };
    let new = match action.as_str() {
        "retry" => state.service.retry_now(id, caller.actor.clone()).await?,
        "run-again" => {
            let e = state.store.get_execution(id).await?.ok_or_else(|| {
                PageError::new(
                    StatusCode::NOT_FOUND,
                    format!("execution {id} does not exist"),
                )
            })?;
            state
                .service
                .trigger(TriggerParams {
                    job: e.job.clone(),
                    actor: caller.actor.clone(),
                    payload: e.payload.clone(),
                    ..Default::default()
                })
                .await?
                .execution
        }
        other => {
            return Err(PageError::new(
                StatusCode::NOT_FOUND,
                format!("no such button '{other}'"),
            ));
        }
    };
    Ok(Redirect::to(&format!("/executions/{}", new.id)).into_response())
}

/// The buttons of an execution page besides cancel.
pub fn execution_buttons(v: &Viewer, e: &ExecutionRow) -> Markup {
    html! {
        @if v.can_operate {
            @if matches!(e.state, ExecState::Failed | ExecState::TimedOut | ExecState::Cancelled) {
                (button(v, &format!("/executions/{}/retry", e.id), "Retry now", "primary",
                    Some("Start another attempt of this execution now (linked to it, same payload)?")))
            }
            (button(v, &format!("/executions/{}/run-again", e.id), "Run again", "",
                Some("Trigger the job again with the same payload?")))
        }
    }
}

pub async fn nodes(State(state): State<AppState>, Extension(viewer): Extension<Viewer>) -> Page {
    let nodes = state.store.list_nodes().await?;
    let now = state.store.now().await?;
    let running = running_rows(&state).await?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &running {
        if let Some(n) = e.node_id.as_deref() {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let body = html! {
        h1 { "Nodes" }
        section.card #nodes data-live {
            @if nodes.is_empty() { p.muted { "No node has served this ledger yet." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Node" } th { "Host" } th { "PID" } th { "Started" } th { "Last heartbeat" } th { "State" } th { "Running" } } }
                    tbody { @for n in nodes.iter().take(200) {
                        @let short: String = n.id.chars().take(8).collect();
                        @let view = views::node(n, now);
                        tr data-node=(n.id) {
                            td data-label="Node" { span title={ "incarnation " (n.id) } { (n.name) " " span.muted { "(" (short) ")" } } }
                            td data-label="Host" { (n.hostname) }
                            td.num data-label="PID" { (n.pid) }
                            td data-label="Started" { (when(Some(n.started_at), now)) }
                            td data-label="Last heartbeat" { (ago(Some(n.heartbeat_at), now)) }
                            td data-label="State" {
                                @match view.state.as_str() {
                                    "live" => span.badge.st-running { "● live" },
                                    "lease_expired" => span.badge.st-timed_out { "⚠ silent: node lease expired" },
                                    _ => span.badge.st-cancelled { "■ stopped" " " span.muted { (n.stop_reason.clone().unwrap_or_default()) } },
                                }
                            }
                            td.num data-label="Running" {
                                @let c = per_node.get(n.id.as_str()).copied().unwrap_or(0);
                                @if c > 0 { a href={ "/executions?status=running&owner=" (urlencode(&n.id)) } { (c) } } @else { "0" }
                            }
                        }
                    } }
                } }
            }
        }
    };
    ok(layout(Some(&viewer), "Nodes", "/nodes", true, body))
}

pub async fn workers(State(state): State<AppState>, Extension(viewer): Extension<Viewer>) -> Page {
    let now = state.store.now().await?;
    let since = now - chrono::Duration::hours(24);
    let workers = state.store.workers(since).await?;
    let running = running_rows(&state).await?;
    let body = html! {
        h1 { "Workers" }
        p.muted { "Workers seen claiming in the last 24 hours, the most recent first." }
        section.card #workers data-live {
            @if workers.is_empty() { p.muted { "No worker has claimed in the last 24 hours." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Worker" } th { "Queues" } th { "Runs" } th { "Leases held" } th { "Lease expired" } th { "Last claim" } } }
                    tbody { @for w in &workers {
                        @let view = views::worker(w);
                        @let held = running.iter().filter(|e| e.lease_owner.as_deref() == Some(w.id.as_str())).count();
                        @let silent = running.iter().filter(|e| e.lease_owner.as_deref() == Some(w.id.as_str()) && e.silent_for(now).is_some()).count();
                        tr data-worker=(w.id) {
                            td data-label="Worker" { code { (w.id) } }
                            td data-label="Queues" { (view.queues.join(", ")) }
                            td data-label="Runs" {
                                @match &view.handlers {
                                    None => "every job of its queues",
                                    Some(h) => { (if view.commands { "commands, and handlers: " } else { "handlers: " }) (h.join(", ")) },
                                }
                            }
                            td.num data-label="Leases held" {
                                @if held > 0 { a href={ "/executions?status=running&owner=" (urlencode(&w.id)) } { (held) } } @else { "0" }
                            }
                            td.num data-label="Lease expired" { @if silent > 0 { span.tag.stale { (silent) } } @else { "0" } }
                            td data-label="Last claim" { (ago(Some(w.last_claim_at), now)) }
                        }
                    } }
                } }
            }
        }
    };
    ok(layout(Some(&viewer), "Workers", "/workers", true, body))
}

pub async fn queues(State(state): State<AppState>, Extension(viewer): Extension<Viewer>) -> Page {
    let now = state.store.now().await?;
    let queues = state.store.queues().await?;
    let slots = state.store.slots().await?;
    let running = running_rows(&state).await?;
    let body = html! {
        h1 { "Queues" }
        section.card #queues data-live {
            @if queues.is_empty() { p.muted { "Nothing is queued or running." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Queue" } th { "Due" } th { "Oldest due waiting" } th { "Scheduled for later" } th { "Running" } th { "Claims, last 5 min" } } }
                    tbody { @for q in &queues {
                        tr data-queue=(q.runner) {
                            td data-label="Queue" { code { (q.runner) } @if q.runner == "local" { " " span.muted { "(nodes)" } } @if q.runner == "external" { " " span.muted { "(runs outside jobward)" } } }
                            td.num data-label="Due" { a href={ "/executions?status=queued" } { (q.due) } }
                            td data-label="Oldest due waiting" { @if let Some(t) = q.oldest_due { (ago(Some(t), now)) } @else { "—" } }
                            td.num data-label="Scheduled for later" { (q.later) }
                            td.num data-label="Running" { (q.running) }
                            td.num data-label="Claims, last 5 min" { (q.claimed_5m) }
                        }
                    } }
                } }
            }
        }
        section.card #keys data-live {
            h2 { "Concurrency keys" }
            @if slots.is_empty() { p.muted { "No concurrency key is configured." } }
            @else {
                div.scroll { table.stack {
                    thead { tr { th { "Key" } th { "Slots in use" } th { "Held by" } } }
                    tbody { @for s in &slots {
                        tr data-key=(s.key) {
                            td data-label="Key" { code { (s.key) } }
                            td.num data-label="Slots in use" { (s.used) " / " (s.limit) }
                            td data-label="Held by" {
                                @for e in running.iter().filter(|e| e.concurrency_key.as_deref() == Some(s.key.as_str())) {
                                    (exec_link(e)) " "
                                }
                            }
                        }
                    } }
                } }
            }
        }
    };
    ok(layout(Some(&viewer), "Queues", "/queues", true, body))
}
