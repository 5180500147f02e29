//! The conformance suite on real SQLite files, plus what only SQLite can show: the schema's
//! CHECK constraints and triggers, hand-corrupted rows, schema versions, and two processes'
//! worth of connections writing at once.

mod conformance;

use std::time::Duration;

use jobward_core::State;
use jobward_store::*;

async fn open_sqlite() -> (tempfile::TempDir, DynStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let (store, opened) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    assert!(opened.created);
    (dir, store)
}

/// The store every conformance case runs on in this binary.
async fn open_store() -> (tempfile::TempDir, DynStore) {
    open_sqlite().await
}

/// A raw connection to the same file, as another process (or a careless operator) would have.
async fn raw(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

async fn one_completed(store: &DynStore) -> ExecutionRow {
    conformance::define(store, vec![conformance::spec("a")], &[]).await;
    store
        .trigger(TriggerParams {
            job: "a".into(),
            actor: "t".into(),
            payload: None,
            idempotency_key: None,
            run_at: None,
            priority: None,
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
    store
        .complete(CompleteParams {
            lease: c.lease(),
            outcome: Outcome::success(0),
            actor: "n".into(),
        })
        .await
        .unwrap()
        .execution
}

#[tokio::test]
async fn the_database_refuses_to_change_a_terminal_execution() {
    let (dir, store) = open_sqlite().await;
    let done = one_completed(&store).await;
    let conn = raw(&dir).await;
    let err = conn
        .execute(
            "UPDATE executions SET state = 'running', finished_at = NULL WHERE id = ?1",
            [done.id],
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("terminal execution is immutable"),
        "{err}"
    );
    let err = conn
        .execute("UPDATE events SET message = 'rewritten'", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn check_constraints_enforce_invariant_1() {
    let (dir, store) = open_sqlite().await;
    one_completed(&store).await;
    let conn = raw(&dir).await;
    let insert = |state: &'static str,
                  finished: Option<i64>,
                  reason: Option<&'static str>,
                  message: Option<&'static str>| {
        conn.execute(
            "INSERT INTO executions (job, number, attempt, max_attempts, trigger, state, command, overlap, \
             heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms, \
             queued_at, run_after, start_deadline, finished_at, reason, message) \
             VALUES ('a', 99, 1, 1, 'manual', ?1, 'true', 'allow', 1, 1, 1, 0, 0, 0, 0, 0, 0, ?2, ?3, ?4)",
            rusqlite::params![state, finished, reason, message],
        )
    };
    for (what, r) in [
        (
            "failed without finished_at",
            insert("failed", None, Some("exit_code"), Some("x")),
        ),
        (
            "failed without a reason",
            insert("failed", Some(1), None, Some("x")),
        ),
        (
            "failed with an empty message",
            insert("failed", Some(1), Some("exit_code"), Some("")),
        ),
        (
            "failed with no message",
            insert("failed", Some(1), Some("exit_code"), None),
        ),
        (
            "timed_out with a failed reason",
            insert("timed_out", Some(1), Some("exit_code"), Some("x")),
        ),
        (
            "queued with finished_at",
            insert("queued", Some(1), None, None),
        ),
        ("an unknown state", insert("stuck", None, None, None)),
    ] {
        let err = r.expect_err(what);
        assert!(err.to_string().contains("CHECK"), "{what}: {err}");
    }
    let ok = insert(
        "failed",
        Some(1),
        Some("exit_code"),
        Some("exited with code 1"),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn audit_finds_hand_corrupted_rows() {
    let (dir, store) = open_sqlite().await;
    let done = one_completed(&store).await;
    let audit = || async {
        store
            .audit(AuditParams {
                tolerance: Duration::from_secs(5),
            })
            .await
            .unwrap()
    };
    assert!(audit().await.is_empty());
    let conn = raw(&dir).await;
    // An operator switches the checks off and writes a row the schema would refuse.
    conn.execute_batch(
        "PRAGMA ignore_check_constraints = ON; DROP TRIGGER executions_terminal_is_final;",
    )
    .unwrap();
    conn.execute(
        "UPDATE executions SET finished_at = NULL WHERE id = ?1",
        [done.id],
    )
    .unwrap();
    let v = audit().await;
    assert!(
        v.iter().any(|v| v.invariant == 1
            && v.execution_id == Some(done.id)
            && v.message.contains("finished_at")),
        "{v:?}"
    );
    // Two running executions on a key limited to one.
    conn.execute(
        "UPDATE executions SET finished_at = 1 WHERE id = ?1",
        [done.id],
    )
    .unwrap();
    let mut s = conformance::spec("k");
    s.concurrency_key = Some("k".into());
    conformance::define(&store, vec![conformance::spec("a"), s], &[("k", 1)]).await;
    for _ in 0..2 {
        store
            .trigger(TriggerParams {
                job: "k".into(),
                actor: "t".into(),
                payload: None,
                idempotency_key: None,
                run_at: None,
                priority: None,
            })
            .await
            .unwrap();
    }
    store
        .claim(ClaimParams {
            serves: Default::default(),
            owner: "n".into(),
            runner: "local".into(),
            node_id: None,
            limit: 5,
        })
        .await
        .unwrap();
    conn.execute(
        "UPDATE executions SET state = 'running', started_at = 1, heartbeat_at = 1, lease_owner = 'x', lease_token = 'y', \
         lease_expires_at = 9999999999999, run_deadline = 9999999999999 WHERE job = 'k' AND state = 'queued'",
        [],
    )
    .unwrap();
    let v = audit().await;
    assert!(
        v.iter()
            .any(|v| v.invariant == 3 && v.message.contains("'k'")),
        "{v:?}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    let (dir, store) = open_sqlite().await;
    drop(store);
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let conn = raw(&dir).await;
    conn.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', 1, x'00', 0)",
        [],
    )
    .unwrap();
    let count = || -> i64 {
        conn.query_row("SELECT count(*) FROM _sqlx_migrations", [], |r| r.get(0))
            .unwrap()
    };
    let before = count();
    for mode in [OpenMode::CreateAndMigrate, OpenMode::Existing] {
        let err = open(&url, mode)
            .await
            .err()
            .expect("newer schema must be refused");
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 9999, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));
    }
    assert_eq!(before, count());
}

#[tokio::test]
async fn opening_a_missing_database_for_reading_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let err = open(&format!("sqlite://{}", path.display()), OpenMode::Existing)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Missing(_)), "{err}");
    assert!(!path.exists());
    let err = open(
        &format!("sqlite://{}/no/such/dir/x.db", dir.path().display()),
        OpenMode::CreateAndMigrate,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(matches!(
        open("mysql://x", OpenMode::Existing).await.err().unwrap(),
        StoreError::UnsupportedUrl(_)
    ));
}

/// Two stores on one file stand for two processes (a node and a CLI command): 50 triggers and
/// claims spread over both never exceed the limit, and no caller ever sees SQLITE_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_file_without_busy_errors_or_overbooking() {
    let (dir, a) = open_sqlite().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
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
                payload: None,
                idempotency_key: None,
                run_at: None,
                priority: None,
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
        total += t.await.unwrap().expect("no caller sees a busy database");
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
}

/// `jobward backup`: an online, consistent copy that opens as a ledger of its own.
#[tokio::test]
async fn a_backup_is_a_consistent_ledger_of_its_own() {
    let (dir, store) = open_sqlite().await;
    let done = one_completed(&store).await;
    store.ping().await.unwrap();
    let dest = dir.path().join("copy.db");
    store.backup(&dest).await.unwrap();
    let url = format!("sqlite://{}", dest.display());
    let (copy, _) = open(&url, OpenMode::Existing).await.unwrap();
    assert_eq!(
        copy.get_execution(done.id).await.unwrap().unwrap(),
        done,
        "the copy holds the record"
    );
    assert!(
        matches!(store.backup(&dest).await, Err(StoreError::Invalid(_))),
        "an existing file is never overwritten"
    );
}

/// A ledger written by an earlier jobward (schema 3) is upgraded in place: every record and
/// event kept, and no id reused, even one freed by pruning.
#[tokio::test]
async fn an_older_ledger_is_upgraded_in_place_and_reuses_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);",
        )
        .unwrap();
        for (v, file) in [
            (1, "0001_ledger.sql"),
            (2, "0002_truth_under_faults.sql"),
            (3, "0003_hot_path_indexes.sql"),
        ] {
            let sql = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("migrations/sqlite")
                    .join(file),
            )
            .unwrap();
            c.execute_batch(&sql).unwrap();
            c.execute(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (?1, 'old', 1, x'00', 0)",
                [v],
            )
            .unwrap();
        }
        c.execute_batch(
            "INSERT INTO jobs (name, spec, schedule, updated_at, next_number) VALUES ('a', '{}', '{}', 0, 3);
             INSERT INTO executions (job, number, attempt, max_attempts, trigger, state, command, overlap,
               heartbeat_timeout_ms, run_timeout_ms, queue_timeout_ms, kill_grace_ms, backoff_ms, max_backoff_ms,
               queued_at, run_after, finished_at, reason, message)
             VALUES ('a', 1, 1, 1, 'manual', 'failed', 'true', 'allow', 1, 1, 1, 0, 0, 0, 0, 0, 5, 'exit_code', 'exited with code 1'),
                    ('a', 2, 1, 1, 'manual', 'completed', 'true', 'allow', 1, 1, 1, 0, 0, 0, 0, 0, 6, NULL, NULL);
             INSERT INTO events (execution_id, at, kind, to_state, message, actor) VALUES (1, 5, 'transition', 'failed', 'x', 'n');
             DELETE FROM executions WHERE id = 2;",
        )
        .unwrap();
    }
    let url = format!("sqlite://{}", path.display());
    let (store, opened) = open(&url, OpenMode::CreateAndMigrate).await.unwrap();
    assert_eq!(opened.applied_migrations, vec![4, 5, 6, 7]);
    let kept = store.get_execution(1).await.unwrap().unwrap();
    assert_eq!(
        (kept.state, kept.reason, kept.message.as_deref()),
        (
            State::Failed,
            Some(jobward_core::Reason::ExitCode),
            Some("exited with code 1")
        )
    );
    assert_eq!(store.events(1).await.unwrap().len(), 1, "its event is kept");
    conformance::define(&store, vec![conformance::spec("a")], &[]).await;
    let next = store
        .trigger(TriggerParams {
            job: "a".into(),
            actor: "t".into(),
            payload: None,
            idempotency_key: None,
            run_at: None,
            priority: None,
        })
        .await
        .unwrap()
        .execution;
    assert_eq!(
        next.id, 3,
        "id 2 was pruned before the upgrade and is never used again"
    );
    assert_eq!(next.number, 3);
}
