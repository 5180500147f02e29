//! The service layer: every change to the ledger that the API, the worker protocol, the
//! dashboard, the executor or the maintenance loops ask for goes through here, so what follows
//! a store result — stopping a local run, metrics, traces, alerts, the log tail, log lines — is
//! written once. Handlers parse and render; the store decides; this file acts on what it
//! decided.
//!
//! Input checks shared by every caller (payload size, idempotency keys, progress reports) live
//! here too, and fail with `StoreError::Invalid` (a 400 on the API) before anything changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jobward_core::{Reason, State};
use jobward_store::{
    Backfill, BackfillReport, CancelOutcome, CancelParams, ClaimParams, CleanupReport,
    CompleteParams, Created, DeleteJob, DeleteJobReport, DynStore, ExecutionId, ExecutionRow,
    HeartbeatParams, HeartbeatReport, ProgressParams, PutJob, PutJobReport, Recovered,
    ReleaseParams, ReleaseReport, Reschedule, RetryNow, Serves, Settled, StartExternal,
    StartOutcome, StoreError, TriggerParams,
};
use serde_json::Value;
use tracing::{info, warn};

use crate::alerts::{AlertKind, Alerts};
use crate::executor::log_path;
use crate::metrics;

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Largest trigger payload and checkpoint, serialised.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Largest log tail a worker sends with a completion.
pub const MAX_LOG_TAIL: usize = 64 * 1024;

/// The runs this process supervises itself (a node's executor): the service stops one at once
/// when the ledger asks for it (a cancel, a replacing trigger, a reaped lease).
pub trait LocalRuns: Send + Sync {
    /// Asks a run to stop gracefully, to be recorded with `reason`. False when it does not
    /// run here.
    fn stop_gracefully(&self, id: ExecutionId, reason: Reason) -> bool;
    /// Kills a run at once: the ledger already ended it.
    fn kill(&self, id: ExecutionId) -> bool;
}

pub struct Service {
    pub store: DynStore,
    pub log_dir: PathBuf,
    pub alerts: Option<Alerts>,
    local: RwLock<Option<Weak<dyn LocalRuns>>>,
    /// When each worker's claim was last written down, and what it said then.
    seen: std::sync::Mutex<HashMap<String, Seen>>,
}

/// A worker's claim as last written down: when, its queues, what it runs.
type Seen = (Instant, Vec<String>, Serves);

/// A worker's row is rewritten at most this often while nothing about it changes.
const WORKER_SEEN_EVERY: Duration = Duration::from_secs(5);

fn invalid(m: impl Into<String>) -> StoreError {
    StoreError::Invalid(m.into())
}

/// A batch is checked whole before anything is written: a malformed item (one the API's
/// schema already rules out) refuses the request, naming the item; per-item answers are for
/// well-formed items the ledger itself accepts, repeats or refuses.
fn check_each<T>(items: &[T], check: impl Fn(&T) -> Result<()>) -> Result<()> {
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = check(item) {
            return Err(invalid(format!("item {i}: {e}")));
        }
    }
    Ok(())
}

/// A trigger's payload and idempotency key.
pub fn check_trigger(p: &TriggerParams) -> Result<()> {
    if let Some(v) = &p.payload
        && v.to_string().len() > MAX_PAYLOAD_BYTES
    {
        return Err(invalid(format!(
            "payload is larger than {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    if let Some(k) = &p.idempotency_key
        && (k.is_empty() || k.len() > 200)
    {
        return Err(invalid("idempotency_key must be 1 to 200 characters"));
    }
    if let Some(pr) = p.priority
        && !(-1000..=1000).contains(&pr)
    {
        return Err(invalid(format!(
            "priority must be between -1000 and 1000, got {pr}"
        )));
    }
    Ok(())
}

/// Attempt numbers are small; a larger one is a malformed report.
pub fn check_attempt(attempt: u32) -> Result<()> {
    if !(1..=1_000_000).contains(&attempt) {
        return Err(invalid(format!(
            "attempt must be between 1 and 1000000, got {attempt}"
        )));
    }
    Ok(())
}

/// What a worker or a job reports about a run: progress, phase and checkpoint.
pub fn check_report(
    progress: Option<f64>,
    phase: Option<&str>,
    checkpoint: Option<&Value>,
) -> Result<()> {
    if let Some(p) = progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(invalid(format!(
            "progress must be between 0 and 1, got {p}"
        )));
    }
    if let Some(p) = phase
        && (p.len() > 200 || p.chars().any(char::is_control))
    {
        return Err(invalid("phase must be at most 200 printable characters"));
    }
    if let Some(c) = checkpoint
        && c.to_string().len() > MAX_PAYLOAD_BYTES
    {
        return Err(invalid(format!(
            "checkpoint is larger than {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Whether an execution ended for good: failed or timed out with no retry left.
pub fn failed_for_good(s: &Settled) -> bool {
    matches!(s.execution.state, State::Failed | State::TimedOut) && s.retry.is_none()
}

/// One log line per recovered execution: job, number, attempt, last heartbeat, reason.
pub fn log_recovered(what: &str, r: &Recovered) {
    warn!(
        job = %r.job,
        number = r.number,
        attempt = r.attempt,
        execution = r.id,
        last_heartbeat = r.last_heartbeat.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()),
        reason = %r.reason,
        owner = r.lease_owner.as_deref().unwrap_or("-"),
        retry = r.retry.map(|id| id.to_string()).unwrap_or_else(|| "none".into()),
        "{what}: {}",
        r.message
    );
}

impl Service {
    pub fn new(store: DynStore, log_dir: PathBuf, alerts: Option<Alerts>) -> Arc<Service> {
        Arc::new(Service {
            store,
            log_dir,
            alerts,
            local: RwLock::new(None),
            seen: Default::default(),
        })
    }

    /// Attaches the runs this process supervises (a node's executor).
    pub fn attach_local(&self, runs: Weak<dyn LocalRuns>) {
        *self.local.write().expect("service lock") = Some(runs);
    }

    fn local(&self) -> Option<Arc<dyn LocalRuns>> {
        self.local
            .read()
            .expect("service lock")
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Jobs changed (reloaded, resumed): every claimer looks again.
    pub fn wake_all(&self) {
        self.store.work_signal().notify_all();
    }

    // ---- jobs ----

    /// Creates an execution (or finds the one its idempotency key made); a replaced run of
    /// this node is stopped at once.
    pub async fn trigger(&self, p: TriggerParams) -> Result<Created> {
        check_trigger(&p)?;
        let created = self.store.trigger(p).await?;
        self.triggered(&created);
        Ok(created)
    }

    /// Many triggers in one transaction, answered one by one (an invalid item is refused
    /// alone).
    pub async fn trigger_many(&self, items: Vec<TriggerParams>) -> Result<Vec<Result<Created>>> {
        check_each(&items, check_trigger)?;
        let done = self.store.trigger_many(items).await?;
        for created in done.iter().flatten() {
            self.triggered(created);
        }
        Ok(done)
    }

    fn triggered(&self, created: &Created) {
        if created.existing {
            return;
        }
        if created.execution.state.is_terminal() {
            crate::telemetry::execution_ended(&self.store, &created.execution, None);
        }
        self.replaced(&created.replaced);
    }

    /// Runs a newer execution replaced (overlap = replace) stop at once when they run here;
    /// elsewhere their owner learns it from its next heartbeat.
    pub fn replaced(&self, ids: &[ExecutionId]) {
        if let Some(local) = self.local().filter(|_| !ids.is_empty()) {
            for id in ids {
                local.stop_gracefully(*id, Reason::Replaced);
            }
        }
    }

    /// Pauses or resumes a job; resuming wakes the claimers for what it queued meanwhile.
    pub async fn set_paused(&self, name: &str, paused: bool, actor: &str) -> Result<()> {
        self.store.set_paused(name, paused, actor).await?;
        if !paused {
            self.wake_all();
        }
        Ok(())
    }

    /// Creates, replaces or changes a job defined through the API (and pauses or resumes it
    /// when asked); the change is recorded with its actor, before and after.
    pub async fn put_job(&self, p: PutJob, paused: Option<bool>) -> Result<PutJobReport> {
        let name = p.spec.name.clone();
        let actor = p.actor.clone();
        let report = self.store.put_job(p).await?;
        if let Some(paused) = paused {
            let now_paused = self.store.get_job(&name).await?.is_some_and(|j| j.paused);
            if now_paused != paused {
                self.set_paused(&name, paused, &actor).await?;
            }
        }
        self.wake_all();
        Ok(report)
    }

    /// Deletes a job defined through the API; its live executions, when asked to cancel
    /// them, are cancelled (queued) or stopped (running here at once; elsewhere by their
    /// owner at its next heartbeat).
    pub async fn delete_job(&self, p: DeleteJob) -> Result<DeleteJobReport> {
        let report = self.store.delete_job(p).await?;
        if let Some(local) = self.local() {
            for id in &report.cancelled {
                local.stop_gracefully(*id, Reason::CancelRequested);
            }
        }
        Ok(report)
    }

    /// Fires the missed instants of a job's schedule in a range, once each.
    pub async fn backfill(&self, p: Backfill) -> Result<BackfillReport> {
        let report = self.store.backfill(p).await?;
        self.wake_all();
        Ok(report)
    }

    /// A run outside jobward starts (`jobward exec`, a start ping).
    pub async fn start_external(&self, p: StartExternal) -> Result<StartOutcome> {
        self.store.start_external(p).await
    }

    /// Marks runs past the upper bound of their expected duration overdue (each once, on
    /// whichever node gets there first) and alerts about each.
    pub async fn flag_overdue(&self, actor: &str) -> Result<Vec<ExecutionRow>> {
        let rows = self.store.flag_overdue(actor).await?;
        for e in &rows {
            warn!(job = %e.job, execution = e.id, "run overdue: running past its expected duration");
            if let Some(a) = &self.alerts {
                let now = e.overdue_at.unwrap_or_default();
                a.send_about(
                    AlertKind::Overdue,
                    Some(&e.job),
                    format!(
                        "job '{}' run #{} is overdue: running for {}, expected {} (it is not stopped)",
                        e.job,
                        e.number,
                        jobward_core::duration::format_duration(
                            e.started_at
                                .map(|s| jobward_core::deadline::between(s, now))
                                .unwrap_or_default()
                        ),
                        e.expected_duration.map(|b| b.to_string()).unwrap_or_default()
                    ),
                    serde_json::json!({ "execution": crate::views::execution(e, now) }),
                );
            }
        }
        Ok(rows)
    }

    /// The alert sinks and their last deliveries, when any sink is configured.
    pub fn alerts(&self) -> Option<&Alerts> {
        self.alerts.as_ref()
    }

    /// An operator's "retry now" of a failed, timed-out or cancelled execution.
    pub async fn retry_now(&self, id: ExecutionId, actor: String) -> Result<ExecutionRow> {
        let row = self.store.retry_now(RetryNow { id, actor }).await?;
        self.wake_all();
        Ok(row)
    }

    /// Moves a queued execution's start.
    pub async fn reschedule(&self, p: Reschedule) -> Result<ExecutionRow> {
        self.store.reschedule(p).await
    }

    // ---- executions ----

    /// Cancels a queued execution, or asks the owner of a running one to stop it (at once,
    /// when this process runs it).
    pub async fn cancel(&self, id: ExecutionId, actor: String) -> Result<CancelOutcome> {
        let out = self
            .store
            .cancel(CancelParams {
                id,
                reason: Reason::CancelRequested,
                message: format!("cancelled by {actor}"),
                actor,
            })
            .await?;
        match &out {
            CancelOutcome::Cancelled { execution } => {
                metrics::transition(execution);
                crate::telemetry::execution_ended(&self.store, execution, None);
            }
            CancelOutcome::Requested { execution } => {
                if let Some(local) = self.local() {
                    local.stop_gracefully(execution.id, Reason::CancelRequested);
                }
            }
            CancelOutcome::AlreadyTerminal { .. } => {}
        }
        Ok(out)
    }

    /// Lists (dry run) or settles the running executions whose last heartbeat is older than
    /// `stale_after`, killing their proven survivors on this host first.
    pub async fn cleanup(
        &self,
        stale_after: Duration,
        apply: bool,
        actor: String,
    ) -> Result<CleanupReport> {
        let report =
            crate::cleanup::stale_executions(&self.store, stale_after, apply, actor).await?;
        self.recovered("operator cleanup", &report.changed);
        Ok(report)
    }

    // ---- the worker protocol, and the node's own executor ----

    /// Writes down that a worker claims from these queues and runs this (for the job and
    /// workers pages), at most every few seconds per worker unless that changes.
    pub async fn worker_seen(&self, id: &str, queues: &[String], serves: &Serves) -> Result<()> {
        let now = Instant::now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, q, s)) = seen.get(id)
                && now.duration_since(*at) < WORKER_SEEN_EVERY
                && q == queues
                && s == serves
            {
                return Ok(());
            }
            if seen.len() > 10_000 {
                seen.retain(|_, (at, _, _)| now.duration_since(*at) < Duration::from_secs(3600));
            }
            seen.insert(id.to_string(), (now, queues.to_vec(), serves.clone()));
        }
        self.store.worker_seen(id, queues, serves).await
    }

    pub async fn claim(&self, p: ClaimParams) -> Result<Vec<ExecutionRow>> {
        let claimed = self.store.claim(p).await?;
        claimed.iter().for_each(metrics::claimed);
        Ok(claimed)
    }

    /// Renews leases; a lost one is counted (its refusal is already in its event log).
    pub async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatReport> {
        for l in &p.leases {
            check_attempt(l.lease.attempt)?;
            check_report(l.progress, l.phase.as_deref(), l.checkpoint.as_ref())?;
        }
        let r = self.store.heartbeat(p).await?;
        r.lost.iter().for_each(|_| metrics::refused("heartbeat"));
        Ok(r)
    }

    /// Progress from inside a running execution, proven by its lease token.
    pub async fn progress(&self, p: ProgressParams) -> Result<ExecutionRow> {
        check_attempt(p.lease.attempt)?;
        check_report(p.progress, p.phase.as_deref(), p.checkpoint.as_ref())?;
        self.store
            .report_progress(p)
            .await
            .inspect_err(|e| refused(e, "progress"))
    }

    /// Records how a run ended (fenced by its lease), with the end of its output when the
    /// worker sent it.
    pub async fn complete(&self, p: CompleteParams, log_tail: Option<String>) -> Result<Settled> {
        check_attempt(p.lease.attempt)?;
        check_log_tail(log_tail.as_deref())?;
        let s = self
            .store
            .complete(p)
            .await
            .inspect_err(|e| refused(e, "completion"))?;
        self.completed(&s, log_tail).await;
        Ok(s)
    }

    /// Many completions in one transaction, each fenced by its own lease and answered alone:
    /// recorded, an idempotent repeat, or refused.
    pub async fn complete_many(
        &self,
        items: Vec<(CompleteParams, Option<String>)>,
    ) -> Result<Vec<Result<Settled>>> {
        Ok(self.exchange(items, None).await?.0)
    }

    /// Many completions and, when `claim` is given, a claim, in one transaction: a worker's
    /// "complete these, give me the next" costs one commit.
    pub async fn exchange(
        &self,
        items: Vec<(CompleteParams, Option<String>)>,
        claim: Option<ClaimParams>,
    ) -> Result<(Vec<Result<Settled>>, Vec<ExecutionRow>)> {
        check_each(&items, |(p, tail)| {
            check_completion(p.lease.attempt, tail.as_deref())
        })?;
        let (params, tails): (Vec<CompleteParams>, Vec<Option<String>>) = items.into_iter().unzip();
        let (done, claimed) = match claim {
            Some(c) => self.store.exchange(params, c).await?,
            None => (self.store.complete_many(params).await?, Vec::new()),
        };
        for (r, tail) in done.iter().zip(tails) {
            match r {
                Ok(s) => self.completed(s, tail).await,
                Err(e) => refused(e, "completion"),
            }
        }
        claimed.iter().for_each(metrics::claimed);
        Ok((done, claimed))
    }

    async fn completed(&self, s: &Settled, log_tail: Option<String>) {
        if s.repeated {
            return;
        }
        if let Some(tail) = log_tail {
            let path = log_path(&self.log_dir, &s.execution.job, s.execution.id);
            let _ = tokio::task::spawn_blocking(move || {
                let mut sink = jobward_exec::log::LogSink::create(&path, 2 * MAX_LOG_TAIL as u64)?;
                sink.write(tail.as_bytes())
            })
            .await;
        }
        self.settled(s);
    }

    /// Hands leases back: each attempt ends `cancelled (handed_back)` and runs again at once.
    pub async fn release(&self, p: ReleaseParams) -> Result<ReleaseReport> {
        for l in &p.leases {
            check_attempt(l.attempt)?;
        }
        let r = self.store.release(p).await?;
        r.lost.iter().for_each(|_| metrics::refused("release"));
        for s in &r.released {
            self.settled(s);
        }
        Ok(r)
    }

    // ---- after the ledger decided ----

    /// After a terminal transition its owner reported: metrics, its trace, the alert on a
    /// final failure, and a log line. The one place for this, whoever reported it.
    pub fn settled(&self, s: &Settled) {
        if s.repeated {
            return;
        }
        metrics::transition(&s.execution);
        crate::telemetry::settled(&self.store, s);
        if let Some(a) = &self.alerts {
            let e = &s.execution;
            let view = || {
                serde_json::json!({
                    "execution": crate::views::execution(e, e.finished_at.unwrap_or_default())
                })
            };
            if failed_for_good(s) {
                a.send_about(
                    AlertKind::Failed,
                    Some(&e.job),
                    format!(
                        "job '{}' run #{} {} for good ({}): {}",
                        e.job,
                        e.number,
                        e.state,
                        e.reason.map(|r| r.to_string()).unwrap_or_default(),
                        e.message.as_deref().unwrap_or("")
                    ),
                    view(),
                );
            }
            if e.state == State::Completed {
                if let Some(short) = crate::views::too_short(e) {
                    a.send_about(AlertKind::TooShort, Some(&e.job), short, view());
                } else {
                    a.resolve_job(&e.job, view());
                }
            }
        }
        let e = &s.execution;
        info!(
            job = %e.job, number = e.number, attempt = e.attempt, execution = e.id,
            state = %e.state, reason = e.reason.map(|r| r.to_string()).unwrap_or_default(),
            retry = s.retry.as_ref().map(|r| r.id).unwrap_or_default(),
            "execution ended"
        );
    }

    /// After executions were settled for an owner that went silent (the reaper, lost-node
    /// settlement, startup recovery, an operator's cleanup): a log line each, metrics, the
    /// `recovered` alert, their traces, and this node's own copy of such a run is killed (the
    /// ledger already ended it).
    pub fn recovered(&self, what: &str, recs: &[Recovered]) {
        if recs.is_empty() {
            return;
        }
        let local = self.local();
        for r in recs {
            log_recovered(what, r);
            metrics::recovered(r);
            if let Some(a) = &self.alerts {
                let missed =
                    r.runner == jobward_core::EXTERNAL_RUNNER && r.reason == Reason::QueueTimeout;
                let kind = if missed {
                    AlertKind::Missed
                } else {
                    AlertKind::Recovered
                };
                a.send_about(
                    kind,
                    Some(&r.job),
                    format!("job '{}' run #{}: {}", r.job, r.number, r.message),
                    serde_json::to_value(r).unwrap_or_default(),
                );
            }
            if let Some(local) = &local {
                local.kill(r.id);
            }
        }
        crate::telemetry::recovered(&self.store, recs);
    }
}

/// A completion's attempt number and log tail.
pub fn check_completion(attempt: u32, tail: Option<&str>) -> Result<()> {
    check_attempt(attempt)?;
    check_log_tail(tail)
}

fn check_log_tail(tail: Option<&str>) -> Result<()> {
    if tail.is_some_and(|t| t.len() > MAX_LOG_TAIL) {
        return Err(invalid(format!(
            "log_tail is larger than {MAX_LOG_TAIL} bytes"
        )));
    }
    Ok(())
}

/// A report refused because its lease is lost is counted (the refusal itself is already in
/// the execution's event log).
fn refused(e: &StoreError, what: &'static str) {
    if matches!(e, StoreError::LeaseLost { .. }) {
        metrics::refused(what);
    }
}
