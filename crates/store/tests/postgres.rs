//! The conformance suite on the real PostgreSQL of this machine (or `JOBWARD_TEST_POSTGRES`),
//! each test in a schema of its own so that tests run in parallel, plus what is specific to
//! PostgreSQL: its constraints and triggers, and schema versions.
//!
//! These tests never skip: an unreachable PostgreSQL is a failure.

mod conformance;

use std::time::Duration;

use jobward_core::State;
use jobward_store::*;
use sqlx::Connection;

pub fn admin_url() -> String {
    std::env::var("JOBWARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the test's schema when the test ends.
pub struct Schema {
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&mut c)
                    .await;
                }
            })
        })
        .join();
    }
}

pub async fn fresh_schema() -> (Schema, String) {
    let admin = admin_url();
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is unreachable ({e}); these tests need it (set JOBWARD_TEST_POSTGRES)"));
    let name = format!("jw_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&mut c)
        .await
        .unwrap();
    let sep = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{sep}options=-c%20search_path%3D{name}");
    (Schema { name }, url)
}

async fn open_postgres() -> (Schema, DynStore) {
    let (schema, url) = fresh_schema().await;
    let (store, opened) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    assert!(opened.created);
    (schema, store)
}

/// The store every conformance case runs on in this binary.
async fn open_store() -> (Schema, DynStore) {
    open_postgres().await
}

async fn raw(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url).await.unwrap()
}

#[tokio::test]
async fn the_database_refuses_to_change_a_terminal_execution_and_checks_invariant_1() {
    let (_schema, url) = fresh_schema().await;
    let (store, _) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    conformance::define(&store, vec![conformance::spec("a")], &[]).await;
    store
        .trigger(TriggerParams {
            job: "a".into(),
            actor: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = store
        .claim(ClaimParams {
            serves: Default::default(),
            owner: "n".into(),
            runner: "local".into(),
            node_id: None,
            limit: 1,
        })
        .await
        .unwrap()
        .remove(0);
    let done = store
        .complete(CompleteParams {
            lease: c.lease(),
            outcome: Outcome::success(0),
            actor: "n".into(),
        })
        .await
        .unwrap();
    let mut conn = raw(&url).await;
    let err =
        sqlx::query("UPDATE executions SET state = 'running', finished_at = NULL WHERE id = $1")
            .bind(done.execution.id)
            .execute(&mut conn)
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("terminal execution is immutable"),
        "{err}"
    );
    let err = sqlx::query("UPDATE events SET message = 'rewritten'")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    for (what, state, finished, reason, message) in [
        (
            "failed without finished_at",
            "failed",
            false,
            Some("exit_code"),
            Some("x"),
        ),
        ("failed without a reason", "failed", true, None, Some("x")),
        (
            "failed with no message",
            "failed",
            true,
            Some("exit_code"),
            None,
        ),
        (
            "timed_out with a failed reason",
            "timed_out",
            true,
            Some("exit_code"),
            Some("x"),
        ),
        ("an unknown state", "stuck", false, None, None),
    ] {
        let err = sqlx::query(
            "INSERT INTO executions (job, number, attempt, max_attempts, trigger, state, command, overlap, \
             heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, \
             queued_at, run_after, start_deadline, finished_at, reason, message) \
             VALUES ('a', 99, 1, 1, 'manual', $1, 'true', 'allow', 1, 1, 1, 0, 0, 0, jw_now_ms(), jw_now_ms(), \
             jw_now_ms(), CASE WHEN $2 THEN jw_now_ms() END, $3, $4)",
        )
        .bind(state)
        .bind(finished)
        .bind(reason)
        .bind(message)
        .execute(&mut conn)
        .await
        .expect_err(what);
        assert!(
            err.to_string().contains("check constraint"),
            "{what}: {err}"
        );
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_an_empty_database_needs_migrating() {
    let (_schema, url) = fresh_schema().await;
    let err = open(&url, OpenMode::Existing).await.err().unwrap();
    assert!(
        matches!(err, StoreError::SchemaTooOld { found: 0, .. }),
        "{err}"
    );
    let (store, opened) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    assert!(opened.created && !opened.applied_migrations.is_empty());
    drop(store);
    let mut conn = raw(&url).await;
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', true, '\\x00', 0)")
        .execute(&mut conn)
        .await
        .unwrap();
    for mode in [OpenMode::CreateAndMigrate, OpenMode::Existing] {
        let err = open(&url, mode).await.err().unwrap();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 9999, .. }),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let err = open("postgres://postgres@127.0.0.1:1/none", OpenMode::Existing)
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Open { .. }) && !text.contains('\n'),
        "{text}"
    );
}

/// Two stores on one database stand for two nodes: 50 triggers and claims spread over both,
/// each with its own connections, never exceed the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_nodes() {
    let (_schema, url) = fresh_schema().await;
    let (a, _) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    let (b, _) = open(&url, OpenMode::Existing).await.unwrap();
    let mut s = conformance::spec("a");
    s.concurrency_key = Some("k".into());
    conformance::define(&a, vec![s], &[("k", 4)]).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let st = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            st.trigger(TriggerParams {
                job: "a".into(),
                actor: format!("t{i}"),
                ..Default::default()
            })
            .await?;
            st.claim(ClaimParams {
                serves: Default::default(),
                owner: format!("w{i}"),
                runner: "local".into(),
                node_id: None,
                limit: 2,
            })
            .await
            .map(|v| v.len())
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().expect("no error reaches the caller");
    }
    assert_eq!(total, 4);
    let running = b
        .list_executions(ExecutionFilter {
            states: vec![State::Running],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 4);
    assert!(
        a.audit(AuditParams {
            tolerance: Duration::from_secs(5)
        })
        .await
        .unwrap()
        .is_empty()
    );
}

/// NOTIFY wakes claimers at once, and a listener whose connection is killed comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_listener_wakes_claimers_and_survives_a_killed_connection() {
    let (_schema, url) = fresh_schema().await;
    let (a, _) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    let (b, _) = open(&url, OpenMode::Existing).await.unwrap();
    conformance::define(&a, vec![conformance::spec("a")], &[]).await;
    let signal = a.work_signal();
    let local = vec!["local".to_string()];
    let woken = |signal: std::sync::Arc<jobward_store::WorkSignal>, store: DynStore| async move {
        let local = vec!["local".to_string()];
        // Drop a wake-up stored earlier, then wait for the one this trigger causes.
        while tokio::time::timeout(Duration::from_millis(20), signal.notified(&local))
            .await
            .is_ok()
        {}
        let notified = signal.notified(&local);
        store
            .trigger(TriggerParams {
                job: "a".into(),
                actor: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .is_ok()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        woken(signal.clone(), b.clone()).await,
        "a trigger on another node wakes this one"
    );
    // Work for a remote queue wakes that queue's claimers, not the local runner's.
    conformance::define(
        &b,
        vec![conformance::spec("a"), {
            let mut q = conformance::spec("q");
            q.queue = Some("q".into());
            q
        }],
        &[],
    )
    .await;
    let queue = vec!["q".to_string()];
    while tokio::time::timeout(Duration::from_millis(20), signal.notified(&local))
        .await
        .is_ok()
    {}
    let (for_queue, for_local) = (signal.notified(&queue), signal.notified(&local));
    b.trigger(TriggerParams {
        job: "q".into(),
        actor: "t".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), for_queue)
        .await
        .expect("the queue's claimers are woken");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), for_local)
            .await
            .is_err(),
        "work for a remote queue does not wake the local runner"
    );
    let mut admin = raw(&admin_url()).await;
    let killed: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'jobward' AND query ILIKE 'LISTEN%' \
         AND pg_terminate_backend(pid)",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        !killed.is_empty(),
        "a listener connection was found and terminated"
    );
    // The listener reconnects within its first backoff (100 ms); work queued after that
    // wakes claimers through NOTIFY again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        woken(signal, b).await,
        "the listener reconnected and wakes claimers again"
    );
}

#[tokio::test]
async fn backup_names_pg_dump_and_ping_answers() {
    let (_guard, store) = open_postgres().await;
    store.ping().await.unwrap();
    let err = store
        .backup(std::path::Path::new("/tmp/never-written.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)));
    assert!(err.to_string().contains("pg_dump"), "{err}");
    assert!(!std::path::Path::new("/tmp/never-written.db").exists());
}
