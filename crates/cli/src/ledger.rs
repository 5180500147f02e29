//! The commands that read and change the ledger. Each speaks the API (see `api.rs`): to a
//! server with `--server`, else in process over the configured database.

use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use jobward_core::duration::{format_duration, parse_positive_duration};
use jobward_protocol::*;
use serde::Serialize;

use crate::api::{Api, enc};
use crate::commands::R;
use crate::output::{Names, ago, dur, outln, print_json, runs_table, table, time};
use crate::{
    ApplyArgs, CleanupArgs, Cli, Failure, HealthArgs, RunsListArgs, ServerArgs, TriggerArgs,
};

/// The exit code of a trigger that was skipped: nothing will run.
pub const EXIT_SKIPPED: u8 = 3;

async fn now(api: &Api) -> R<jobward_core::Timestamp> {
    let h: HealthView = api.get("/api/system/health").await?;
    Ok(h.metrics.timestamp)
}

async fn names(api: &Api) -> R<Names> {
    let nodes: NodeList = api.get("/api/nodes").await?;
    Ok(Names::of(
        nodes.nodes.iter().map(|n| (n.id.as_str(), n.name.as_str())),
    ))
}

pub async fn jobs_list(cli: &Cli, json: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let jobs: JobList = api.get("/api/jobs").await?;
    if json {
        print_json(&jobs.jobs);
        return Ok(());
    }
    let now = now(&api).await?;
    let mut t = table(&[
        "JOB",
        "SCHEDULE",
        "NEXT FIRE",
        "STATUS",
        "LAST RUN",
        "LAST FINISHED",
        "OVERLAP",
        "KEY",
        "DEFINED IN",
    ]);
    for j in &jobs.jobs {
        let mut status = j.status_text.clone();
        if j.paused {
            status.push_str(" (paused)");
        }
        if !j.defined {
            status.push_str(if j.source == "api" {
                " (deleted)"
            } else {
                " (not in config)"
            });
        }
        let last = j.last_finished.as_ref();
        t.add_row(vec![
            j.name.clone(),
            j.schedule.clone(),
            j.next_fire_at
                .map(|n| format!("{} ({})", time(Some(n)), ago(now, Some(n))))
                .unwrap_or_else(|| "-".into()),
            status,
            last.map(|e| format!("#{} {}", e.number, e.status))
                .unwrap_or_else(|| "-".into()),
            last.map(|e| ago(now, e.finished_at))
                .unwrap_or_else(|| "-".into()),
            j.overlap.clone(),
            j.concurrency_key.clone().unwrap_or_else(|| "-".into()),
            if j.source == "api" { "api" } else { "file" }.to_string(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

pub async fn jobs_show(cli: &Cli, name: &str, json: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let d: JobDetail = api.get(&format!("/api/jobs/{}", enc(name))).await?;
    if json {
        print_json(&d);
        return Ok(());
    }
    let now = now(&api).await?;
    let j = &d.job;
    outln!(
        "job '{}': {}{}",
        j.name,
        j.status_text,
        if j.paused { " (paused)" } else { "" }
    );
    let field = |k: &str, v: String| outln!("  {k:<13} {v}");
    field(
        "defined in",
        if j.source == "api" {
            "the API".into()
        } else {
            "the configuration file".into()
        },
    );
    field(
        "command",
        if j.command.is_empty() {
            format!("none: a worker's handler for '{}' runs it", j.name)
        } else {
            j.command.clone()
        },
    );
    field("schedule", j.schedule.clone());
    field(
        "next fire",
        j.next_fire_at
            .map(|n| format!("{} ({})", time(Some(n)), ago(now, Some(n))))
            .unwrap_or_else(|| "-".into()),
    );
    field("runs on", j.runner.clone());
    if let Some(s) = &d.served {
        field("workers", s.clone());
    }
    field("priority", j.priority.to_string());
    field("overlap", j.overlap.clone());
    field(
        "timeouts",
        format!(
            "heartbeat {}, run {}, queue {}",
            format_duration(Duration::from_millis(j.heartbeat_timeout_ms)),
            format_duration(Duration::from_millis(j.run_timeout_ms)),
            format_duration(Duration::from_millis(j.queue_timeout_ms))
        ),
    );
    field(
        "retries",
        format!(
            "up to {} attempt{}",
            j.max_attempts,
            if j.max_attempts == 1 { "" } else { "s" }
        ),
    );
    if let Some(k) = &j.concurrency_key {
        field("concurrency", k.clone());
    }
    if d.recent.is_empty() {
        outln!("runs: none");
    } else {
        outln!("recent runs:");
        outln!("{}", runs_table(&d.recent, now));
    }
    if !d.changes.is_empty() {
        outln!("changes:");
        for c in &d.changes {
            outln!("  {}  {} by {}", time(Some(c.at)), c.action, c.actor);
        }
    }
    Ok(())
}

/// A `--payload`: JSON.
fn payload(p: &Option<String>) -> R<Option<serde_json::Value>> {
    p.as_deref()
        .map(|p| {
            serde_json::from_str(p)
                .map_err(|e| Failure::Input(format!("--payload is not JSON: {e}")))
        })
        .transpose()
}

pub async fn jobs_trigger(cli: &Cli, a: &TriggerArgs) -> R {
    if let Some(p) = a.priority
        && !(-1000..=1000).contains(&p)
    {
        return Err(Failure::Input(format!(
            "--priority must be between -1000 and 1000, got {p}"
        )));
    }
    let api = Api::open(cli, &a.server).await?;
    let req = TriggerRequest {
        payload: payload(&a.payload)?,
        idempotency_key: a.idempotency_key.clone(),
        priority: a.priority,
        run_at: a.at.clone(),
        delay: a.delay.clone(),
    };
    let name = &a.name;
    let resp: TriggerResponse = api
        .send(
            Method::POST,
            &format!("/api/jobs/{}/trigger", enc(name)),
            &req,
        )
        .await?;
    let e = &resp.execution;
    if resp.skipped {
        if a.json {
            print_json(e);
        } else {
            outln!(
                "skipped: job '{name}' run #{} (execution {}): {}",
                e.number,
                e.id,
                e.message.as_deref().unwrap_or("")
            );
        }
        return Err(Failure::Code(EXIT_SKIPPED));
    }
    if !a.wait {
        if a.json {
            print_json(e);
            return Ok(());
        }
        let what = if resp.created {
            "queued"
        } else {
            "already queued (same idempotency key)"
        };
        match e.run_at {
            Some(at) if e.status == Status::Queued => outln!(
                "{what}: job '{name}' run #{} (execution {}), scheduled for {}",
                e.number,
                e.id,
                time(Some(at))
            ),
            _ => outln!(
                "{what}: job '{name}' run #{} (execution {})",
                e.number,
                e.id
            ),
        }
        if api.local_settings().is_some() {
            let h: HealthView = api.get("/api/system/health").await?;
            if h.metrics.live_nodes == 0 {
                outln!(
                    "note: no jobward node is serving {} right now; it starts when one does",
                    api.base()
                );
            }
        }
        return Ok(());
    }
    let end = follow_retries(&api, e.clone(), !a.json).await?;
    if a.json {
        print_json(&end);
    }
    if end.status == Status::Completed {
        Ok(())
    } else {
        Err(Failure::Quiet)
    }
}

/// Waits for the run's final outcome: each attempt as it ends (printed when `say`), then
/// the retry its failure queued, until one completes or none follows.
async fn follow_retries(api: &Api, first: ExecutionView, say: bool) -> R<ExecutionView> {
    let mut id = first.id;
    loop {
        let end = wait_terminal(api, id, None).await?;
        if say {
            outln!(
                "job '{}' run #{} attempt {} of {} (execution {}) {}{}",
                end.job,
                end.number,
                end.attempt,
                end.max_attempts,
                end.id,
                end.status,
                end.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
        }
        if end.status == Status::Completed {
            return Ok(end);
        }
        let page: ExecutionPage = api
            .get(&format!("/api/executions?job={}&limit=50", enc(&end.job)))
            .await?;
        match page.executions.iter().find(|e| e.retry_of == Some(id)) {
            Some(retry) => {
                if say {
                    outln!(
                        "  retry: attempt {} (execution {}) {}",
                        retry.attempt,
                        retry.id,
                        retry
                            .run_at
                            .map(|t| format!("not before {}", time(Some(t))))
                            .unwrap_or_else(|| "queued".into())
                    );
                }
                id = retry.id;
            }
            None => return Ok(end),
        }
    }
}

/// Polls until the execution is terminal (or `limit` passes).
async fn wait_terminal(api: &Api, id: i64, limit: Option<Duration>) -> R<ExecutionView> {
    let until = limit.map(|l| tokio::time::Instant::now() + l);
    loop {
        let e: ExecutionView = api.get(&format!("/api/executions/{id}")).await?;
        if is_terminal(e.status) || until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_terminal(s: Status) -> bool {
    !matches!(s, Status::Queued | Status::Running)
}

pub async fn jobs_pause(cli: &Cli, name: &str, paused: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let action = if paused { "pause" } else { "resume" };
    let r: PauseResponse = api
        .call::<(), _>(
            Method::POST,
            &format!("/api/jobs/{}/{action}", enc(name)),
            None,
        )
        .await?;
    outln!(
        "job '{}' {}",
        r.name,
        if r.paused {
            "paused: its fires are recorded as skipped and its queued runs wait"
        } else {
            "resumed"
        }
    );
    Ok(())
}

/// The jobs of a file for `jobs create/apply`: `[[job]]` tables, or one job at the top.
fn job_file(path: &Path) -> R<Vec<JobDefinition>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Many {
        job: Vec<JobDefinition>,
    }
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Input(format!("cannot read {file}: {e}")))?;
    let value: toml::Table = toml::from_str(&text)
        .map_err(|e| Failure::Input(format!("{file}: {}", e.message().replace('\n', " "))))?;
    let jobs =
        if value.contains_key("job") {
            toml::from_str::<Many>(&text)
                .map_err(|e| Failure::Input(format!("{file}: {}", e.message().replace('\n', " "))))?
                .job
        } else {
            vec![toml::from_str::<JobDefinition>(&text).map_err(|e| {
                Failure::Input(format!("{file}: {}", e.message().replace('\n', " ")))
            })?]
        };
    if jobs.is_empty() {
        return Err(Failure::Input(format!("{file}: no job in it")));
    }
    for (i, j) in jobs.iter().enumerate() {
        if j.name.is_none() {
            return Err(Failure::Input(format!(
                "{file}: job #{}: field 'name' is missing",
                i + 1
            )));
        }
    }
    Ok(jobs)
}

pub async fn jobs_apply(cli: &Cli, a: &ApplyArgs, create_only: bool) -> R {
    let jobs = job_file(&a.file)?;
    let api = Api::open(cli, &a.server).await?;
    for def in jobs {
        let name = def.name.clone().unwrap_or_default();
        if create_only {
            let existing: R<JobDetail> = api.get(&format!("/api/jobs/{}", enc(&name))).await;
            if existing.is_ok_and(|d| d.job.defined) {
                return Err(Failure::Check(format!(
                    "job '{name}' already exists; `jobward jobs apply` replaces it"
                )));
            }
        }
        let r: JobPutResponse = api
            .send(Method::PUT, &format!("/api/jobs/{}", enc(&name)), &def)
            .await?;
        outln!(
            "job '{name}' {} ({})",
            if r.created { "created" } else { "replaced" },
            r.job.schedule
        );
    }
    Ok(())
}

pub async fn jobs_delete(cli: &Cli, name: &str, cancel: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let r: JobDeleteResponse = api
        .call::<(), _>(
            Method::DELETE,
            &format!(
                "/api/jobs/{}{}",
                enc(name),
                if cancel { "?cancel=true" } else { "" }
            ),
            None,
        )
        .await?;
    outln!(
        "job '{}' deleted (its history stays){}",
        r.name,
        if r.cancelled.is_empty() {
            String::new()
        } else {
            format!(
                "; cancelled or stopping: executions {}",
                r.cancelled
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Ok(())
}

pub async fn jobs_backfill(cli: &Cli, name: &str, from: &str, to: &str, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let r: BackfillResponse = api
        .send(
            Method::POST,
            &format!("/api/jobs/{}/backfill", enc(name)),
            &BackfillRequest {
                from: from.into(),
                to: to.into(),
            },
        )
        .await?;
    outln!(
        "backfilled job '{name}': {} run(s) created, {} instant(s) already had one",
        r.created.len(),
        r.already
    );
    Ok(())
}

pub async fn runs_list(cli: &Cli, a: &RunsListArgs) -> R {
    if a.limit < 1 || a.limit > 10_000 {
        return Err(Failure::Input(format!(
            "--limit must be between 1 and 10000, got {}",
            a.limit
        )));
    }
    let mut states: Vec<String> = Vec::new();
    for st in &a.status {
        st.parse::<jobward_core::State>()
            .map_err(|e| Failure::Input(format!("--status: {e}")))?;
        states.push(st.clone());
    }
    if a.running && !states.iter().any(|s| s == "running") {
        states.push("running".into());
    }
    if let Some(v) = &a.stale_after {
        parse_positive_duration(v).map_err(|e| Failure::Input(format!("--stale-after: {e}")))?;
    }
    let api = Api::open(cli, &a.server).await?;
    let mut rows: Vec<ExecutionView> = Vec::new();
    let mut before = a.before;
    while (rows.len() as i64) < a.limit {
        let mut q = vec![format!("limit={}", (a.limit - rows.len() as i64).min(1000))];
        if let Some(j) = &a.job {
            q.push(format!("job={}", enc(j)));
        }
        if !states.is_empty() {
            q.push(format!("status={}", enc(&states.join(","))));
        }
        if let Some(s) = &a.stale_after {
            q.push(format!("stale_after={}", enc(s)));
        }
        if let Some(b) = before {
            q.push(format!("before={b}"));
        }
        let page: ExecutionPage = api.get(&format!("/api/executions?{}", q.join("&"))).await?;
        rows.extend(page.executions);
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    if a.json {
        print_json(&rows);
    } else if rows.is_empty() {
        outln!("no executions match");
    } else {
        let now = now(&api).await?;
        outln!("{}", runs_table(&rows, now));
    }
    Ok(())
}

pub async fn runs_show(cli: &Cli, id: i64, log_lines: usize, json: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let e: ExecutionView = api.get(&format!("/api/executions/{id}")).await?;
    let events: EventList = api.get(&format!("/api/executions/{id}/events")).await?;
    let log: LogView = api
        .get(&format!("/api/executions/{id}/log?tail_bytes=65536"))
        .await?;
    let tail = log.log.as_ref().map(|t| {
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(log_lines)..].join("\n")
    });
    if json {
        #[derive(Serialize)]
        struct Show<'a> {
            execution: &'a ExecutionView,
            command: &'a str,
            events: &'a [EventView],
            log_tail: Option<String>,
        }
        print_json(&Show {
            execution: &e,
            command: &e.command,
            events: &events.events,
            log_tail: tail,
        });
        return Ok(());
    }
    let names = names(&api).await?;
    let now = now(&api).await?;
    show_fields(&e, &names, now);
    outln!("events:");
    for ev in &events.events {
        let change = match (ev.kind, ev.from, ev.to) {
            (EventKind::Refused, _, _) => "REFUSED".to_string(),
            (EventKind::Note, _, _) => "note".to_string(),
            (_, None, Some(to)) => format!("-> {to}"),
            (_, Some(from), Some(to)) => format!("{from} -> {to}"),
            _ => "-".to_string(),
        };
        let reason = ev
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        outln!(
            "  {}  {change}{reason}  by {}: {}",
            time(Some(ev.at)),
            names.human(&ev.actor),
            names.human(&ev.message)
        );
    }
    let path = log.path.unwrap_or_else(|| "the server".into());
    match &tail {
        Some(text) if !text.is_empty() => {
            outln!("log (last {log_lines} lines of {path}):");
            for line in text.lines() {
                outln!("  {line}");
            }
        }
        Some(_) => outln!("log: empty ({path})"),
        None => outln!("log: none at {path}"),
    }
    Ok(())
}

fn show_fields(e: &ExecutionView, names: &Names, now: jobward_core::Timestamp) {
    let state = match (&e.reason, &e.message) {
        (Some(r), Some(m)) => format!("{} ({r}): {}", e.status_text, names.human(m)),
        _ => e.status_text.clone(),
    };
    outln!(
        "execution {}: job '{}' run #{}, attempt {} of {}",
        e.id,
        e.job,
        e.number,
        e.attempt,
        e.max_attempts
    );
    let field = |k: &str, v: String| outln!("  {k:<13} {v}");
    field("state", state);
    field(
        "trigger",
        match e.scheduled_for {
            Some(t) => format!("{} (instant {})", e.trigger, time(Some(t))),
            None => e.trigger.clone(),
        },
    );
    field("command", e.command.clone());
    if e.priority != 0 {
        field("priority", e.priority.to_string());
    }
    field("queued", time(Some(e.queued_at)));
    if let Some(at) = e.run_at {
        field(
            "not before",
            format!("{} ({})", time(Some(at)), ago(now, Some(at))),
        );
    }
    field("started", time(e.started_at));
    field("finished", time(e.finished_at));
    field("runtime", dur(e.runtime_ms.map(Duration::from_millis)));
    if e.status == Status::Running {
        field(
            "heartbeat",
            format!(
                "{} (lease until {})",
                ago(now, e.heartbeat_at),
                time(e.lease_expires_at)
            ),
        );
        field("run deadline", time(e.run_deadline));
    }
    if e.status == Status::Queued {
        field("start by", time(e.start_deadline));
    }
    if let Some(owner) = &e.lease_owner {
        field("owner", names.human(owner));
    }
    if let Some(pid) = e.pid {
        field(
            "process",
            format!(
                "pid {pid} (process group {})",
                e.pgid.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
            ),
        );
    }
    match (e.exit_code, e.signal) {
        (Some(c), _) => field("exit", format!("code {c}")),
        (_, Some(sig)) => field(
            "exit",
            format!("signal {sig} ({})", jobward_exec::signal_name(sig)),
        ),
        _ => {}
    }
    if let Some(prev) = e.retry_of {
        field("retry of", format!("execution {prev}"));
    }
}

pub async fn runs_cancel(cli: &Cli, id: i64, no_wait: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let out: CancelResponse = api
        .call::<(), _>(Method::POST, &format!("/api/executions/{id}/cancel"), None)
        .await?;
    let execution = &out.execution;
    match out.result {
        CancelResult::Cancelled => {
            outln!("execution {} cancelled (it was queued)", execution.id)
        }
        CancelResult::AlreadyTerminal => {
            outln!(
                "execution {} already ended: {}",
                execution.id,
                execution.status
            );
        }
        CancelResult::Requested => {
            let names = names(&api).await?;
            outln!(
                "cancel requested for execution {}; its owner {} must stop it by {}",
                execution.id,
                names.human(execution.lease_owner.as_deref().unwrap_or("-")),
                time(execution.cancel_deadline)
            );
            if !no_wait {
                let now = now(&api).await?;
                let limit = execution
                    .cancel_deadline
                    .map(|d| jobward_core::deadline::between(now, d))
                    .unwrap_or(Duration::from_secs(30))
                    + Duration::from_secs(5);
                let end = wait_terminal(&api, id, Some(limit)).await?;
                if is_terminal(end.status) {
                    outln!(
                        "execution {id} is {}: {}",
                        end.status,
                        end.message.unwrap_or_default()
                    );
                } else {
                    outln!(
                        "execution {id} is still stopping; the ledger settles it by its cancel deadline {}",
                        time(end.cancel_deadline)
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn runs_reschedule(
    cli: &Cli,
    id: i64,
    at: &Option<String>,
    delay: &Option<String>,
    server: &ServerArgs,
) -> R {
    let api = Api::open(cli, server).await?;
    let e: ExecutionView = api
        .send(
            Method::PATCH,
            &format!("/api/executions/{id}"),
            &ExecutionPatch {
                run_at: at.clone(),
                delay: delay.clone(),
            },
        )
        .await?;
    outln!("execution {} of job '{}' is {}", e.id, e.job, e.status_text);
    Ok(())
}

pub async fn cleanup(cli: &Cli, a: &CleanupArgs) -> R {
    let stale_after = parse_positive_duration(&a.stale_after)
        .map_err(|e| Failure::Input(format!("--stale-after: {e}")))?;
    let api = Api::open(cli, &a.server).await?;
    let report: CleanupResponse = api
        .send(
            Method::POST,
            "/api/system/cleanup/stale-executions",
            &CleanupRequest {
                stale_after: Some(a.stale_after.clone()),
                dry_run: Some(!a.apply),
            },
        )
        .await?;
    if a.json {
        print_json(&report);
        return Ok(());
    }
    if report.executions.is_empty() {
        outln!(
            "no running execution has a last heartbeat older than {}",
            format_duration(stale_after)
        );
        return Ok(());
    }
    let now = now(&api).await?;
    let names = names(&api).await?;
    let mut t = table(&[
        "ID",
        "JOB",
        "RUN",
        "ATTEMPT",
        "STARTED",
        "LAST HEARTBEAT",
        "OWNER",
        if report.dry_run {
            "WOULD BECOME"
        } else {
            "BECAME"
        },
    ]);
    for e in &report.executions {
        let became = if report.dry_run || report.changed_ids.contains(&e.id) {
            "timed_out (manual_cleanup)".to_string()
        } else {
            "unchanged: it ended meanwhile".to_string()
        };
        t.add_row(vec![
            e.id.to_string(),
            e.job.clone(),
            format!("#{}", e.number),
            format!("{}/{}", e.attempt, e.max_attempts),
            time(e.started_at),
            ago(now, e.heartbeat_at),
            e.lease_owner
                .as_deref()
                .map(|o| names.human(o))
                .unwrap_or_else(|| "-".into()),
            became,
        ]);
    }
    outln!("{t}");
    if report.dry_run {
        outln!(
            "dry run: {} execution(s) would change; run again with --apply to change them",
            report.executions.len()
        );
    } else {
        for (id, m) in report.changed_ids.iter().zip(&report.changed_messages) {
            outln!("execution {id}: {}", names.human(m));
        }
        let retries = report.retries.len();
        outln!(
            "applied: {} changed to timed_out (manual_cleanup), {} ended meanwhile and were left alone, {} retr{} scheduled",
            report.changed,
            report.raced,
            retries,
            if retries == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

pub async fn health(cli: &Cli, a: &HealthArgs) -> R {
    if let Some(v) = &a.long_running_after {
        parse_positive_duration(v)
            .map_err(|e| Failure::Input(format!("--long-running-after: {e}")))?;
    }
    let api = Api::open(cli, &a.server).await?;
    let mut q = Vec::new();
    if let Some(v) = &a.long_running_after {
        q.push(format!("long_running_after={}", enc(v)));
    }
    if let Some(n) = a.warn_long_running {
        q.push(format!("warn_long_running={n}"));
    }
    let out: HealthView = api
        .get(&format!("/api/system/health?{}", q.join("&")))
        .await?;
    if a.json {
        print_json(&out);
    } else {
        let m = &out.metrics;
        outln!("status: {}", out.status);
        for (k, v) in [
            ("running_executions", m.running_executions),
            ("queued_executions", m.queued_executions),
            ("long_running_executions", m.long_running_executions),
            ("stale_executions", m.stale_executions),
            ("overdue_queued_executions", m.overdue_queued_executions),
            ("recent_executions_24h", m.recent_executions_24h),
            ("live_nodes", m.live_nodes),
        ] {
            outln!("{k}: {v}");
        }
        outln!(
            "timestamp: {}",
            m.timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        for w in &out.warnings {
            outln!("warning: {w}");
        }
    }
    if out.warnings.is_empty() {
        Ok(())
    } else {
        Err(Failure::Quiet)
    }
}

pub async fn nodes_list(cli: &Cli, json: bool, server: &ServerArgs) -> R {
    let api = Api::open(cli, server).await?;
    let nodes: NodeList = api.get("/api/nodes").await?;
    if json {
        print_json(&nodes.nodes);
        return Ok(());
    }
    let now = now(&api).await?;
    let mut t = table(&[
        "INCARNATION",
        "NAME",
        "HOST",
        "PID",
        "STARTED",
        "LAST HEARTBEAT",
        "STATE",
    ]);
    for n in &nodes.nodes {
        let state = match n.state.as_str() {
            "stopped" => format!("stopped: {}", n.stop_reason.clone().unwrap_or_default()),
            "lease_expired" => "lease expired".into(),
            other => other.to_string(),
        };
        t.add_row(vec![
            n.id.clone(),
            n.name.clone(),
            n.hostname.clone(),
            n.pid.to_string(),
            time(Some(n.started_at)),
            ago(now, Some(n.heartbeat_at)),
            state,
        ]);
    }
    outln!("{t}");
    Ok(())
}
