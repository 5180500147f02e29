//! Store conformance suite: behaviour every backend must show. Each test takes a fresh,
//! empty store. A behaviour that differs by backend needs a written reason next to it.

use std::collections::BTreeMap;
use std::time::Duration;

use jobward_core::{
    History, JobSpec, Misfire, Overlap, Reason, RetryPolicy, Schedule, State, Timeouts,
};
use jobward_store::*;

/// Defines a conformance case: the function, and a test that runs it on a fresh store of the
/// backend of every test binary that includes this module (it provides `open_store`). Defining
/// a case is registering it: there is no list to forget to update.
macro_rules! case {
    ($(#[$meta:meta])* async fn $name:ident($store:ident: DynStore) $body:block) => {
        $(#[$meta])*
        pub async fn $name($store: DynStore) $body

        pub mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_this_backend() {
                let (_guard, store) = crate::open_store().await;
                super::$name(store).await;
            }
        }
    };
}

pub fn spec(name: &str) -> JobSpec {
    JobSpec {
        timeouts: Timeouts {
            heartbeat: Duration::from_secs(30),
            run: Duration::from_secs(3600),
            queue: Duration::from_secs(600),
            kill_grace: Duration::from_secs(5),
        },
        overlap: Overlap::Allow,
        history: History {
            keep_last: None,
            max_age: None,
        },
        retry: RetryPolicy {
            max_attempts: 1,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        },
        ..JobSpec::new(name, "true")
    }
}

pub async fn define(store: &DynStore, jobs: Vec<JobSpec>, limits: &[(&str, u32)]) {
    let limits: BTreeMap<String, u32> = limits.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    store.sync_jobs(SyncJobs { jobs, limits }).await.unwrap();
}

async fn trigger(store: &DynStore, job: &str) -> ExecutionRow {
    store
        .trigger(TriggerParams {
            job: job.into(),
            actor: "test".into(),
            payload: None,
            idempotency_key: None,
            run_at: None,
            priority: None,
        })
        .await
        .unwrap()
        .execution
}

async fn claim(store: &DynStore, owner: &str, limit: u32) -> Vec<ExecutionRow> {
    store
        .claim(ClaimParams {
            serves: Default::default(),
            owner: owner.into(),
            runner: "local".into(),
            node_id: None,
            limit,
        })
        .await
        .unwrap()
}

async fn complete_ok(store: &DynStore, row: &ExecutionRow) -> Result<Settled, StoreError> {
    store
        .complete(CompleteParams {
            lease: row.lease(),
            outcome: Outcome::success(0),
            actor: "test".into(),
        })
        .await
}

fn failure(code: i32) -> Outcome {
    Outcome {
        reason: Some(Reason::ExitCode),
        message: Some(format!("exited with code {code}")),
        exit_code: Some(code),
        signal: None,
    }
}

async fn reap(store: &DynStore) -> ReapReport {
    store
        .reap(ReapParams {
            actor: "reaper".into(),
            batch: 100,
        })
        .await
        .unwrap()
}

async fn get(store: &DynStore, id: ExecutionId) -> ExecutionRow {
    store.get_execution(id).await.unwrap().unwrap()
}

case! {
    async fn trigger_queues_with_a_deadline_and_an_event(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let e = trigger(&store, "a").await;
        assert_eq!(e.state, State::Queued);
        assert_eq!((e.number, e.attempt), (1, 1));
        assert!(e.start_deadline.is_some());
        assert_eq!(e.trigger, Trigger::Manual);
        let e2 = trigger(&store, "a").await;
        assert_eq!(e2.number, 2, "numbers are per job");
        let events = store.events(e.id).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].from, events[0].to), (None, Some(State::Queued)));
        assert!(matches!(
            store
                .trigger(TriggerParams {
                    job: "nope".into(),
                    actor: "t".into(),
                    payload: None,
                    idempotency_key: None,
                    run_at: None,
                    priority: None,
                })
                .await,
            Err(StoreError::JobNotFound(_))
        ));
    }
}

case! {
    async fn claim_takes_a_lease_once(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let e = trigger(&store, "a").await;
        let got = claim(&store, "node-1", 10).await;
        assert_eq!(got.len(), 1);
        let c = &got[0];
        assert_eq!(c.id, e.id);
        assert_eq!(c.state, State::Running);
        assert_eq!(c.lease_owner.as_deref(), Some("node-1"));
        assert!(c.lease_token.is_some() && c.lease_expires_at.is_some() && c.run_deadline.is_some());
        assert!(
            claim(&store, "node-2", 10).await.is_empty(),
            "a running execution is not claimed twice"
        );
    }
}

case! {
    async fn completion_is_compare_and_set_and_idempotent(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        let done = complete_ok(&store, &c).await.unwrap();
        assert_eq!(done.execution.state, State::Completed);
        assert!(done.execution.finished_at.is_some());
        assert!(!done.repeated);
        let again = complete_ok(&store, &c).await.unwrap();
        assert!(
            again.repeated,
            "the same completion twice is accepted once and answered the same way"
        );
        assert_eq!(again.execution, done.execution);
        // The same token with another outcome is a forged report.
        let forged = store
            .complete(CompleteParams {
                lease: c.lease(),
                outcome: failure(1),
                actor: "w".into(),
            })
            .await;
        assert!(
            matches!(
                forged,
                Err(StoreError::LeaseLost {
                    state: State::Completed,
                    ..
                })
            ),
            "{forged:?}"
        );
        assert_eq!(get(&store, c.id).await, done.execution);
        // A wrong token never completes anything.
        let mut wrong = c.lease();
        wrong.token = "not-the-token".into();
        let r = store
            .complete(CompleteParams {
                lease: wrong,
                outcome: Outcome::success(0),
                actor: "w".into(),
            })
            .await;
        assert!(matches!(r, Err(StoreError::LeaseLost { .. })));
    }
}

case! {
    async fn an_expired_lease_times_out_and_late_reports_are_refused(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        assert!(
            reap(&store).await.recovered.is_empty(),
            "nothing is due yet"
        );
        store.clock().advance(Duration::from_secs(31));
        let report = reap(&store).await;
        assert_eq!(report.recovered.len(), 1);
        assert_eq!(report.count(Reason::HeartbeatTimeout), 1);
        let r = &report.recovered[0];
        assert_eq!(
            (r.id, r.from, r.to),
            (c.id, State::Running, State::TimedOut)
        );
        let settled = get(&store, c.id).await;
        assert_eq!(settled.state, State::TimedOut);
        assert_eq!(settled.reason, Some(Reason::HeartbeatTimeout));
        assert!(
            settled
                .message
                .as_deref()
                .unwrap()
                .contains("no heartbeat from n")
        );

        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: vec![c.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        assert!(hb.renewed.is_empty());
        assert_eq!(hb.lost.len(), 1);
        assert_eq!(hb.lost[0].state, Some(State::TimedOut));
        let late = complete_ok(&store, &c).await;
        assert!(matches!(
            late,
            Err(StoreError::LeaseLost {
                state: State::TimedOut,
                reason: Some(Reason::HeartbeatTimeout),
                ..
            })
        ));
        assert_eq!(
            get(&store, c.id).await,
            settled,
            "the late reports changed nothing"
        );
        let refused: Vec<_> = store
            .events(c.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Refused)
            .collect();
        assert_eq!(
            refused.len(),
            2,
            "the late heartbeat and the late completion are both in the event log"
        );
        assert!(
            reap(&store).await.recovered.is_empty(),
            "a terminal row is never touched again"
        );
    }
}

case! {
    async fn heartbeats_renew_in_one_batch(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        for _ in 0..5 {
            trigger(&store, "a").await;
        }
        let claimed = claim(&store, "n", 5).await;
        assert_eq!(claimed.len(), 5);
        store.clock().advance(Duration::from_secs(20));
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: claimed.iter().map(|c| c.lease().into()).collect(),
                node: None,
            })
            .await
            .unwrap();
        assert_eq!(hb.renewed.len(), 5);
        assert!(hb.lost.is_empty());
        store.clock().advance(Duration::from_secs(20));
        assert!(
            reap(&store).await.recovered.is_empty(),
            "renewed leases are not expired"
        );
        // Another owner cannot renew them.
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "intruder".into(),
                leases: claimed.iter().map(|c| c.lease().into()).collect(),
                node: None,
            })
            .await
            .unwrap();
        assert!(hb.renewed.is_empty());
        assert_eq!(hb.lost.len(), 5);
    }
}

case! {
    async fn run_and_queue_deadlines_are_enforced(store: DynStore) {
        let mut s = spec("a");
        s.timeouts.heartbeat = Duration::from_secs(3600);
        s.timeouts.run = Duration::from_secs(10);
        s.timeouts.queue = Duration::from_secs(100);
        define(&store, vec![s], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        let waiting = trigger(&store, "a").await;
        store.clock().advance(Duration::from_secs(10 + 5 + 3));
        let report = reap(&store).await;
        assert_eq!(report.count(Reason::RunTimeout), 1);
        assert_eq!(get(&store, c.id).await.reason, Some(Reason::RunTimeout));
        assert_eq!(get(&store, waiting.id).await.state, State::Queued);
        store.clock().advance(Duration::from_secs(100));
        let report = reap(&store).await;
        assert_eq!(report.count(Reason::QueueTimeout), 1);
        let w = get(&store, waiting.id).await;
        assert_eq!(
            (w.state, w.reason),
            (State::TimedOut, Some(Reason::QueueTimeout))
        );
        assert!(w.started_at.is_none());
    }
}

case! {
    async fn retries_are_new_linked_attempts_with_backoff(store: DynStore) {
        let mut s = spec("a");
        s.retry = RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(15),
        };
        define(&store, vec![s], &[]).await;
        let first = trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        let settled = store
            .complete(CompleteParams {
                lease: c.lease(),
                outcome: failure(2),
                actor: "n".into(),
            })
            .await
            .unwrap();
        assert_eq!(settled.execution.state, State::Failed);
        assert_eq!(settled.execution.exit_code, Some(2));
        let retry = settled
            .retry
            .expect("attempt 1 of 3 failed: a retry is owed");
        assert_eq!(
            (retry.number, retry.attempt, retry.retry_of),
            (first.number, 2, Some(first.id))
        );
        assert_eq!(retry.trigger, Trigger::Retry);
        assert_eq!(retry.state, State::Queued);
        assert!(
            claim(&store, "n", 1).await.is_empty(),
            "the retry waits for its backoff"
        );
        store.clock().advance(Duration::from_secs(11));
        let c2 = claim(&store, "n", 1).await.remove(0);
        assert_eq!(c2.id, retry.id);
        // A heartbeat timeout is retried too; the delay doubles, capped at 15s.
        store.clock().advance(Duration::from_secs(31));
        let report = reap(&store).await;
        let third = get(
            &store,
            report.recovered[0]
                .retry
                .expect("retry after a heartbeat timeout"),
        )
        .await;
        assert_eq!(third.attempt, 3);
        assert_eq!((third.run_after - third.queued_at).num_seconds(), 15);
        store.clock().advance(Duration::from_secs(16));
        let c3 = claim(&store, "n", 1).await.remove(0);
        let last = store
            .complete(CompleteParams {
                lease: c3.lease(),
                outcome: failure(1),
                actor: "n".into(),
            })
            .await
            .unwrap();
        assert!(last.retry.is_none(), "no retry after the last attempt");
    }
}

case! {
    async fn cancel_of_queued_is_immediate_and_of_running_is_a_request(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let running = trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        assert_eq!(c.id, running.id);
        let queued = trigger(&store, "a").await;
        let cp = |id| CancelParams {
            id,
            reason: Reason::CancelRequested,
            message: "stop".into(),
            actor: "op".into(),
        };
        match store.cancel(cp(queued.id)).await.unwrap() {
            CancelOutcome::Cancelled { execution } => {
                assert_eq!(
                    (execution.state, execution.reason),
                    (State::Cancelled, Some(Reason::CancelRequested))
                )
            }
            other => panic!("{other:?}"),
        }
        match store.cancel(cp(c.id)).await.unwrap() {
            CancelOutcome::Requested { execution } => {
                assert_eq!(execution.state, State::Running);
                assert!(execution.cancel_deadline.is_some());
            }
            other => panic!("{other:?}"),
        }
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: vec![c.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        assert_eq!(hb.cancel_requested, vec![(c.id, Reason::CancelRequested)]);
        // The owner confirms by finishing with the cancel reason.
        let done = store
            .complete(CompleteParams {
                lease: c.lease(),
                outcome: Outcome {
                    reason: Some(Reason::CancelRequested),
                    message: Some("stopped".into()),
                    exit_code: None,
                    signal: Some(15),
                },
                actor: "n".into(),
            })
            .await
            .unwrap();
        assert_eq!(done.execution.state, State::Cancelled);
        assert!(matches!(
            store.cancel(cp(c.id)).await.unwrap(),
            CancelOutcome::AlreadyTerminal { .. }
        ));
        assert!(matches!(
            store.cancel(cp(999_999)).await,
            Err(StoreError::ExecutionNotFound(_))
        ));
    }
}

case! {
    async fn an_unconfirmed_cancel_is_settled_at_its_deadline(store: DynStore) {
        let mut s = spec("a");
        s.timeouts.heartbeat = Duration::from_secs(1000);
        define(&store, vec![s], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        store
            .cancel(CancelParams {
                id: c.id,
                reason: Reason::CancelRequested,
                message: "stop".into(),
                actor: "op".into(),
            })
            .await
            .unwrap();
        store.clock().advance(Duration::from_secs(500));
        store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: vec![c.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        store.clock().advance(Duration::from_secs(510));
        let report = reap(&store).await;
        assert_eq!(report.count(Reason::CancelRequested), 1, "{report:?}");
        assert_eq!(get(&store, c.id).await.state, State::Cancelled);
    }
}

case! {
    async fn overlap_policies(store: DynStore) {
        let mut skip = spec("skip");
        skip.overlap = Overlap::Skip;
        let mut queue = spec("queue");
        queue.overlap = Overlap::Queue;
        let mut replace = spec("replace");
        replace.overlap = Overlap::Replace;
        define(&store, vec![skip, queue, replace], &[]).await;

        let first = trigger(&store, "skip").await;
        let skipped = trigger(&store, "skip").await;
        assert_eq!(
            skipped.state,
            State::Skipped,
            "a live run blocks the next (overlap = skip)"
        );
        assert_eq!(skipped.reason, Some(Reason::Overlap));
        assert!(
            skipped.finished_at.is_some(),
            "skipped is terminal from birth"
        );
        let msg = skipped.message.unwrap();
        assert!(msg.contains(&format!("run #{}", first.number)), "{msg}");

        let q1 = trigger(&store, "queue").await;
        let q2 = trigger(&store, "queue").await;
        assert_eq!(q2.state, State::Queued);
        let got: Vec<i64> = claim(&store, "n", 10).await.iter().map(|c| c.id).collect();
        assert!(
            got.contains(&q1.id) && !got.contains(&q2.id),
            "overlap = queue runs one at a time: {got:?}"
        );
        let running_q1 = get(&store, q1.id).await;
        complete_ok(&store, &running_q1).await.unwrap();
        let got: Vec<i64> = claim(&store, "n", 10).await.iter().map(|c| c.id).collect();
        assert_eq!(got, vec![q2.id]);

        let r1 = trigger(&store, "replace").await;
        let r1 = claim(&store, "n", 10)
            .await
            .into_iter()
            .find(|c| c.id == r1.id)
            .unwrap();
        let r2 = store
            .trigger(TriggerParams {
                job: "replace".into(),
                actor: "t".into(),
                payload: None,
                idempotency_key: None,
                run_at: None,
                priority: None,
            })
            .await
            .unwrap();
        assert_eq!(r2.replaced, vec![r1.id]);
        let old = get(&store, r1.id).await;
        assert_eq!(old.cancel_reason, Some(Reason::Replaced));
        assert_eq!(r2.execution.state, State::Queued);
    }
}

case! {
    async fn concurrency_limit_counts_live_leases(store: DynStore) {
        let mut s = spec("a");
        s.concurrency_key = Some("reports".into());
        define(&store, vec![s], &[("reports", 2)]).await;
        for _ in 0..10 {
            trigger(&store, "a").await;
        }
        let first = claim(&store, "n", 10).await;
        assert_eq!(first.len(), 2, "the limit is 2");
        assert!(claim(&store, "n", 10).await.is_empty());
        complete_ok(&store, &first[0]).await.unwrap();
        assert_eq!(
            claim(&store, "n", 10).await.len(),
            1,
            "a slot is free the moment its execution is terminal"
        );
        // A reclaimed (expired) lease frees its slot in the same transaction that ends it.
        store.clock().advance(Duration::from_secs(31));
        let report = reap(&store).await;
        assert_eq!(report.count(Reason::HeartbeatTimeout), 2);
        assert_eq!(claim(&store, "n", 10).await.len(), 2);
        let h = store
            .health(HealthParams {
                long_running_after: Duration::from_secs(3600),
                stale_after: None,
            })
            .await
            .unwrap();
        assert_eq!(h.running_executions, 2);
    }
}

case! {
    /// 50 claimers at once, from as many tasks, never exceed the limit.
    async fn concurrency_limit_holds_under_concurrent_claims(store: DynStore) {
        let mut s = spec("a");
        s.concurrency_key = Some("k".into());
        define(&store, vec![s], &[("k", 3)]).await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let st = store.clone();
            tasks.push(tokio::spawn(async move {
                st.trigger(TriggerParams {
                    job: "a".into(),
                    actor: format!("t{i}"),
                    payload: None,
                    idempotency_key: None,
                    run_at: None,
                    priority: None,
                })
                .await
                .unwrap();
                st.claim(ClaimParams {
                    serves: Default::default(),
                    owner: format!("w{i}"),
                    runner: "local".into(),
                    node_id: None,
                    limit: 5,
                })
                .await
                .unwrap()
                .len()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 3);
        let running = store
            .list_executions(ExecutionFilter {
                states: vec![State::Running],
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(running.len(), 3);
        assert!(
            store
                .audit(AuditParams {
                    tolerance: Duration::from_secs(5)
                })
                .await
                .unwrap()
                .is_empty()
        );
    }
}

case! {
    async fn cron_instants_fire_once_and_downtime_is_one_record(store: DynStore) {
        let mut every = spec("every");
        every.schedule = Schedule::every(Duration::from_secs(10)).unwrap();
        every.misfire_grace = Duration::from_secs(5);
        let mut skipper = every.clone();
        skipper.name = "skipper".into();
        skipper.misfire = Misfire::Skip;
        define(&store, vec![every, skipper], &[]).await;
        let r = store.fire_due("sched").await.unwrap();
        assert!(
            r.fired.is_empty(),
            "a new schedule never fires past instants"
        );
        // Step to just past the first instant, so that it is on time.
        let first = store
            .get_job("every")
            .await
            .unwrap()
            .unwrap()
            .next_fire_at
            .unwrap();
        let gap = (first - store.now().await.unwrap())
            .to_std()
            .unwrap_or_default();
        store.clock().advance(gap + Duration::from_millis(100));
        let r1 = store.fire_due("sched").await.unwrap();
        assert_eq!(r1.fired.len(), 2, "{r1:?}");
        let r2 = store.fire_due("sched").await.unwrap();
        assert!(
            r2.fired.is_empty() && r2.skipped.is_empty(),
            "an instant fires at most once"
        );
        // Downtime of ~10 instants.
        store.clock().advance(Duration::from_secs(100));
        let r3 = store.fire_due("sched").await.unwrap();
        assert_eq!(
            r3.caught_up.len(),
            1,
            "one catch-up run, not a storm: {r3:?}"
        );
        assert_eq!(
            r3.skipped.len(),
            1,
            "one skip record for the skipper: {r3:?}"
        );
        let catch_up = get(&store, r3.caught_up[0]).await;
        assert_eq!(catch_up.trigger, Trigger::CatchUp);
        let skip = get(&store, r3.skipped[0]).await;
        assert_eq!(skip.reason, Some(Reason::MissedSchedule));
        let msg = skip.message.unwrap();
        // The latest of the 10 instants is 0.1s old, so it is on time: it fires, and the other 9
        // are the missed ones.
        assert!(msg.contains("missed 9 instants between"), "{msg}");
        assert_eq!(r3.fired.len(), 1, "{r3:?}");
        let all = store
            .list_executions(ExecutionFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 5);
    }
}

case! {
    async fn cleanup_dry_run_changes_nothing_and_apply_settles(store: DynStore) {
        let mut s = spec("a");
        s.timeouts.heartbeat = Duration::from_secs(100_000);
        define(&store, vec![s], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        trigger(&store, "a").await;
        let fresh = claim(&store, "n", 1).await.remove(0);
        store.clock().advance(Duration::from_secs(7200));
        store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: vec![fresh.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        let before = get(&store, c.id).await;
        let dry = store
            .cleanup(CleanupParams {
                stale_after: Duration::from_secs(3600),
                apply: false,
                actor: "op".into(),
                process_notes: None,
            })
            .await
            .unwrap();
        assert!(dry.dry_run);
        assert_eq!(
            dry.candidates.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![c.id]
        );
        assert!(dry.changed.is_empty());
        assert_eq!(get(&store, c.id).await, before, "a dry run changes nothing");
        assert_eq!(store.events(c.id).await.unwrap().len(), 2);
        let applied = store
            .cleanup(CleanupParams {
                stale_after: Duration::from_secs(3600),
                apply: true,
                actor: "op".into(),
                process_notes: None,
            })
            .await
            .unwrap();
        assert_eq!(applied.changed.len(), 1);
        let after = get(&store, c.id).await;
        assert_eq!(
            (after.state, after.reason),
            (State::TimedOut, Some(Reason::ManualCleanup))
        );
        assert_eq!(get(&store, fresh.id).await.state, State::Running);
        assert!(matches!(
            complete_ok(&store, &c).await,
            Err(StoreError::LeaseLost { .. })
        ));
    }
}

case! {
    async fn prune_keeps_the_newest_terminal_history(store: DynStore) {
        let mut s = spec("a");
        s.history = History {
            keep_last: Some(3),
            max_age: None,
        };
        define(&store, vec![s], &[]).await;
        for _ in 0..6 {
            trigger(&store, "a").await;
            let c = claim(&store, "n", 1).await.remove(0);
            complete_ok(&store, &c).await.unwrap();
        }
        let live = trigger(&store, "a").await;
        let report = store.prune(PruneParams { batch: 2 }).await.unwrap();
        assert_eq!(report.deleted.len(), 3);
        let left = store
            .list_executions(ExecutionFilter {
                job: Some("a".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            left.iter().map(|e| e.number).collect::<Vec<_>>(),
            vec![7, 6, 5, 4]
        );
        assert_eq!(left[0].id, live.id, "live executions are never pruned");
        assert!(
            store.events(report.deleted[0].1).await.unwrap().is_empty(),
            "events go with their execution"
        );
        let mut aged = spec("a");
        aged.history = History {
            keep_last: None,
            max_age: Some(Duration::from_secs(60)),
        };
        define(&store, vec![aged], &[]).await;
        store.clock().advance(Duration::from_secs(61));
        assert_eq!(
            store
                .prune(PruneParams { batch: 100 })
                .await
                .unwrap()
                .deleted
                .len(),
            3
        );
    }
}

case! {
    async fn node_restart_settles_the_previous_incarnation(store: DynStore) {
        let node = |id: &str| NewNode {
            id: id.into(),
            name: "host-a".into(),
            hostname: "host-a".into(),
            pid: 1,
            start_ticks: None,
            boot_id: None,
            lease: Duration::from_secs(30),
            supersede: vec![],
        };
        define(&store, vec![spec("a")], &[]).await;
        assert_eq!(
            store.register_node(node("inc-1")).await.unwrap(),
            RegisterOutcome::Registered
        );
        trigger(&store, "a").await;
        let c = store
            .claim(ClaimParams {
                serves: Default::default(),
                owner: "inc-1".into(),
                runner: "local".into(),
                node_id: Some("inc-1".into()),
                limit: 1,
            })
            .await
            .unwrap()
            .remove(0);
        assert!(matches!(
            store.register_node(node("inc-2")).await.unwrap(),
            RegisterOutcome::NameInUse { .. }
        ));
        store.clock().advance(Duration::from_secs(31));
        assert_eq!(
            store.register_node(node("inc-2")).await.unwrap(),
            RegisterOutcome::Registered
        );
        let orphans = store.orphans_of("host-a", "inc-2").await.unwrap();
        assert_eq!(orphans.iter().map(|o| o.id).collect::<Vec<_>>(), vec![c.id]);
        let report = store
            .settle_orphans(
                RecoverParams {
                    name: "host-a".into(),
                    node_id: "inc-2".into(),
                    actor: "inc-2".into(),
                },
                orphans
                    .iter()
                    .map(|o| (o.lease(), "node restarted".to_string()))
                    .collect(),
            )
            .await
            .unwrap();
        assert_eq!(report.count(Reason::NodeRestarted), 1);
        let e = get(&store, c.id).await;
        assert_eq!(
            (e.state, e.reason),
            (State::Failed, Some(Reason::NodeRestarted))
        );
        assert!(e.finished_at.is_some());
        let nodes = store.list_nodes().await.unwrap();
        assert!(
            nodes
                .iter()
                .find(|n| n.id == "inc-1")
                .unwrap()
                .stopped_at
                .is_some()
        );
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "inc-1".into(),
                leases: vec![c.lease().into()],
                node: Some(("inc-1".into(), Duration::from_secs(30))),
            })
            .await
            .unwrap();
        assert!(!hb.node_ok, "a superseded incarnation learns it must stop");
    }
}

case! {
    async fn job_status_is_derived_from_executions(store: DynStore) {
        define(&store, vec![spec("a"), spec("b")], &[]).await;
        let job = store.get_job("a").await.unwrap().unwrap();
        assert_eq!(job.status(), "never run");
        trigger(&store, "a").await;
        assert_eq!(
            store.get_job("a").await.unwrap().unwrap().status(),
            "queued"
        );
        let c = claim(&store, "n", 1).await.remove(0);
        assert_eq!(
            store.get_job("a").await.unwrap().unwrap().status(),
            "running"
        );
        store
            .complete(CompleteParams {
                lease: c.lease(),
                outcome: failure(3),
                actor: "n".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            store.get_job("a").await.unwrap().unwrap().status(),
            "failed"
        );
        // A job that leaves the configuration keeps its history.
        let report = store
            .sync_jobs(SyncJobs {
                jobs: vec![spec("b")],
                limits: BTreeMap::new(),
            })
            .await
            .unwrap();
        assert_eq!(report.removed, vec!["a".to_string()]);
        let a = store.get_job("a").await.unwrap().unwrap();
        assert!(!a.defined);
        assert!(matches!(
            store
                .trigger(TriggerParams {
                    job: "a".into(),
                    actor: "t".into(),
                    payload: None,
                    idempotency_key: None,
                    run_at: None,
                    priority: None,
                })
                .await,
            Err(StoreError::JobUndefined(_))
        ));
    }
}

case! {
    async fn paused_jobs_record_skips_and_are_not_claimed(store: DynStore) {
        let mut s = spec("a");
        s.schedule = Schedule::every(Duration::from_secs(10)).unwrap();
        define(&store, vec![s], &[]).await;
        let queued = trigger(&store, "a").await;
        store.set_paused("a", true, "test").await.unwrap();
        assert!(claim(&store, "n", 5).await.is_empty());
        store.clock().advance(Duration::from_secs(10));
        let r = store.fire_due("s").await.unwrap();
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(get(&store, r.skipped[0]).await.reason, Some(Reason::Paused));
        store.set_paused("a", false, "test").await.unwrap();
        assert_eq!(claim(&store, "n", 5).await[0].id, queued.id);
    }
}

case! {
    async fn listing_filters_and_pages(store: DynStore) {
        define(&store, vec![spec("a"), spec("b")], &[]).await;
        for _ in 0..5 {
            trigger(&store, "a").await;
            trigger(&store, "b").await;
        }
        claim(&store, "n", 3).await;
        let page1 = store
            .list_executions(ExecutionFilter {
                job: Some("a".into()),
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page1.len(), 3);
        assert!(page1.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let page2 = store
            .list_executions(ExecutionFilter {
                job: Some("a".into()),
                limit: 3,
                before_id: Some(page1[2].id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page2.len(), 2);
        let running = store
            .list_executions(ExecutionFilter {
                states: vec![State::Running],
                limit: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(running.len(), 3);
        store.clock().advance(Duration::from_secs(600));
        let stale = store
            .list_executions(ExecutionFilter {
                stale_after: Some(Duration::from_secs(300)),
                limit: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stale.len(), 3);
    }
}

case! {
    async fn health_counts_what_the_ledger_holds(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        for _ in 0..4 {
            trigger(&store, "a").await;
        }
        claim(&store, "n", 2).await;
        store.clock().advance(Duration::from_secs(31));
        let h = store
            .health(HealthParams {
                long_running_after: Duration::from_secs(30),
                stale_after: None,
            })
            .await
            .unwrap();
        assert_eq!(h.running_executions, 2);
        assert_eq!(h.queued_executions, 2);
        assert_eq!(h.long_running_executions, 2);
        assert_eq!(h.stale_executions, 2);
        assert_eq!(h.recent_executions_24h, 4);
        reap(&store).await;
        let h = store
            .health(HealthParams {
                long_running_after: Duration::from_secs(30),
                stale_after: None,
            })
            .await
            .unwrap();
        assert_eq!((h.running_executions, h.stale_executions), (0, 0));
    }
}

case! {
    async fn audit_of_a_healthy_ledger_is_clean_and_flags_overdue_rows(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        claim(&store, "n", 1).await;
        let audit = |s: DynStore| async move {
            s.audit(AuditParams {
                tolerance: Duration::from_secs(5),
            })
            .await
            .unwrap()
        };
        assert!(audit(store.clone()).await.is_empty());
        // With no reaper running, a lease 60s past expiry is a breach of invariant 2.
        store.clock().advance(Duration::from_secs(90));
        let v = audit(store.clone()).await;
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, 2);
        reap(&store).await;
        assert!(audit(store.clone()).await.is_empty());
    }
}

case! {
    async fn idempotency_keys_return_the_first_execution(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let t = |key: Option<&str>| TriggerParams {
            job: "a".into(),
            actor: "api".into(),
            payload: Some(serde_json::json!({"n": 1})),
            idempotency_key: key.map(str::to_string),
            run_at: None,
            priority: None,
        };
        let first = store.trigger(t(Some("k1"))).await.unwrap();
        assert!(!first.existing);
        let again = store.trigger(t(Some("k1"))).await.unwrap();
        assert!(again.existing, "the same key returns the same execution");
        assert_eq!(again.execution.id, first.execution.id);
        let other = store.trigger(t(Some("k2"))).await.unwrap();
        assert_ne!(other.execution.id, first.execution.id);
        assert_eq!(other.execution.payload, Some(serde_json::json!({"n": 1})));
        assert_eq!(
            store
                .list_executions(ExecutionFilter {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len(),
            2
        );
    }
}

case! {
    async fn queued_work_goes_to_its_runner_only(store: DynStore) {
        let mut remote = spec("remote");
        remote.queue = Some("gpu".into());
        define(&store, vec![remote, spec("local")], &[]).await;
        let r = trigger(&store, "remote").await;
        let l = trigger(&store, "local").await;
        let got = claim(&store, "node", 10).await;
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), vec![l.id]);
        let got = store
            .claim(ClaimParams {
                serves: Default::default(),
                owner: "w1".into(),
                runner: "gpu".into(),
                node_id: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), vec![r.id]);
        assert_eq!(got[0].runner, "gpu");
    }
}

case! {
    async fn a_worker_is_offered_only_the_jobs_it_can_run(store: DynStore) {
        let mut cmd = spec("cmd");
        cmd.queue = Some("q".into());
        let mut report = spec("send-report");
        report.queue = Some("q".into());
        report.command = String::new();
        let mut other = spec("other-handler");
        other.queue = Some("q".into());
        other.command = String::new();
        define(&store, vec![cmd, report, other], &[]).await;
        // Older work first: the handler jobs no one here serves must not crowd out the rest.
        let o = trigger(&store, "other-handler").await;
        let r = trigger(&store, "send-report").await;
        let c = trigger(&store, "cmd").await;
        let claim_as = |owner: &'static str, serves: Serves| {
            let store = store.clone();
            async move {
                store
                    .claim(ClaimParams {
                        serves,
                        owner: owner.into(),
                        runner: "q".into(),
                        node_id: None,
                        limit: 1,
                    })
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>()
            }
        };
        let handlers = |h: &[&str]| h.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            claim_as("py", Serves::Only { commands: false, handlers: handlers(&["send-report"]) }).await,
            vec![r.id]
        );
        assert_eq!(
            claim_as("rs", Serves::Only { commands: true, handlers: vec![] }).await,
            vec![c.id]
        );
        assert_eq!(
            claim_as("none", Serves::Only { commands: false, handlers: vec![] }).await,
            Vec::<i64>::new()
        );
        assert_eq!(claim_as("any", Serves::All).await, vec![o.id]);
        // Who claimed, and what they run, is remembered for the job page.
        let serves = Serves::Only { commands: false, handlers: handlers(&["send-report"]) };
        store.worker_seen("py", &["q".into()], &serves).await.unwrap();
        store.worker_seen("rs", &["q".into(), "r".into()], &Serves::All).await.unwrap();
        store.worker_seen("py", &["q".into()], &serves).await.unwrap();
        let since = store.now().await.unwrap() - chrono::Duration::minutes(1);
        let seen = store.workers(since).await.unwrap();
        let mut ids: Vec<&str> = seen.iter().map(|w| w.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, vec!["py", "rs"]);
        let py = seen.iter().find(|w| w.id == "py").unwrap();
        assert_eq!(py.serves, serves);
        assert!(py.serves.runs("send-report", "") && !py.serves.runs("other-handler", ""));
        assert!(!py.serves.runs("cmd", "true"));
        let rs = seen.iter().find(|w| w.id == "rs").unwrap();
        assert_eq!(rs.queues, vec!["q".to_string(), "r".to_string()]);
        let later = store.now().await.unwrap() + chrono::Duration::minutes(1);
        assert!(store.workers(later).await.unwrap().is_empty());
    }
}

case! {
    async fn heartbeats_carry_progress_phase_and_checkpoint(store: DynStore) {
        let mut s = spec("a");
        s.retry.max_attempts = 2;
        define(&store, vec![s], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "w", 1).await.remove(0);
        let beat = |progress: Option<f64>, phase: Option<&str>| HeartbeatParams {
            owner: "w".into(),
            leases: vec![LeaseBeat {
                lease: c.lease(),
                progress,
                phase: phase.map(str::to_string),
                checkpoint: Some(serde_json::json!({"page": 7})),
            }],
            node: None,
        };
        assert_eq!(
            store
                .heartbeat(beat(Some(0.4), Some("download")))
                .await
                .unwrap()
                .renewed,
            vec![c.id]
        );
        store
            .heartbeat(beat(Some(0.5), Some("download")))
            .await
            .unwrap();
        store.heartbeat(beat(None, Some("parse"))).await.unwrap();
        let e = get(&store, c.id).await;
        assert_eq!((e.progress, e.phase.as_deref()), (Some(0.5), Some("parse")));
        assert_eq!(e.checkpoint, Some(serde_json::json!({"page": 7})));
        let phases: Vec<String> = store
            .events(c.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("phase"))
            .map(|e| e.message)
            .collect();
        assert_eq!(
            phases,
            vec!["phase: download", "phase: parse"],
            "a phase is noted when it changes"
        );
        assert!(matches!(
            store.heartbeat(beat(Some(1.5), None)).await,
            Err(StoreError::Invalid(_))
        ));
        // In-job progress with the lease token; a stale token is refused.
        let row = store
            .report_progress(ProgressParams {
                lease: c.lease(),
                progress: Some(0.9),
                phase: None,
                checkpoint: None,
                actor: "job".into(),
            })
            .await
            .unwrap();
        assert_eq!(row.progress, Some(0.9));
        let mut stale = c.lease();
        stale.token = "stale".into();
        let r = store
            .report_progress(ProgressParams {
                lease: stale,
                progress: Some(1.0),
                phase: None,
                checkpoint: None,
                actor: "job".into(),
            })
            .await;
        assert!(matches!(r, Err(StoreError::LeaseLost { .. })), "{r:?}");
        // A retry starts from the last checkpoint.
        let s = store
            .complete(CompleteParams {
                lease: c.lease(),
                outcome: failure(1),
                actor: "w".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            s.retry.unwrap().checkpoint,
            Some(serde_json::json!({"page": 7}))
        );
    }
}

case! {
    async fn a_handed_back_execution_runs_again_at_once(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "w1", 1).await.remove(0);
        let mut stale = c.lease();
        stale.token = "not-mine".into();
        let report = store
            .release(ReleaseParams {
                owner: "w1".into(),
                leases: vec![c.lease(), stale],
                message: "worker w1 shutting down".into(),
                actor: "w1".into(),
            })
            .await
            .unwrap();
        assert_eq!(report.released.len(), 1);
        assert_eq!(
            report.lost.len(),
            1,
            "a lease that is not the caller's is not released"
        );
        let old = &report.released[0].execution;
        assert_eq!(
            (old.state, old.reason),
            (State::Cancelled, Some(Reason::HandedBack))
        );
        let next = report.released[0].retry.clone().expect("queued again");
        assert_eq!(
            (next.attempt, next.max_attempts, next.retry_of),
            (2, 2, Some(c.id)),
            "a hand-back does not consume the retry budget"
        );
        let again = claim(&store, "w2", 1).await;
        assert_eq!(
            again[0].id, next.id,
            "it can be claimed at once, without waiting for a lease to expire"
        );
    }
}

case! {
    async fn metrics_count_states_and_slots(store: DynStore) {
        let mut s = spec("a");
        s.concurrency_key = Some("k".into());
        define(&store, vec![s], &[("k", 3)]).await;
        for _ in 0..4 {
            trigger(&store, "a").await;
        }
        claim(&store, "n", 2).await;
        let m = store.metrics().await.unwrap();
        let count = |st: State| m.by_state.iter().find(|(s, _)| *s == st).unwrap().1;
        assert_eq!(
            (
                count(State::Running),
                count(State::Queued),
                count(State::Completed)
            ),
            (2, 2, 0)
        );
        assert_eq!(
            m.slots,
            vec![SlotUse {
                key: "k".into(),
                used: 2,
                limit: 3
            }]
        );
        assert!(m.oldest_heartbeat_at.is_some());
    }
}

case! {
    /// A node whose lease expired has its local executions settled by another (node_lost);
    /// remote workers' leases are left alone.
    async fn a_lost_node_is_settled_by_another(store: DynStore) {
        let mut remote = spec("remote");
        remote.queue = Some("q".into());
        let mut local = spec("local");
        local.retry.max_attempts = 2;
        define(&store, vec![local, remote], &[]).await;
        let node = |id: &str, name: &str| NewNode {
            id: id.into(),
            name: name.into(),
            hostname: "h".into(),
            pid: 1,
            start_ticks: None,
            boot_id: None,
            lease: Duration::from_secs(10),
            supersede: vec![],
        };
        store.register_node(node("n1", "one")).await.unwrap();
        store.register_node(node("n2", "two")).await.unwrap();
        store
            .trigger(TriggerParams {
                job: "local".into(),
                actor: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        store
            .trigger(TriggerParams {
                job: "remote".into(),
                actor: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let l = store
            .claim(ClaimParams {
                serves: Default::default(),
                owner: "n1".into(),
                runner: "local".into(),
                node_id: Some("n1".into()),
                limit: 1,
            })
            .await
            .unwrap()
            .remove(0);
        let r = store
            .claim(ClaimParams {
                serves: Default::default(),
                owner: "w".into(),
                runner: "q".into(),
                node_id: None,
                limit: 1,
            })
            .await
            .unwrap()
            .remove(0);
        assert!(
            store
                .settle_lost_nodes("n2", Some("n2"))
                .await
                .unwrap()
                .recovered
                .is_empty(),
            "nobody is lost yet"
        );
        // The worker and n2 keep heartbeating for 12 s; n1 is silent.
        for _ in 0..6 {
            store
                .heartbeat(HeartbeatParams {
                    owner: "w".into(),
                    leases: vec![r.lease().into()],
                    node: None,
                })
                .await
                .unwrap();
            store
                .heartbeat(HeartbeatParams {
                    owner: "n2".into(),
                    leases: vec![],
                    node: Some(("n2".into(), Duration::from_secs(10))),
                })
                .await
                .unwrap();
            store.clock().advance(Duration::from_secs(2));
        }
        store
            .heartbeat(HeartbeatParams {
                owner: "n2".into(),
                leases: vec![],
                node: Some(("n2".into(), Duration::from_secs(10))),
            })
            .await
            .unwrap();
        let report = store.settle_lost_nodes("reaper@n2", Some("n2")).await.unwrap();
        assert_eq!(
            report.count(jobward_core::Reason::NodeLost),
            1,
            "{report:?}"
        );
        let e = store.get_execution(l.id).await.unwrap().unwrap();
        assert_eq!(
            (e.state, e.reason),
            (State::Failed, Some(jobward_core::Reason::NodeLost))
        );
        assert!(report.recovered[0].retry.is_some(), "retried per policy");
        assert_eq!(
            store.get_execution(r.id).await.unwrap().unwrap().state,
            State::Running,
            "a worker's lease is not the node's"
        );
        let nodes = store.list_nodes().await.unwrap();
        assert!(
            nodes
                .iter()
                .find(|n| n.id == "n1")
                .unwrap()
                .stopped_at
                .is_some()
        );
        assert!(
            nodes
                .iter()
                .find(|n| n.id == "n2")
                .unwrap()
                .stopped_at
                .is_none()
        );
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "n1".into(),
                leases: vec![l.lease().into()],
                node: Some(("n1".into(), Duration::from_secs(10))),
            })
            .await
            .unwrap();
        assert!(
            !hb.node_ok && hb.lost.len() == 1,
            "a lost node that comes back learns it was replaced"
        );
    }
}

fn new_node(id: &str, name: &str, lease: Duration) -> NewNode {
    NewNode {
        id: id.into(),
        name: name.into(),
        hostname: "h".into(),
        pid: 1,
        start_ticks: None,
        boot_id: None,
        lease,
        supersede: vec![],
    }
}

async fn node_beat(store: &DynStore, id: &str, lease: Duration) -> HeartbeatReport {
    store
        .heartbeat(HeartbeatParams {
            owner: id.into(),
            leases: vec![],
            node: Some((id.into(), lease)),
        })
        .await
        .unwrap()
}

case! {
    /// Invariant 12: a heartbeat that races its owner's own completion (or hand-back) is not a
    /// refusal: nothing is refused, nothing is reported lost, and no event is written.
    async fn a_heartbeat_racing_its_own_completion_is_not_a_refusal(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        trigger(&store, "a").await;
        let mut claimed = claim(&store, "n", 2).await;
        let (c, h) = (claimed.remove(0), claimed.remove(0));
        store
            .complete(CompleteParams {
                lease: c.lease(),
                outcome: Outcome::success(0),
                actor: "n".into(),
            })
            .await
            .unwrap();
        store
            .release(ReleaseParams {
                owner: "n".into(),
                leases: vec![h.lease()],
                message: "shutting down".into(),
                actor: "n".into(),
            })
            .await
            .unwrap();
        assert_eq!(get(&store, c.id).await.ended_by.as_deref(), Some("n"));
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: vec![c.lease().into(), h.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        assert!(hb.renewed.is_empty());
        assert!(
            hb.lost.is_empty(),
            "the owner ended them itself; its racing heartbeat lost nothing: {hb:?}"
        );
        for id in [c.id, h.id] {
            let refused = store
                .events(id)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == EventKind::Refused)
                .count();
            assert_eq!(refused, 0, "no refused event for execution {id}");
        }
        // The same heartbeat from someone else, or after a reaper settled the lease, is refused.
        trigger(&store, "a").await;
        let r = claim(&store, "n", 1).await.remove(0);
        store.clock().advance(Duration::from_secs(31));
        assert_eq!(reap(&store).await.count(Reason::HeartbeatTimeout), 1);
        assert_eq!(get(&store, r.id).await.ended_by.as_deref(), Some("reaper"));
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "n".into(),
                leases: vec![r.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        assert_eq!(hb.lost.len(), 1, "lost to the reaper: a refusal");
    }
}

case! {
    /// Invariant 12: an outage of the ledger (no node could write for longer than a node lease)
    /// expires no lease and loses no node; leases count again from the moment it is back. A node
    /// that stays silent while others heartbeat is still lost after its lease.
    async fn an_outage_of_the_ledger_expires_no_lease_and_loses_no_node(store: DynStore) {
        let mut remote = spec("remote");
        remote.queue = Some("q".into());
        define(&store, vec![remote], &[]).await;
        let lease = Duration::from_secs(10);
        store
            .register_node(new_node("n1", "one", lease))
            .await
            .unwrap();
        store
            .register_node(new_node("n2", "two", lease))
            .await
            .unwrap();
        node_beat(&store, "n1", lease).await;
        node_beat(&store, "n2", lease).await;
        store
            .trigger(TriggerParams {
                job: "remote".into(),
                actor: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let w = store
            .claim(ClaimParams {
                serves: Default::default(),
                owner: "w".into(),
                runner: "q".into(),
                node_id: None,
                limit: 1,
            })
            .await
            .unwrap()
            .remove(0);
        // Nobody can write for a minute: the worker's 30 s lease and both node leases run out.
        store.clock().advance(Duration::from_secs(60));
        // The ledger is back; n1 is the first to reach it.
        node_beat(&store, "n1", lease).await;
        assert!(
            reap(&store).await.recovered.is_empty(),
            "a lease that expired during the outage is not reaped at once"
        );
        assert!(
            store
                .settle_lost_nodes("n1", Some("n1"))
                .await
                .unwrap()
                .recovered
                .is_empty()
                && store
                    .list_nodes()
                    .await
                    .unwrap()
                    .iter()
                    .all(|n| n.stopped_at.is_none()),
            "n2 could not heartbeat either: it is not lost"
        );
        store.clock().advance(Duration::from_secs(2));
        let hb = store
            .heartbeat(HeartbeatParams {
                owner: "w".into(),
                leases: vec![w.lease().into()],
                node: None,
            })
            .await
            .unwrap();
        assert_eq!(hb.renewed, vec![w.id], "the worker keeps its execution");
        assert!(
            node_beat(&store, "n2", lease).await.node_ok,
            "n2 keeps its place"
        );

        // Without an outage, a silent node is lost after its lease: n1 beats, n2 does not.
        for _ in 0..6 {
            store.clock().advance(Duration::from_secs(2));
            node_beat(&store, "n1", lease).await;
            store
                .heartbeat(HeartbeatParams {
                    owner: "w".into(),
                    leases: vec![w.lease().into()],
                    node: None,
                })
                .await
                .unwrap();
        }
        store.settle_lost_nodes("n1", Some("n1")).await.unwrap();
        let nodes = store.list_nodes().await.unwrap();
        let n2 = nodes.iter().find(|n| n.id == "n2").unwrap();
        assert!(
            n2.stopped_at.is_some(),
            "a node silent while others beat is lost"
        );
        assert!(!node_beat(&store, "n2", lease).await.node_ok);
    }
}

case! {
    /// A process is recorded only under the lease that started it.
    async fn recording_a_process_needs_the_current_lease(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        let c = claim(&store, "n", 1).await.remove(0);
        let p = ProcessInfo {
            pid: 4242,
            pgid: 4242,
            start_ticks: 7,
            boot_id: Some("boot".into()),
        };
        store.record_process(&c.lease(), &p).await.unwrap();
        assert_eq!(get(&store, c.id).await.process, Some(p.clone()));
        let forged = LeaseRef {
            token: "not-the-token".into(),
            ..c.lease()
        };
        let err = store
            .record_process(
                &forged,
                &ProcessInfo {
                    pid: 1,
                    ..p.clone()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { state: State::Running, .. }), "{err}");
        assert_eq!(get(&store, c.id).await.process, Some(p), "nothing changed");
        complete_ok(&store, &c).await.unwrap();
        assert!(matches!(
            store.record_process(&c.lease(), &ProcessInfo { pid: 2, pgid: 2, start_ticks: 1, boot_id: None }).await,
            Err(StoreError::LeaseLost { state: State::Completed, .. })
        ));
    }
}

case! {
    /// An owner learns of the cancels requested for its own running executions only.
    async fn cancel_requests_are_told_to_their_owner_only(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        trigger(&store, "a").await;
        trigger(&store, "a").await;
        let mine = claim(&store, "n1", 1).await.remove(0);
        let theirs = claim(&store, "n2", 1).await.remove(0);
        assert!(store.cancel_requests("n1").await.unwrap().is_empty());
        for id in [mine.id, theirs.id] {
            store
                .cancel(CancelParams {
                    id,
                    reason: Reason::CancelRequested,
                    message: "stop".into(),
                    actor: "op".into(),
                })
                .await
                .unwrap();
        }
        assert_eq!(
            store.cancel_requests("n1").await.unwrap(),
            vec![(mine.id, Reason::CancelRequested)]
        );
        assert_eq!(
            store.cancel_requests("n2").await.unwrap(),
            vec![(theirs.id, Reason::CancelRequested)]
        );
        assert!(store.cancel_requests("n3").await.unwrap().is_empty());
    }
}

case! {
    /// A stopped incarnation stays stopped: its heartbeats say it is no longer the node.
    async fn a_stopped_node_is_told_so_by_its_heartbeat(store: DynStore) {
        let lease = Duration::from_secs(10);
        store.register_node(new_node("n1", "one", lease)).await.unwrap();
        assert!(node_beat(&store, "n1", lease).await.node_ok);
        store.stop_node("n1", "graceful shutdown").await.unwrap();
        let nodes = store.list_nodes().await.unwrap();
        assert_eq!(nodes[0].stop_reason.as_deref(), Some("graceful shutdown"));
        assert!(nodes[0].stopped_at.is_some());
        assert!(!node_beat(&store, "n1", lease).await.node_ok);
        // Stopping again changes nothing.
        store.stop_node("n1", "again").await.unwrap();
        let nodes = store.list_nodes().await.unwrap();
        assert_eq!(nodes[0].stop_reason.as_deref(), Some("graceful shutdown"));
    }
}

/// A small deterministic generator (xorshift): every run of a property case is reproducible
/// from the seed its failure prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the model does at a step.
#[derive(Debug, Clone, Copy)]
enum Step {
    Claim,
    Heartbeat,
    StaleHeartbeat,
    Complete,
    Finish(Reason),
    Cancel,
    Advance(u64),
    Reap,
    Cleanup,
}

case! {
    /// Invariants 1, 2 and 4 against the reference model: random sequences of events are
    /// replayed through `core::Execution::apply` and through the store, and after every step
    /// both agree on state, reason and every deadline.
    async fn random_event_sequences_match_the_reference_model(store: DynStore) {
        use jobward_core::execution::{Execution, Reporter};
        use jobward_core::{Deadline, Event};
        let owner_reasons = [
            Reason::ExitCode,
            Reason::Signal,
            Reason::WorkerError,
            Reason::RunTimeout,
        ];
        let mut jobs = Vec::new();
        for n in 0..40 {
            // One queue per sequence, so that a claim only ever sees that sequence's execution.
            let mut j = spec(&format!("m{n}"));
            j.queue = Some(format!("q{n}"));
            jobs.push(j);
        }
        define(&store, jobs, &[]).await;
        let seed = store.clock().now().timestamp_millis() as u64 | 1;
        let mut rng = Rng(seed);
        for n in 0..40 {
            let job = format!("m{n}");
            let created = trigger(&store, &job).await;
            let mut model = Execution::queued(
                1,
                created.queued_at,
                created.run_after,
                created.timeouts,
            );
            let mut token: Option<String> = None;
            let mut trail = Vec::new();
            for _ in 0..12 {
                let step = match rng.below(10) {
                    0 => Step::Claim,
                    1 => Step::Heartbeat,
                    2 => Step::StaleHeartbeat,
                    3 => Step::Complete,
                    4 => Step::Finish(owner_reasons[rng.below(4) as usize]),
                    5 => Step::Cancel,
                    6 | 7 => Step::Advance([5, 20, 31, 700][rng.below(4) as usize]),
                    8 => Step::Reap,
                    _ => Step::Cleanup,
                };
                trail.push(step);
                let row = get(&store, created.id).await;
                match step {
                    Step::Claim => {
                        let got = store
                            .claim(ClaimParams {
                                serves: Default::default(),
                                owner: "n".into(),
                                runner: format!("q{n}"),
                                node_id: None,
                                limit: 1,
                            })
                            .await
                            .unwrap();
                        if let Some(c) = got.first() {
                            token = c.lease_token.clone();
                            model
                                .apply(
                                    Event::Claim,
                                    c.started_at.unwrap(),
                                    Reporter::Ledger,
                                    Some(("n", token.as_deref().unwrap())),
                                    "",
                                )
                                .unwrap_or_else(|e| panic!("seed {seed}: {trail:?}: {e}"));
                        } else {
                            assert!(
                                model.state != jobward_core::State::Queued,
                                "seed {seed}: {trail:?}: a queued execution was not claimed"
                            );
                        }
                    }
                    Step::Heartbeat | Step::StaleHeartbeat => {
                        let lease = LeaseRef {
                            id: created.id,
                            attempt: 1,
                            token: match step {
                                Step::Heartbeat => token.clone().unwrap_or_default(),
                                _ => "stale".into(),
                            },
                        };
                        let hb = store
                            .heartbeat(HeartbeatParams {
                                owner: "n".into(),
                                leases: vec![lease.clone().into()],
                                node: None,
                            })
                            .await
                            .unwrap();
                        if hb.renewed.contains(&created.id) {
                            let now = get(&store, created.id).await.heartbeat_at.unwrap();
                            model
                                .apply(Event::Heartbeat, now, Reporter::Owner(&lease.token), None, "")
                                .unwrap_or_else(|e| panic!("seed {seed}: {trail:?}: {e}"));
                        } else {
                            let mut m = model.clone();
                            assert!(
                                m.apply(Event::Heartbeat, row.queued_at, Reporter::Owner(&lease.token), None, "")
                                    .is_err(),
                                "seed {seed}: {trail:?}: the store refused a heartbeat the model accepts"
                            );
                        }
                    }
                    Step::Complete | Step::Finish(_) => {
                        let outcome = match step {
                            Step::Finish(r) => Outcome {
                                reason: Some(r),
                                message: Some("ended".into()),
                                exit_code: None,
                                signal: None,
                            },
                            _ => Outcome::success(0),
                        };
                        let event = match step {
                            Step::Finish(r) => Event::Finish(r),
                            _ => Event::Complete,
                        };
                        let lease = LeaseRef {
                            id: created.id,
                            attempt: 1,
                            token: token.clone().unwrap_or_default(),
                        };
                        let r = store
                            .complete(CompleteParams {
                                lease: lease.clone(),
                                outcome,
                                actor: "n".into(),
                            })
                            .await;
                        match r {
                            Ok(s) if !s.repeated => {
                                model
                                    .apply(event, s.execution.finished_at.unwrap(), Reporter::Owner(&lease.token), None, "ended")
                                    .unwrap_or_else(|e| panic!("seed {seed}: {trail:?}: {e}"));
                            }
                            Ok(_) => {}
                            Err(_) => {
                                let mut m = model.clone();
                                assert!(
                                    m.apply(event, row.queued_at, Reporter::Owner(&lease.token), None, "ended")
                                        .is_err()
                                        || m.state.is_terminal(),
                                    "seed {seed}: {trail:?}: the store refused a completion the model accepts"
                                );
                            }
                        }
                    }
                    Step::Cancel => {
                        let out = store
                            .cancel(CancelParams {
                                id: created.id,
                                reason: Reason::CancelRequested,
                                message: "stop".into(),
                                actor: "op".into(),
                            })
                            .await
                            .unwrap();
                        let after = get(&store, created.id).await;
                        let at = after
                            .finished_at
                            .or(after.cancel_requested_at)
                            .unwrap_or(after.queued_at);
                        if !matches!(out, CancelOutcome::AlreadyTerminal { .. }) {
                            let _ = model.apply(
                                Event::Cancel(Reason::CancelRequested),
                                at,
                                Reporter::Ledger,
                                None,
                                "stop",
                            );
                        }
                    }
                    Step::Advance(s) => store.clock().advance(Duration::from_secs(s)),
                    Step::Reap => {
                        let report = reap(&store).await;
                        if let Some(r) = report.recovered.iter().find(|r| r.id == created.id) {
                            let after = get(&store, created.id).await;
                            let now = after.finished_at.unwrap();
                            let d = model
                                .due(now)
                                .unwrap_or_else(|| panic!("seed {seed}: {trail:?}: reaped {r:?} before any deadline"));
                            model
                                .apply(Event::Expire(d), now, Reporter::Ledger, None, &r.message)
                                .unwrap_or_else(|e| panic!("seed {seed}: {trail:?}: {e}"));
                        } else {
                            assert!(
                                model.due(store.clock().now() - chrono::TimeDelta::milliseconds(50)).is_none(),
                                "seed {seed}: {trail:?}: a deadline passed and the reaper left it"
                            );
                        }
                    }
                    Step::Cleanup => {
                        let report = store
                            .cleanup(CleanupParams {
                                stale_after: Duration::from_secs(600),
                                apply: true,
                                actor: "op".into(),
                                process_notes: None,
                            })
                            .await
                            .unwrap();
                        if report.changed.iter().any(|c| c.id == created.id) {
                            let now = get(&store, created.id).await.finished_at.unwrap();
                            model
                                .apply(Event::Cleanup, now, Reporter::Ledger, None, "stale")
                                .unwrap_or_else(|e| panic!("seed {seed}: {trail:?}: {e}"));
                        }
                    }
                }
                let row = get(&store, created.id).await;
                let got = (
                    row.state,
                    row.reason,
                    row.start_deadline.filter(|_| row.state == jobward_core::State::Queued),
                    row.lease_expires_at.filter(|_| row.state.is_live()),
                    row.run_deadline.filter(|_| row.state.is_live()),
                    row.cancel_deadline.filter(|_| row.state.is_live()),
                    row.finished_at.is_some(),
                );
                let want = (
                    model.state,
                    model.reason,
                    model.start_deadline,
                    model.lease_expires_at.filter(|_| model.state.is_live()),
                    model.run_deadline.filter(|_| model.state.is_live()),
                    model.cancel_deadline,
                    model.finished_at.is_some(),
                );
                assert_eq!(got, want, "seed {seed}: after {trail:?}");
                let _ = Deadline::Lease;
            }
        }
    }
}

case! {
    /// Operations from many concurrent callers lose no transition and double none: every
    /// execution ends exactly once, with exactly one terminal event, and the limit holds.
    async fn concurrent_callers_lose_and_double_no_transition(store: DynStore) {
        let mut s = spec("c");
        s.concurrency_key = Some("k".into());
        s.timeouts.heartbeat = Duration::from_secs(60);
        define(&store, vec![s], &[("k", 3)]).await;
        let total = 60;
        let mut tasks = Vec::new();
        for i in 0..total {
            let st = store.clone();
            tasks.push(tokio::spawn(async move {
                st.trigger(TriggerParams {
                    job: "c".into(),
                    actor: format!("t{i}"),
                    payload: None,
                    idempotency_key: Some(format!("k{}", i % 50)),
                    run_at: None,
                    priority: None,
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ids: Vec<i64> = store
            .list_executions(ExecutionFilter {
                job: Some("c".into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids.len(), 50, "one execution per idempotency key");
        // Workers claim, heartbeat and complete concurrently with cancels and reapers.
        let mut workers = Vec::new();
        for w in 0..6 {
            let st = store.clone();
            workers.push(tokio::spawn(async move {
                let mut done = 0;
                for _ in 0..200 {
                    let got = st
                        .claim(ClaimParams {
                            serves: Default::default(),
                            owner: format!("w{w}"),
                            runner: "local".into(),
                            node_id: None,
                            limit: 2,
                        })
                        .await
                        .unwrap();
                    let running = st
                        .list_executions(ExecutionFilter {
                            states: vec![State::Running],
                            limit: 100,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .len();
                    assert!(running <= 3, "{running} running with a limit of 3");
                    for c in &got {
                        st.heartbeat(HeartbeatParams {
                            owner: format!("w{w}"),
                            leases: vec![c.lease().into()],
                            node: None,
                        })
                        .await
                        .unwrap();
                        let _ = st
                            .complete(CompleteParams {
                                lease: c.lease(),
                                outcome: Outcome::success(0),
                                actor: format!("w{w}"),
                            })
                            .await;
                        done += 1;
                    }
                    if got.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                done
            }));
        }
        let canceller = {
            let st = store.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                for id in ids.iter().step_by(7) {
                    st.cancel(CancelParams {
                        id: *id,
                        reason: Reason::CancelRequested,
                        message: "stop".into(),
                        actor: "op".into(),
                    })
                    .await
                    .unwrap();
                }
            })
        };
        for _ in 0..3 {
            let st = store.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    reap(&st).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        canceller.await.unwrap();
        for w in workers {
            w.await.unwrap();
        }
        // Whatever is still running had its cancel requested and never confirmed: settle it.
        store.clock().advance(Duration::from_secs(3600));
        reap(&store).await;
        for id in ids {
            let e = get(&store, id).await;
            assert!(e.state.is_terminal(), "{e:?}");
            let terminal_events = store
                .events(id)
                .await
                .unwrap()
                .into_iter()
                .filter(|ev| ev.kind == EventKind::Transition && ev.to.is_some_and(State::is_terminal))
                .count();
            assert_eq!(terminal_events, 1, "execution {id}: {e:?}");
        }
        assert!(store
            .audit(AuditParams { tolerance: Duration::from_secs(5) })
            .await
            .unwrap()
            .is_empty());
    }
}

case! {
    /// Bulk enqueue: one call creates many executions of several jobs, honours idempotency
    /// keys per item (also within the batch), and answers each item on its own.
    async fn bulk_triggers_are_answered_per_item(store: DynStore) {
        let mut skip = spec("s");
        skip.overlap = Overlap::Skip;
        define(&store, vec![spec("a"), spec("b"), skip], &[]).await;
        let first = store
            .trigger(TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                payload: None,
                idempotency_key: Some("k1".into()),
                run_at: None,
                priority: None,
            })
            .await
            .unwrap()
            .execution;
        let item = |job: &str, key: Option<&str>| TriggerParams {
            job: job.into(),
            actor: "bulk".into(),
            payload: Some(serde_json::json!({ "job": job })),
            idempotency_key: key.map(str::to_string),
            run_at: None,
            priority: None,
        };
        let mut items = vec![
            item("a", Some("k1")),
            item("a", Some("k2")),
            item("a", Some("k2")),
            item("nope", None),
            item("s", None),
            item("s", None),
        ];
        for _ in 0..500 {
            items.push(item("b", None));
        }
        let out = store.trigger_many(items).await.unwrap();
        assert_eq!(out.len(), 506);
        let a0 = out[0].as_ref().unwrap();
        assert!(a0.existing && a0.execution.id == first.id, "the earlier key's execution");
        let (a1, a2) = (out[1].as_ref().unwrap(), out[2].as_ref().unwrap());
        assert!(!a1.existing && a2.existing && a1.execution.id == a2.execution.id);
        assert!(matches!(out[3], Err(StoreError::JobNotFound(_))));
        let (s1, s2) = (out[4].as_ref().unwrap(), out[5].as_ref().unwrap());
        assert_eq!(s1.execution.state, State::Queued);
        assert_eq!(
            (s2.execution.state, s2.execution.reason),
            (State::Skipped, Some(Reason::Overlap)),
            "overlap = skip holds inside a batch"
        );
        let bs: Vec<&ExecutionRow> = out[6..].iter().map(|r| &r.as_ref().unwrap().execution).collect();
        let numbers: Vec<i64> = bs.iter().map(|e| e.number).collect();
        assert_eq!(numbers, (1..=500).collect::<Vec<_>>(), "numbered in order");
        assert!(bs.iter().all(|e| e.state == State::Queued && e.payload.is_some()));
        for e in bs.iter().take(3) {
            let events = store.events(e.id).await.unwrap();
            assert_eq!(events.len(), 1, "its creation is an event");
            assert_eq!(events[0].to, Some(State::Queued));
        }
        assert!(store
            .audit(AuditParams { tolerance: Duration::from_secs(5) })
            .await
            .unwrap()
            .is_empty());
    }
}

case! {
    /// Batched completions: each report fenced by its own lease and answered on its own —
    /// accepted, an idempotent repeat, or refused (with its event) — and one bad report
    /// changes nothing for the others.
    async fn batched_completions_are_fenced_one_by_one(store: DynStore) {
        let mut r = spec("r");
        r.retry.max_attempts = 2;
        define(&store, vec![spec("a"), r], &[]).await;
        for _ in 0..4 {
            trigger(&store, "a").await;
        }
        trigger(&store, "r").await;
        let c = claim(&store, "w", 5).await;
        assert_eq!(c.len(), 5);
        let done_before = complete_ok(&store, &c[3]).await.unwrap();
        let stale = LeaseRef {
            token: "stale".into(),
            ..c[1].lease()
        };
        let report = |lease: LeaseRef, outcome: Outcome| CompleteParams {
            lease,
            outcome,
            actor: "w".into(),
        };
        let retried = c.iter().find(|e| e.job == "r").unwrap();
        let out = store
            .complete_many(vec![
                report(c[0].lease(), Outcome::success(0)),
                report(stale, Outcome::success(0)),
                report(c[3].lease(), Outcome::success(0)),
                report(retried.lease(), failure(3)),
                report(c[0].lease(), Outcome::success(0)),
            ])
            .await
            .unwrap();
        assert_eq!(out[0].as_ref().unwrap().execution.state, State::Completed);
        assert!(matches!(
            out[1],
            Err(StoreError::LeaseLost { state: State::Running, .. })
        ));
        assert!(out[2].as_ref().unwrap().repeated, "a repeat answers as the first time");
        assert_eq!(out[2].as_ref().unwrap().execution, done_before.execution);
        let failed = out[3].as_ref().unwrap();
        assert_eq!(failed.execution.reason, Some(Reason::ExitCode));
        assert!(failed.retry.is_some(), "the retry policy applies in a batch");
        assert!(out[4].as_ref().unwrap().repeated);
        assert_eq!(get(&store, c[1].id).await.state, State::Running, "the stale report changed nothing");
        let refused = store
            .events(c[1].id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Refused)
            .count();
        assert_eq!(refused, 1, "the stale report is refused on its own, with its event");
    }
}

case! {
    /// Batched operations from concurrent callers: bulk triggers, batched claims and batched
    /// completions at once never exceed a limit, lose or double no transition.
    async fn batched_operations_under_concurrent_callers(store: DynStore) {
        let mut s = spec("b");
        s.concurrency_key = Some("k".into());
        define(&store, vec![s], &[("k", 5)]).await;
        let mut producers = Vec::new();
        for p in 0..4 {
            let st = store.clone();
            producers.push(tokio::spawn(async move {
                let items = (0..50)
                    .map(|i| TriggerParams {
                        job: "b".into(),
                        actor: format!("p{p}"),
                        payload: None,
                        idempotency_key: Some(format!("key-{}", (p * 50 + i) % 180)),
                        run_at: None,
                        priority: None,
                    })
                    .collect();
                st.trigger_many(items).await.unwrap()
            }));
        }
        for p in producers {
            assert!(p.await.unwrap().iter().all(|r| r.is_ok()));
        }
        let all = store
            .list_executions(ExecutionFilter {
                job: Some("b".into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 180, "one execution per key, across concurrent batches");
        let mut workers = Vec::new();
        for w in 0..4 {
            let st = store.clone();
            workers.push(tokio::spawn(async move {
                for _ in 0..300 {
                    let got = st
                        .claim(ClaimParams {
                            serves: Default::default(),
                            owner: format!("w{w}"),
                            runner: "local".into(),
                            node_id: None,
                            limit: 3,
                        })
                        .await
                        .unwrap();
                    let running = st
                        .list_executions(ExecutionFilter {
                            states: vec![State::Running],
                            limit: 100,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .len();
                    assert!(running <= 5, "{running} running with a limit of 5");
                    if got.is_empty() {
                        if st
                            .list_executions(ExecutionFilter {
                                states: vec![State::Queued],
                                limit: 1,
                                ..Default::default()
                            })
                            .await
                            .unwrap()
                            .is_empty()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    let reports = got
                        .iter()
                        .map(|c| CompleteParams {
                            lease: c.lease(),
                            outcome: Outcome::success(0),
                            actor: format!("w{w}"),
                        })
                        .collect();
                    for r in st.complete_many(reports).await.unwrap() {
                        assert!(!r.unwrap().repeated);
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        for e in &all {
            let e = get(&store, e.id).await;
            assert_eq!(e.state, State::Completed, "{e:?}");
            let transitions = store
                .events(e.id)
                .await
                .unwrap()
                .into_iter()
                .filter(|v| v.kind == EventKind::Transition)
                .count();
            assert_eq!(transitions, 3, "created, claimed, completed: once each");
        }
    }
}

case! {
    /// Jobs through the API: stored in the ledger with their source, changes recorded with
    /// actor and before/after, the file's jobs refused to the API and the API's to the file,
    /// deletion refused while runs are live unless asked to cancel them, history kept.
    async fn jobs_defined_through_the_api(store: DynStore) {
        define(&store, vec![spec("from-file")], &[]).await;
        let put = |s: JobSpec, partial: bool| PutJob {
            spec: s,
            actor: "api:admin".into(),
            partial,
        };
        assert!(matches!(
            store.put_job(put(spec("from-file"), false)).await,
            Err(StoreError::JobOwnedByFile(_))
        ));
        let created = store.put_job(put(spec("dyn"), false)).await.unwrap();
        assert!(created.created && created.before.is_none());
        let job = store.get_job("dyn").await.unwrap().unwrap();
        assert_eq!(job.source, JobSource::Api);
        assert_eq!(store.get_job("from-file").await.unwrap().unwrap().source, JobSource::File);
        let mut changed = spec("dyn");
        changed.retry.max_attempts = 3;
        let replaced = store.put_job(put(changed.clone(), true)).await.unwrap();
        assert!(!replaced.created);
        assert_eq!(replaced.before.unwrap().retry.max_attempts, 1);
        // A reload of the file leaves the API's job alone, and may not define it.
        define(&store, vec![spec("from-file")], &[]).await;
        assert!(store.get_job("dyn").await.unwrap().unwrap().defined);
        assert!(matches!(
            store
                .sync_jobs(SyncJobs {
                    jobs: vec![spec("from-file"), spec("dyn")],
                    limits: Default::default()
                })
                .await,
            Err(StoreError::JobOwnedByApi(_))
        ));
        let run = trigger(&store, "dyn").await;
        let del = |cancel: bool| DeleteJob {
            name: "dyn".into(),
            cancel,
            actor: "api:admin".into(),
        };
        assert!(matches!(
            store.delete_job(del(false)).await,
            Err(StoreError::JobBusy { live: 1, .. })
        ));
        assert_eq!(store.delete_job(del(true)).await.unwrap().cancelled, vec![run.id]);
        assert_eq!(get(&store, run.id).await.state, State::Cancelled);
        assert!(matches!(
            store
                .trigger(TriggerParams {
                    job: "dyn".into(),
                    actor: "t".into(),
                    ..Default::default()
                })
                .await,
            Err(StoreError::JobUndefined(_))
        ));
        assert!(store.get_execution(run.id).await.unwrap().is_some(), "history kept");
        assert!(matches!(
            store
                .delete_job(DeleteJob {
                    name: "from-file".into(),
                    cancel: true,
                    actor: "api:admin".into()
                })
                .await,
            Err(StoreError::JobOwnedByFile(_))
        ));
        let changes = store.job_changes("dyn").await.unwrap();
        let actions: Vec<&str> = changes.iter().map(|c| c.action.as_str()).collect();
        assert_eq!(actions, vec!["deleted", "changed", "created"]);
        assert!(changes.iter().all(|c| c.actor == "api:admin"));
        assert_eq!(changes[1].before.as_ref().unwrap()["retry"]["max_attempts"], 1);
        assert_eq!(changes[1].after.as_ref().unwrap()["retry"]["max_attempts"], 3);
        // Re-created through the API, it continues its numbering and history.
        store.put_job(put(spec("dyn"), false)).await.unwrap();
        assert_eq!(trigger(&store, "dyn").await.number, 2);
    }
}

case! {
    /// A delayed run waits, queued, until its time (its start deadline counts from then), and
    /// can be rescheduled while it waits.
    async fn delayed_runs_wait_for_their_time(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let now = store.now().await.unwrap();
        let at = chrono::DateTime::from_timestamp_millis(
            (now + chrono::TimeDelta::minutes(10)).timestamp_millis(),
        )
        .unwrap();
        let e = store
            .trigger(TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                run_at: Some(at),
                ..Default::default()
            })
            .await
            .unwrap()
            .execution;
        assert_eq!((e.state, e.run_after), (State::Queued, at));
        assert_eq!(e.start_deadline, Some(at + chrono::TimeDelta::minutes(10)));
        assert!(claim(&store, "n", 1).await.is_empty(), "not before its time");
        assert!(reap(&store).await.recovered.is_empty(), "and not timed out meanwhile");
        store.clock().advance(Duration::from_secs(300));
        let moved = store
            .reschedule(Reschedule {
                id: e.id,
                run_at: now,
                actor: "op".into(),
            })
            .await
            .unwrap();
        assert!(moved.run_after <= store.now().await.unwrap());
        assert_eq!(claim(&store, "n", 1).await[0].id, e.id);
        assert!(matches!(
            store
                .reschedule(Reschedule {
                    id: e.id,
                    run_at: at,
                    actor: "op".into(),
                })
                .await,
            Err(StoreError::Invalid(_))
        ));
        let events = store.events(e.id).await.unwrap();
        assert!(events.iter().any(|v| v.message.contains("rescheduled by op")));
    }
}

case! {
    /// Priorities: a high-priority run overtakes a backlog of 1,000 low-priority ones, and the
    /// low-priority work still runs.
    async fn higher_priorities_are_claimed_first(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let items = (0..1000)
            .map(|_| TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                ..Default::default()
            })
            .collect();
        store.trigger_many(items).await.unwrap();
        let urgent = store
            .trigger(TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                priority: Some(10),
                ..Default::default()
            })
            .await
            .unwrap()
            .execution;
        assert_eq!(urgent.priority, 10);
        let first = claim(&store, "n", 1).await;
        assert_eq!(first[0].id, urgent.id, "the urgent run overtakes the backlog");
        let mut done = 1;
        loop {
            let got = claim(&store, "n", 100).await;
            if got.is_empty() {
                break;
            }
            assert!(got.windows(2).all(|w| w[0].id < w[1].id), "ties by age");
            done += got.len();
        }
        assert_eq!(done, 1001, "the low-priority work runs too");
    }
}

case! {
    /// Backfill fires each instant of a range once; a second backfill (or a concurrent one,
    /// from another node) finds them fired and creates nothing.
    async fn backfill_fires_each_instant_once(store: DynStore) {
        let mut s = spec("tick");
        s.schedule = jobward_core::Schedule::every(Duration::from_secs(10)).unwrap();
        define(&store, vec![s], &[]).await;
        let now = store.now().await.unwrap();
        // On an instant of the schedule (every 10 s from the epoch), so the range holds six.
        let from = chrono::DateTime::from_timestamp(
            (now - chrono::TimeDelta::minutes(10)).timestamp() / 10 * 10,
            0,
        )
        .unwrap();
        let to = from + chrono::TimeDelta::seconds(59);
        let b = |actor: &str| Backfill {
            job: "tick".into(),
            from,
            to,
            actor: actor.into(),
        };
        let (r1, r2) = tokio::join!(store.backfill(b("n1")), store.backfill(b("n2")));
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert_eq!(r1.created.len() + r2.created.len(), 6, "{r1:?} {r2:?}");
        assert_eq!(r1.already + r2.already + r1.created.len() + r2.created.len(), 12);
        let again = store.backfill(b("n1")).await.unwrap();
        assert_eq!((again.created.len(), again.already), (0, 6));
        let e = get(&store, r1.created.first().or(r2.created.first()).copied().unwrap()).await;
        assert_eq!(e.trigger, Trigger::Backfill);
        assert!(e.scheduled_for.is_some());
        assert!(matches!(
            store
                .backfill(Backfill {
                    job: "tick".into(),
                    from: now - chrono::TimeDelta::days(30),
                    to: now,
                    actor: "n".into(),
                })
                .await,
            Err(StoreError::Invalid(_))
        ), "more than MAX_BACKFILL instants are refused");
    }
}

case! {
    /// An external job: each instant is queued for a start that nobody claims; a start within
    /// the grace takes it (paired with its instant), an instant without one becomes a terminal
    /// record naming it; a start without an instant is an execution of trigger `external`.
    async fn external_instants_pair_with_starts_or_are_recorded_missed(store: DynStore) {
        let mut ext = spec("ext");
        ext.external = true;
        ext.schedule = Schedule::every(Duration::from_secs(10)).unwrap();
        ext.timeouts.queue = Duration::from_secs(2);
        ext.timeouts.heartbeat = Duration::from_secs(5);
        ext.overlap = Overlap::Skip;
        define(&store, vec![ext], &[]).await;
        let first = store.get_job("ext").await.unwrap().unwrap().next_fire_at.unwrap();
        let gap = (first - store.now().await.unwrap()).to_std().unwrap_or_default();
        store.clock().advance(gap + Duration::from_millis(100));
        let fired = store.fire_due("sched").await.unwrap().fired;
        assert_eq!(fired.len(), 1);
        assert!(claim(&store, "node", 10).await.is_empty(), "no node runs an external job");
        let start = |owner: &str, lease: Option<Duration>| StartExternal {
            job: "ext".into(),
            owner: owner.into(),
            actor: "t".into(),
            note: "test".into(),
            run_id: None,
            lease,
        };
        let StartOutcome::Started(run) = store.start_external(start("exec:h:1", None)).await.unwrap() else {
            panic!("not started");
        };
        assert_eq!(run.id, fired[0], "the start takes the due instant");
        assert_eq!(run.state, State::Running);
        assert_eq!(run.scheduled_for, Some(first));
        complete_ok(&store, &run).await.unwrap();
        // The next instant sees no start within its grace: missed.
        store.clock().advance(Duration::from_secs(10));
        let next = store.fire_due("sched").await.unwrap().fired;
        store.clock().advance(Duration::from_secs(3));
        let r = reap(&store).await;
        assert_eq!(r.recovered.len(), 1);
        let missed = get(&store, next[0]).await;
        assert_eq!((missed.state, missed.reason), (State::TimedOut, Some(Reason::QueueTimeout)));
        assert!(missed.message.as_deref().unwrap().starts_with("missed:"), "{missed:?}");
        assert_eq!(r.recovered[0].runner, "external");
        // A start between instants: an execution of its own, trigger external.
        let StartOutcome::Started(own) = store.start_external(start("ping", Some(Duration::from_secs(3600)))).await.unwrap() else {
            panic!("not started");
        };
        assert_eq!(own.trigger, Trigger::External);
        assert!(own.scheduled_for.is_none());
        // A start cannot heartbeat: its run deadline is its run timeout itself.
        assert_eq!(own.run_deadline, Some(own.started_at.unwrap() + chrono::TimeDelta::hours(1)));
        // Overlap skip: another start while it runs is skipped and must not run.
        let second = store.start_external(start("exec:h:2", None)).await.unwrap();
        assert!(matches!(second, StartOutcome::Skipped(ref e) if e.reason == Some(Reason::Overlap)), "{second:?}");
    }
}

case! {
    /// A run past the upper bound of its expected duration is marked overdue once (however
    /// many nodes look), and keeps running.
    async fn overdue_runs_are_marked_once(store: DynStore) {
        let mut s = spec("slow");
        s.expected_duration = Some(jobward_core::DurationBounds {
            min: None,
            max: Some(Duration::from_secs(60)),
        });
        s.timeouts.heartbeat = Duration::from_secs(600);
        define(&store, vec![s], &[]).await;
        let e = trigger(&store, "slow").await;
        assert_eq!(e.expected_duration.unwrap().max, Some(Duration::from_secs(60)));
        let run = claim(&store, "n", 1).await.remove(0);
        assert!(store.flag_overdue("a").await.unwrap().is_empty());
        store.clock().advance(Duration::from_secs(61));
        let (a, b) = tokio::join!(store.flag_overdue("a"), store.flag_overdue("b"));
        let marked: Vec<ExecutionRow> = a.unwrap().into_iter().chain(b.unwrap()).collect();
        assert_eq!(marked.len(), 1, "one mark, whichever node made it");
        assert_eq!(marked[0].id, run.id);
        assert!(store.flag_overdue("a").await.unwrap().is_empty(), "never twice");
        let now = get(&store, run.id).await;
        assert_eq!(now.state, State::Running, "overdue is not stopped");
        assert!(now.overdue_at.is_some());
        let m = store.metrics().await.unwrap();
        assert_eq!(m.overdue, vec![("slow".to_string(), 1)]);
        complete_ok(&store, &now).await.unwrap();
        let m = store.metrics().await.unwrap();
        assert!(m.last_finished.iter().any(|(j, st, _)| j == "slow" && *st == State::Completed));
    }
}

case! {
    /// "Retry now": another attempt of a finished failure, linked to it, with its payload and
    /// checkpoint, its budget raised; never twice, never of a live or completed execution.
    async fn retry_now_starts_a_linked_attempt_once(store: DynStore) {
        define(&store, vec![spec("a")], &[]).await;
        let e = store
            .trigger(TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                payload: Some(serde_json::json!({"k": 1})),
                ..Default::default()
            })
            .await
            .unwrap()
            .execution;
        let refused = store.retry_now(RetryNow { id: e.id, actor: "op".into() }).await;
        assert!(matches!(refused, Err(StoreError::Invalid(_))), "a queued run is not retried");
        let run = claim(&store, "n", 1).await.remove(0);
        store
            .complete(CompleteParams {
                lease: run.lease(),
                outcome: failure(2),
                actor: "n".into(),
            })
            .await
            .unwrap();
        let again = store.retry_now(RetryNow { id: e.id, actor: "op".into() }).await.unwrap();
        assert_eq!((again.state, again.attempt, again.retry_of), (State::Queued, 2, Some(e.id)));
        assert_eq!(again.number, e.number);
        assert_eq!(again.max_attempts, 2);
        assert_eq!(again.payload, Some(serde_json::json!({"k": 1})));
        assert_eq!(again.trigger, Trigger::Retry);
        assert!(matches!(
            store.retry_now(RetryNow { id: e.id, actor: "op".into() }).await,
            Err(StoreError::Invalid(_))
        ), "one retry of it");
        assert_eq!(claim(&store, "n", 1).await[0].id, again.id);
    }
}

case! {
    /// Counts per state for a filter stop past the cap; queues say due, later and running.
    async fn counts_and_queues_match_the_ledger(store: DynStore) {
        define(&store, vec![spec("a"), spec("b")], &[]).await;
        for _ in 0..5 {
            trigger(&store, "a").await;
        }
        trigger(&store, "b").await;
        store
            .trigger(TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                run_at: Some(store.now().await.unwrap() + chrono::TimeDelta::hours(1)),
                ..Default::default()
            })
            .await
            .unwrap();
        let run = claim(&store, "n", 1).await.remove(0);
        let counts = store
            .count_executions(ExecutionFilter { job: Some("a".into()), ..Default::default() }, 3)
            .await
            .unwrap();
        let of = |s: State| counts.iter().find(|(x, _)| *x == s).map(|(_, n)| *n);
        assert_eq!(of(State::Queued), Some(4), "5 queued, capped at 3 + 1");
        assert_eq!(of(State::Running), Some(u64::from(run.job == "a")));
        let by_owner = store
            .list_executions(ExecutionFilter { owner: Some("n".into()), limit: 10, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(by_owner.iter().map(|e| e.id).collect::<Vec<_>>(), vec![run.id]);
        let q = store.queues().await.unwrap();
        let local = q.iter().find(|q| q.runner == "local").unwrap();
        assert_eq!((local.due, local.later, local.running), (5, 1, 1));
        assert!(local.oldest_due.is_some());
        assert_eq!(local.claimed_5m, 1);
    }
}
