//! The one `Store` implementation, over any `Backend`: each method says which operation runs
//! and whether it writes; the operations themselves are in `ops`, `reads` and `table`.

use std::sync::Arc;

use async_trait::async_trait;
use jobward_core::{Reason, Timestamp};

use super::{Backend, op, ops, reads, table};
use crate::types::*;
use crate::{Clock, Result, Store, StoreError, WorkSignal};

pub(crate) struct Ledger<B> {
    pub db: B,
}

/// Runs `$body` in a write transaction of `$self`'s backend, with `$p` (moved in once,
/// shared by every attempt) named `$pp`.
macro_rules! write {
    ($self:expr, $p:expr, |$tx:ident, $pp:ident| $body:expr) => {{
        let shared = Arc::new($p);
        $self
            .db
            .write(op(move |$tx| {
                let $pp = shared.clone();
                Box::pin(async move { $body })
            }))
            .await
    }};
}

/// The same for a read.
macro_rules! read {
    ($self:expr, $p:expr, |$tx:ident, $pp:ident| $body:expr) => {{
        let shared = Arc::new($p);
        $self
            .db
            .read(op(move |$tx| {
                let $pp = shared.clone();
                Box::pin(async move { $body })
            }))
            .await
    }};
}

#[async_trait]
impl<B: Backend> Store for Ledger<B> {
    fn backend(&self) -> &'static str {
        self.db.name()
    }

    fn clock(&self) -> &Clock {
        self.db.clock()
    }

    fn database_errors(&self) -> u64 {
        self.db.errors()
    }

    fn work_signal(&self) -> Arc<WorkSignal> {
        self.db.work_signal()
    }

    async fn now(&self) -> Result<Timestamp> {
        read!(self, (), |tx, _p| Ok(tx.now()))
    }

    async fn ping(&self) -> Result<()> {
        read!(self, (), |tx, _p| {
            tx.fetch("SELECT 1", &[]).await?;
            Ok(())
        })
    }

    async fn backup(&self, dest: &std::path::Path) -> Result<()> {
        self.db.backup(dest).await
    }

    async fn register_node(&self, node: NewNode) -> Result<RegisterOutcome> {
        write!(self, node, |tx, p| ops::register_node(tx, &p).await)
    }

    async fn stop_node(&self, id: &str, reason: &str) -> Result<()> {
        let p = (id.to_string(), reason.to_string());
        write!(self, p, |tx, p| ops::stop_node(tx, &p.0, &p.1).await)
    }

    async fn worker_seen(&self, id: &str, queues: &[String], serves: &Serves) -> Result<()> {
        let p = (id.to_string(), queues.to_vec(), serves.clone());
        write!(self, p, |tx, p| table::worker_seen(tx, &p.0, &p.1, &p.2)
            .await)
    }

    async fn workers(&self, since: Timestamp) -> Result<Vec<WorkerRow>> {
        read!(self, since, |tx, since| table::workers(tx, *since).await)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        read!(self, (), |tx, _p| table::list_nodes(tx).await)
    }

    async fn orphans_of(&self, name: &str, node_id: &str) -> Result<Vec<ExecutionRow>> {
        let p = (name.to_string(), node_id.to_string());
        read!(self, p, |tx, p| reads::orphans_of(tx, &p.0, &p.1).await)
    }

    async fn settle_lost_nodes(&self, actor: &str, own: Option<&str>) -> Result<ReapReport> {
        let p = (actor.to_string(), own.map(str::to_string));
        write!(self, p, |tx, p| ops::settle_lost_nodes(
            tx,
            &p.0,
            p.1.as_deref()
        )
        .await)
    }

    async fn settle_orphans(
        &self,
        p: RecoverParams,
        orphans: Vec<(LeaseRef, String)>,
    ) -> Result<ReapReport> {
        write!(self, (p, orphans), |tx, p| ops::settle_orphans(
            tx,
            &p.0,
            &p.1,
            Reason::NodeRestarted
        )
        .await)
    }

    async fn sync_jobs(&self, p: SyncJobs) -> Result<SyncReport> {
        write!(self, p, |tx, p| ops::sync_jobs_locked(tx, &p).await)
    }

    async fn list_jobs(&self) -> Result<Vec<JobRow>> {
        read!(self, (), |tx, _p| {
            let mut out = Vec::new();
            for name in reads::job_names(tx).await? {
                if let Some(job) = reads::get_job(tx, &name).await? {
                    out.push(job);
                }
            }
            Ok(out)
        })
    }

    async fn get_job(&self, name: &str) -> Result<Option<JobRow>> {
        read!(self, name.to_string(), |tx, n| reads::get_job(tx, &n).await)
    }

    async fn set_paused(&self, name: &str, paused: bool, actor: &str) -> Result<()> {
        write!(self, (name.to_string(), actor.to_string()), |tx, a| {
            ops::set_paused(tx, &a.0, paused, &a.1).await
        })
    }

    async fn trigger(&self, p: TriggerParams) -> Result<Created> {
        write!(self, p, |tx, p| ops::trigger(tx, &p).await)
    }

    async fn put_job(&self, p: PutJob) -> Result<PutJobReport> {
        write!(self, p, |tx, p| ops::put_job(tx, &p).await)
    }

    async fn delete_job(&self, p: DeleteJob) -> Result<DeleteJobReport> {
        write!(self, p, |tx, p| ops::delete_job(tx, &p).await)
    }

    async fn job_changes(&self, name: &str) -> Result<Vec<JobChange>> {
        read!(self, name.to_string(), |tx, n| table::job_changes(tx, &n)
            .await)
    }

    async fn backfill(&self, p: Backfill) -> Result<BackfillReport> {
        write!(self, p, |tx, p| ops::backfill(tx, &p).await)
    }

    async fn start_external(&self, p: StartExternal) -> Result<StartOutcome> {
        write!(self, p, |tx, p| ops::start_external(tx, &p).await)
    }

    async fn flag_overdue(&self, actor: &str) -> Result<Vec<ExecutionRow>> {
        // A read first: most ticks find nothing, and then write nothing.
        if !read!(self, (), |tx, _u| table::any_overdue(tx).await)? {
            return Ok(vec![]);
        }
        write!(self, actor.to_string(), |tx, a| ops::flag_overdue(tx, &a)
            .await)
    }

    async fn retry_now(&self, p: RetryNow) -> Result<ExecutionRow> {
        write!(self, p, |tx, p| ops::retry_now(tx, &p).await)
    }

    async fn count_executions(
        &self,
        f: ExecutionFilter,
        cap: u64,
    ) -> Result<Vec<(jobward_core::State, u64)>> {
        read!(self, f, |tx, f| reads::count_executions(tx, &f, cap).await)
    }

    async fn queues(&self) -> Result<Vec<QueueRow>> {
        read!(self, (), |tx, _u| reads::queues(tx).await)
    }

    async fn slots(&self) -> Result<Vec<SlotUse>> {
        read!(self, (), |tx, _u| reads::slots(tx).await)
    }

    async fn reschedule(&self, p: Reschedule) -> Result<ExecutionRow> {
        write!(self, p, |tx, p| ops::reschedule(tx, &p).await)
    }

    async fn trigger_many(&self, items: Vec<TriggerParams>) -> Result<Vec<Result<Created>>> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        write!(self, items, |tx, p| ops::trigger_many(tx, &p).await)
    }

    async fn fire_due(&self, actor: &str) -> Result<FireReport> {
        // Most ticks have nothing due: they are answered by a read, without a write.
        let (next, now) = read!(self, (), |tx, _p| Ok((
            table::earliest_cursor(tx).await?,
            tx.now()
        )))?;
        if next.is_none_or(|n| n > now) {
            return Ok(FireReport {
                next_fire_at: next,
                ..Default::default()
            });
        }
        write!(self, actor.to_string(), |tx, a| ops::fire_due(tx, &a).await)
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<ExecutionRow>> {
        if p.limit == 0 {
            return Ok(vec![]);
        }
        write!(self, p, |tx, p| ops::claim(tx, &p).await)
    }

    async fn record_process(&self, lease: &LeaseRef, process: &ProcessInfo) -> Result<()> {
        let p = (lease.clone(), process.clone());
        write!(self, p, |tx, p| ops::record_process(tx, &p.0, &p.1).await)
    }

    async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatReport> {
        if let Some(bad) = p
            .leases
            .iter()
            .find_map(|b| b.progress.filter(|v| !(0.0..=1.0).contains(v)))
        {
            return Err(StoreError::Invalid(format!(
                "progress must be between 0 and 1, got {bad}"
            )));
        }
        write!(self, p, |tx, p| ops::heartbeat(tx, &p).await)
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<(ExecutionId, Reason)>> {
        read!(self, owner.to_string(), |tx, o| reads::cancel_requests(
            tx, &o
        )
        .await)
    }

    async fn complete(&self, p: CompleteParams) -> Result<Settled> {
        // The refusal (inner error) is returned only after its event was committed.
        write!(self, p, |tx, p| {
            let r = ops::complete(tx, &p).await;
            // The fault tests freeze a node here: inside the transaction, row lock held.
            fail::fail_point!("complete_before_commit");
            r
        })?
    }

    async fn complete_many(&self, items: Vec<CompleteParams>) -> Result<Vec<Result<Settled>>> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        write!(self, items, |tx, p| ops::complete_many(tx, &p).await)
    }

    async fn exchange(
        &self,
        completions: Vec<CompleteParams>,
        claim: ClaimParams,
    ) -> Result<(Vec<Result<Settled>>, Vec<ExecutionRow>)> {
        write!(self, (completions, claim), |tx, p| {
            let done = if p.0.is_empty() {
                Vec::new()
            } else {
                ops::complete_many(tx, &p.0).await?
            };
            let claimed = if p.1.limit == 0 {
                Vec::new()
            } else {
                ops::claim(tx, &p.1).await?
            };
            Ok((done, claimed))
        })
    }

    async fn report_progress(&self, p: ProgressParams) -> Result<ExecutionRow> {
        if let Some(v) = p.progress.filter(|v| !(0.0..=1.0).contains(v)) {
            return Err(StoreError::Invalid(format!(
                "progress must be between 0 and 1, got {v}"
            )));
        }
        write!(self, p, |tx, p| ops::report_progress(tx, &p).await)?
    }

    async fn release(&self, p: ReleaseParams) -> Result<ReleaseReport> {
        write!(self, p, |tx, p| ops::release(tx, &p).await)
    }

    async fn cancel(&self, p: CancelParams) -> Result<CancelOutcome> {
        write!(self, p, |tx, p| ops::cancel(tx, &p).await)
    }

    async fn reap(&self, p: ReapParams) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        let batch = p.batch.max(1);
        loop {
            let settled = write!(self, p.actor.clone(), |tx, a| ops::reap_batch(
                tx, &a, batch
            )
            .await)?;
            let n = settled.len();
            report.recovered.extend(settled);
            if n < batch as usize {
                return Ok(report);
            }
        }
    }

    async fn cleanup(&self, p: CleanupParams) -> Result<CleanupReport> {
        let candidates = read!(self, p.stale_after, |tx, d| reads::stale(tx, *d).await)?;
        let mut report = CleanupReport {
            dry_run: !p.apply,
            candidates,
            ..Default::default()
        };
        if !p.apply || report.candidates.is_empty() {
            return Ok(report);
        }
        let (changed, raced) = write!(self, (report.candidates.clone(), p), |tx, p| {
            ops::cleanup_apply(tx, &p.0, &p.1).await
        })?;
        report.changed = changed;
        report.raced = raced;
        Ok(report)
    }

    async fn prune(&self, p: PruneParams) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let batch = p.batch.max(1);
        for (name, history) in read!(self, (), |tx, _p| reads::histories(tx).await)? {
            loop {
                let deleted = write!(self, (name.clone(), history), |tx, p| {
                    ops::prune_job(tx, &p.0, &p.1, batch).await
                })?;
                if deleted.is_empty() {
                    break;
                }
                report
                    .deleted
                    .extend(deleted.into_iter().map(|id| (name.clone(), id)));
            }
        }
        Ok(report)
    }

    async fn list_executions(&self, f: ExecutionFilter) -> Result<Vec<ExecutionRow>> {
        read!(self, f, |tx, f| reads::list_executions(tx, &f).await)
    }

    async fn get_execution(&self, id: ExecutionId) -> Result<Option<ExecutionRow>> {
        read!(self, id, |tx, id| table::load(tx, *id).await)
    }

    async fn events(&self, id: ExecutionId) -> Result<Vec<EventRow>> {
        read!(self, id, |tx, id| reads::events(tx, *id).await)
    }

    async fn health(&self, p: HealthParams) -> Result<HealthMetrics> {
        read!(self, p, |tx, p| reads::health(tx, &p).await)
    }

    async fn metrics(&self) -> Result<MetricsSnapshot> {
        read!(self, (), |tx, _p| reads::metrics(tx).await)
    }

    async fn audit(&self, p: AuditParams) -> Result<Vec<Violation>> {
        read!(self, p, |tx, p| reads::audit(tx, &p).await)
    }
}
