//! The PostgreSQL backend, for several nodes and remote workers on several machines. Nodes
//! coordinate only through PostgreSQL: row locks (`FOR UPDATE`, `SKIP LOCKED`), unique
//! constraints and compare-and-set statements. Every deadline is compared with PostgreSQL's
//! clock, so node and worker clocks do not matter. Maintenance (reaper, scheduler, lost-node
//! settlement, retention) is safe on every node at once; there is no leader.

mod tx;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use jobward_core::deadline::sub;
use jobward_core::{Event, JobSpec, Overlap, Reason, State, Timestamp, transition};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;

use self::tx::{Bind, PgTx};
use crate::error::{corrupt, ts};
use crate::ledger::{StopNodes, Tx, ops};
use crate::rows::{
    EXEC_COLUMNS, EventRecord, ExecRecord, NODE_COLUMNS, NodeRecord, decode_all, dur_ms, summary,
};
use crate::sql;
use crate::types::*;
use crate::{Clock, OpenMode, Opened, Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node: claims, heartbeats, the reaper and the API share them.
const MAX_CONNECTIONS: u32 = 10;
/// How long an operation waits for a free connection before it fails (and is retried).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a transaction that hit a serialization failure, a deadlock or a lost
/// connection before it started committing.
const TX_ATTEMPTS: u32 = 5;

const TIME_COLUMNS: [&str; 15] = [
    "scheduled_for",
    "queued_at",
    "run_after",
    "start_deadline",
    "started_at",
    "heartbeat_at",
    "lease_expires_at",
    "run_deadline",
    "cancel_requested_at",
    "cancel_deadline",
    "finished_at",
    "at",
    "stopped_at",
    "updated_at",
    "next_fire_at",
];

/// A column list whose timestamptz columns leave as milliseconds (see `jw_ms`).
fn in_ms(columns: &str) -> String {
    columns
        .split(',')
        .map(str::trim)
        .map(|c| {
            if TIME_COLUMNS.contains(&c) {
                format!("jw_ms({c}) AS {c}")
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) static EXEC: LazyLock<String> = LazyLock::new(|| in_ms(EXEC_COLUMNS));
pub(crate) static NODE: LazyLock<String> = LazyLock::new(|| in_ms(NODE_COLUMNS));
static EVENT: LazyLock<String> = LazyLock::new(|| {
    in_ms("id, execution_id, at, kind, from_state, to_state, reason, message, actor")
});

pub fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// SQLSTATEs worth retrying a whole transaction for.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
        ),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Store errors from PostgreSQL errors; connection problems say so, without internals.
pub(crate) fn pg_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            StoreError::Database(format!("PostgreSQL unreachable: {e}"))
        }
        sqlx::Error::PoolTimedOut => {
            StoreError::Database("timed out waiting for a PostgreSQL connection".into())
        }
        _ => StoreError::from(e),
    }
}

pub struct PgStore {
    pool: PgPool,
    clock: Clock,
    work: Arc<Notify>,
    url: String,
    errors: Arc<std::sync::atomic::AtomicU64>,
}

/// Runs `$body` in a transaction with `$tx: &mut PgTx` whose `now` is PostgreSQL's clock.
/// Serialization failures, deadlocks and connections lost before the commit are retried; an
/// error during the commit itself is not (it may have committed).
macro_rules! pg_tx {
    ($store:expr, |$tx:ident| $body:block) => {{
        let store: &PgStore = $store;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut txn = match store.pool.begin().await {
                Ok(t) => t,
                Err(e) if retryable(&e) && attempt < TX_ATTEMPTS => {
                    store.count_error();
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    continue;
                }
                Err(e) => {
                    store.count_error();
                    break Err(pg_err(e));
                }
            };
            let now = match store.db_now(&mut *txn).await {
                Ok(n) => n,
                Err(e) if attempt < TX_ATTEMPTS => {
                    let _ = e;
                    store.count_error();
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                    continue;
                }
                Err(e) => break Err(e),
            };
            let (result, retry) = {
                let mut inner = PgTx {
                    conn: &mut *txn,
                    now,
                    offset_ms: store.clock.offset_ms(),
                };
                let $tx: &mut PgTx = &mut inner;
                let r: Result<_> = async { $body }.await;
                let retry = matches!(&r, Err(StoreError::Database(_)) | Err(StoreError::Busy(_)));
                (r, retry)
            };
            match result {
                Ok(v) => match txn.commit().await {
                    Ok(()) => break Ok(v),
                    Err(e) => {
                        store.count_error();
                        break Err(pg_err(e));
                    }
                },
                Err(_) if retry && attempt < TX_ATTEMPTS => {
                    store.count_error();
                    let _ = txn.rollback().await;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    break Err(e);
                }
            }
        }
    }};
}

impl PgStore {
    pub async fn open(
        url: &str,
        mode: OpenMode,
        options: &crate::StoreOptions,
    ) -> Result<(PgStore, Opened)> {
        let open_err = |message: String| StoreError::Open {
            url: redact(url),
            message,
        };
        let idle = options
            .pg_idle_in_transaction_timeout
            .as_millis()
            .to_string();
        let lock = options.pg_lock_timeout.as_millis().to_string();
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| open_err(e.to_string()))?
            .application_name("jobward")
            .options([
                ("idle_in_transaction_session_timeout", idle.as_str()),
                ("lock_timeout", lock.as_str()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let store = PgStore {
            pool,
            clock: Clock::default(),
            work: Arc::new(Notify::new()),
            url: url.to_string(),
            errors: Arc::default(),
        };
        let opened = store.check_schema(mode).await?;
        store.spawn_listener();
        Ok((store, opened))
    }

    async fn check_schema(&self, mode: OpenMode) -> Result<Opened> {
        // Nodes starting together check and migrate one at a time, so exactly one of them
        // creates the schema (and says so).
        let mut conn = self.pool.acquire().await.map_err(pg_err)?;
        sqlx::query("SELECT pg_advisory_lock(hashtext('jobward:migrate'))")
            .execute(&mut *conn)
            .await
            .map_err(pg_err)?;
        let result = self.check_schema_locked(mode).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('jobward:migrate'))")
            .execute(&mut *conn)
            .await;
        result
    }

    async fn check_schema_locked(&self, mode: OpenMode) -> Result<Opened> {
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_err)?;
        let found: Option<i64> = if has_table {
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_err)?
        } else {
            None
        };
        if let Some(found) = found
            && found > expected
        {
            return Err(StoreError::SchemaTooNew { found, expected });
        }
        let found_v = found.unwrap_or(0);
        match mode {
            OpenMode::Existing if found_v < expected => Err(StoreError::SchemaTooOld {
                found: found_v,
                expected,
            }),
            OpenMode::Existing => Ok(Opened::default()),
            OpenMode::CreateAndMigrate => {
                // sqlx takes an advisory lock: nodes starting together migrate once.
                MIGRATOR
                    .run(&self.pool)
                    .await
                    .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
                let applied = MIGRATOR
                    .iter()
                    .map(|m| m.version)
                    .filter(|v| *v > found_v)
                    .collect();
                Ok(Opened {
                    created: found.is_none(),
                    applied_migrations: applied,
                })
            }
        }
    }

    /// LISTEN for new work and wake claimers. The listener is rebuilt after any error, and a
    /// ping it sends itself every few seconds proves the connection is still alive: a listener
    /// that silently kept a dead connection would otherwise leave work sitting until restart.
    fn spawn_listener(&self) {
        let pool = self.pool.clone();
        let work = self.work.clone();
        let errors = self.errors.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match listen(&pool, &work).await {
                    Ok(()) => return, // the pool was closed
                    Err(e) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(error = %e, "work listener lost its connection; reconnecting (claims poll meanwhile)");
                        // Notifications may have been missed: let claimers look.
                        work.notify_waiters();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    fn count_error(&self) {
        self.errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn db_now(&self, conn: &mut PgConnection) -> Result<Timestamp> {
        sqlx::query_scalar("SELECT clock_timestamp() + $1 * interval '1 millisecond'")
            .bind(self.clock.offset_ms() as f64)
            .fetch_one(conn)
            .await
            .map_err(pg_err)
    }

    async fn rows(&self, q: String, binds: Vec<Bind<'_>>) -> Result<Vec<ExecutionRow>> {
        let mut query = sqlx::query_as::<_, ExecRecord>(sql(q));
        for b in binds {
            query = match b {
                Bind::I(v) => query.bind(v),
                Bind::S(v) => query.bind(v.to_string()),
                Bind::T(v) => query.bind(v),
            };
        }
        decode_all(query.fetch_all(&self.pool).await.map_err(pg_err)?)
    }

    async fn count(&self, q: &'static str, now: Timestamp) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(q)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(n as u64)
    }

    pub fn url(&self) -> String {
        redact(&self.url)
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(s, rest)| rest.split_once('@').map(|(auth, host)| (s, auth, host)))
    {
        Some((scheme, auth, host)) if auth.contains(':') => {
            format!(
                "{scheme}://{}:***@{host}",
                auth.split(':').next().unwrap_or_default()
            )
        }
        _ => url.to_string(),
    }
}

async fn listen(pool: &PgPool, work: &Notify) -> std::result::Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("jobward_work").await?;
    let ping_every = Duration::from_secs(5);
    let mut last_heard = tokio::time::Instant::now();
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    loop {
        tokio::select! {
            n = listener.try_recv() => match n? {
                Some(_) => {
                    last_heard = tokio::time::Instant::now();
                    work.notify_waiters();
                    work.notify_one();
                }
                None => return Err(sqlx::Error::Io(std::io::Error::other("listener connection lost"))),
            },
            _ = tokio::time::sleep_until(next_ping) => {
                if pool.is_closed() {
                    return Ok(());
                }
                if last_heard.elapsed() > ping_every * 3 {
                    return Err(sqlx::Error::Io(std::io::Error::other("listener heard nothing, not even its own pings")));
                }
                // A failed ping is fine here: the pool may be reconnecting.
                let _ = sqlx::query("SELECT pg_notify('jobward_work', 'ping')").execute(pool).await;
                next_ping = tokio::time::Instant::now() + ping_every;
            }
        }
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn work_signal(&self) -> Option<Arc<Notify>> {
        Some(self.work.clone())
    }

    fn database_errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn now(&self) -> Result<Timestamp> {
        let mut conn = self.pool.acquire().await.map_err(pg_err)?;
        self.db_now(&mut conn).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn backup(&self, _dest: &std::path::Path) -> Result<()> {
        Err(StoreError::Unsupported(format!(
            "jobward backup copies SQLite ledgers; for PostgreSQL use pg_dump, e.g. `pg_dump --format=custom --file=jobward.dump '{}'`",
            self.url()
        )))
    }

    async fn register_node(&self, node: NewNode) -> Result<RegisterOutcome> {
        pg_tx!(self, |tx| { ops::register_node(tx, &node).await })
    }

    async fn stop_node(&self, id: &str, reason: &str) -> Result<()> {
        pg_tx!(self, |tx| {
            tx.stop_nodes(StopNodes::One { id, name: None }, reason)
                .await
        })
    }

    async fn settle_lost_nodes(&self, actor: &str) -> Result<ReapReport> {
        pg_tx!(self, |tx| { ops::settle_lost_nodes(tx, actor).await })
    }

    async fn settle_orphans(
        &self,
        p: RecoverParams,
        orphans: Vec<(LeaseRef, String)>,
    ) -> Result<ReapReport> {
        pg_tx!(self, |tx| {
            ops::settle_orphans(tx, &p, &orphans, Reason::NodeRestarted).await
        })
    }

    async fn sync_jobs(&self, p: SyncJobs) -> Result<SyncReport> {
        pg_tx!(self, |tx| {
            // Nodes starting together sync one after the other.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('jobward:sync'))")
                .execute(&mut *tx.conn)
                .await
                .map_err(pg_err)?;
            ops::sync_jobs(tx, &p).await
        })
    }

    async fn trigger(&self, p: TriggerParams) -> Result<Created> {
        pg_tx!(self, |tx| { ops::trigger(tx, &p).await })
    }

    async fn fire_due(&self, actor: &str) -> Result<FireReport> {
        pg_tx!(self, |tx| { ops::fire_due(tx, actor).await })
    }

    async fn complete(&self, p: CompleteParams) -> Result<Settled> {
        let result: Result<std::result::Result<Settled, StoreError>> = pg_tx!(self, |tx| {
            let r = ops::complete(tx, &p).await;
            // The fault tests freeze a node here, inside the transaction, row lock held.
            fail::fail_point!("complete_before_commit");
            r
        });
        result?
    }

    async fn report_progress(&self, p: ProgressParams) -> Result<ExecutionRow> {
        if let Some(v) = p.progress.filter(|v| !(0.0..=1.0).contains(v)) {
            return Err(StoreError::Invalid(format!(
                "progress must be between 0 and 1, got {v}"
            )));
        }
        let result: Result<std::result::Result<ExecutionRow, StoreError>> =
            pg_tx!(self, |tx| { ops::report_progress(tx, &p).await });
        result?
    }

    async fn release(&self, p: ReleaseParams) -> Result<ReleaseReport> {
        pg_tx!(self, |tx| { ops::release(tx, &p).await })
    }

    async fn cancel(&self, p: CancelParams) -> Result<CancelOutcome> {
        pg_tx!(self, |tx| { ops::cancel(tx, &p).await })
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let recs: Vec<NodeRecord> = sqlx::query_as(sql(format!(
            "SELECT {} FROM nodes ORDER BY started_at DESC",
            *NODE
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        recs.into_iter().map(NodeRecord::into_row).collect()
    }

    async fn orphans_of(&self, name: &str, node_id: &str) -> Result<Vec<ExecutionRow>> {
        let q = format!(
            "SELECT {} FROM executions WHERE state = 'running' AND node_id IN (SELECT id FROM nodes WHERE name = $1 AND id <> $2) ORDER BY id",
            *EXEC
        );
        self.rows(q, vec![Bind::S(name), Bind::S(node_id)]).await
    }

    async fn list_jobs(&self) -> Result<Vec<JobRow>> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM jobs ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(job) = self.get_job(&name).await? {
                out.push(job);
            }
        }
        Ok(out)
    }

    async fn get_job(&self, name: &str) -> Result<Option<JobRow>> {
        let row: Option<(String, bool, bool, Option<Timestamp>)> =
            sqlx::query_as("SELECT spec, defined, paused, next_fire_at FROM jobs WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_err)?;
        let Some((spec, defined, paused, next_fire_at)) = row else {
            return Ok(None);
        };
        let spec: JobSpec = serde_json::from_str(&spec)
            .map_err(|e| corrupt(format!("job '{name}' definition: {e}")))?;
        let live = self
            .rows(format!("SELECT {} FROM executions WHERE job = $1 AND state IN ('queued', 'running') ORDER BY id", *EXEC), vec![Bind::S(name)])
            .await?;
        let last = self
            .rows(
                format!("SELECT {} FROM executions WHERE job = $1 AND finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1", *EXEC),
                vec![Bind::S(name)],
            )
            .await?;
        Ok(Some(JobRow {
            spec,
            defined,
            paused,
            next_fire_at,
            live: live.iter().map(summary).collect(),
            last_finished: last.first().map(summary),
        }))
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        let res = sqlx::query("UPDATE jobs SET paused = $1, updated_at = now() WHERE name = $2")
            .bind(paused)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        if res.rows_affected() == 0 {
            return Err(StoreError::JobNotFound(name.to_string()));
        }
        Ok(())
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<ExecutionRow>> {
        if p.limit == 0 {
            return Ok(vec![]);
        }
        pg_tx!(self, |tx| {
            // Candidates are taken with SKIP LOCKED, so concurrent claimers never wait for
            // each other's rows. The occupancy filter here is only a hint; the authority is
            // the per-key row lock below.
            let q = format!(
                "WITH c AS (SELECT e.id FROM executions e WHERE e.state = 'queued' AND e.runner = $1 AND e.run_after <= $2 \
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.name = e.job AND j.paused) \
                   AND (e.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM concurrency_limits l WHERE l.key = e.concurrency_key \
                        AND (SELECT count(*) FROM executions r WHERE r.state = 'running' AND r.concurrency_key = e.concurrency_key) >= l.max_running)) \
                   AND (e.overlap <> 'queue' OR NOT EXISTS (SELECT 1 FROM executions r WHERE r.job = e.job AND r.state = 'running')) \
                   ORDER BY e.run_after, e.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 SELECT {} FROM executions WHERE id IN (SELECT id FROM c) ORDER BY run_after, id",
                *EXEC
            );
            let candidates: Vec<ExecRecord> = sqlx::query_as(sql(q))
                .bind(&p.runner)
                .bind(tx.now)
                .bind((p.limit as i64) * 4)
                .fetch_all(&mut *tx.conn)
                .await
                .map_err(pg_err)?;
            let candidates = decode_all(candidates)?;
            // Occupancy per key, read once under the key's row lock: claimers of one key on
            // every node take turns, and a slot is counted from the running rows (invariant 3).
            let mut slots: HashMap<String, Option<(i64, i64)>> = HashMap::new();
            let mut queue_jobs: HashMap<String, bool> = HashMap::new();
            let mut claimed = Vec::new();
            for row in candidates {
                if claimed.len() as u32 >= p.limit {
                    break;
                }
                if let Some(key) = &row.concurrency_key {
                    if !slots.contains_key(key) {
                        let limit: Option<i64> = sqlx::query_scalar(
                            "SELECT max_running FROM concurrency_limits WHERE key = $1 FOR UPDATE",
                        )
                        .bind(key)
                        .fetch_optional(&mut *tx.conn)
                        .await
                        .map_err(pg_err)?;
                        let occupancy = match limit {
                            None => None,
                            Some(limit) => {
                                let running: i64 =
                                    sqlx::query_scalar("SELECT count(*) FROM executions WHERE state = 'running' AND concurrency_key = $1")
                                        .bind(key)
                                        .fetch_one(&mut *tx.conn)
                                        .await
                                        .map_err(pg_err)?;
                                Some((limit, running))
                            }
                        };
                        slots.insert(key.clone(), occupancy);
                    }
                    if let Some(Some((limit, running))) = slots.get(key)
                        && running >= limit
                    {
                        continue;
                    }
                }
                if row.overlap == Overlap::Queue {
                    if !queue_jobs.contains_key(&row.job) {
                        sqlx::query("SELECT 1 FROM jobs WHERE name = $1 FOR UPDATE")
                            .bind(&row.job)
                            .execute(&mut *tx.conn)
                            .await
                            .map_err(pg_err)?;
                        let busy: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM executions WHERE job = $1 AND state = 'running')")
                            .bind(&row.job)
                            .fetch_one(&mut *tx.conn)
                            .await
                            .map_err(pg_err)?;
                        queue_jobs.insert(row.job.clone(), busy);
                    }
                    if queue_jobs.insert(row.job.clone(), true) == Some(true) {
                        continue;
                    }
                }
                transition(row.state, None, Event::Claim)?;
                let token = uuid::Uuid::new_v4().to_string();
                let rec: Option<ExecRecord> = sqlx::query_as(sql(format!(
                    "UPDATE executions SET state = 'running', started_at = $1, heartbeat_at = $1, lease_owner = $2, lease_token = $3, \
                     lease_expires_at = $1 + heartbeat_timeout_ms * interval '1 millisecond', \
                     run_deadline = $1 + (run_timeout_ms + kill_grace_ms + $4) * interval '1 millisecond', node_id = $5 \
                     WHERE id = $6 AND state = 'queued' AND attempt = $7 AND lease_token IS NULL RETURNING {}",
                    *EXEC
                )))
                .bind(tx.now)
                .bind(&p.owner)
                .bind(&token)
                .bind(dur_ms(jobward_core::deadline::OWNER_MARGIN))
                .bind(p.node_id.as_deref())
                .bind(row.id)
                .bind(row.attempt as i64)
                .fetch_optional(&mut *tx.conn)
                .await
                .map_err(pg_err)?;
                let Some(rec) = rec else { continue };
                let claimed_row = rec.into_row()?;
                if let Some(Some((_, running))) =
                    row.concurrency_key.as_ref().and_then(|k| slots.get_mut(k))
                {
                    *running += 1;
                }
                let text = format!(
                    "claimed by {} (lease until {})",
                    p.owner,
                    claimed_row.lease_expires_at.map(ts).unwrap_or_default()
                );
                ops::event(
                    tx,
                    row.id,
                    EventKind::Transition,
                    Some(State::Queued),
                    Some(State::Running),
                    None,
                    &text,
                    &p.owner,
                )
                .await?;
                claimed.push(claimed_row);
            }
            Ok(claimed)
        })
    }

    async fn record_process(&self, lease: &LeaseRef, process: &ProcessInfo) -> Result<()> {
        pg_tx!(self, |tx| {
            let res = sqlx::query(
                "UPDATE executions SET pid = $1, pgid = $2, proc_start_ticks = $3, boot_id = $4 \
                 WHERE id = $5 AND state = 'running' AND attempt = $6 AND lease_token = $7",
            )
            .bind(process.pid as i64)
            .bind(process.pgid as i64)
            .bind(process.start_ticks as i64)
            .bind(process.boot_id.as_deref())
            .bind(lease.id)
            .bind(lease.attempt as i64)
            .bind(&lease.token)
            .execute(&mut *tx.conn)
            .await
            .map_err(pg_err)?;
            if res.rows_affected() != 1 {
                let row = tx
                    .load(lease.id)
                    .await?
                    .ok_or(StoreError::ExecutionNotFound(lease.id))?;
                return Err(StoreError::LeaseLost {
                    id: lease.id,
                    state: row.state,
                    reason: row.reason,
                });
            }
            let text = format!(
                "process started: pid {} in process group {}",
                process.pid, process.pgid
            );
            ops::event(
                tx,
                lease.id,
                EventKind::Note,
                None,
                None,
                None,
                &text,
                "executor",
            )
            .await
        })
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
        pg_tx!(self, |tx| {
            let mut report = HeartbeatReport {
                node_ok: true,
                ..Default::default()
            };
            if let Some((node_id, lease)) = &p.node {
                let res = sqlx::query("UPDATE nodes SET heartbeat_at = $1, lease_expires_at = $2 WHERE id = $3 AND stopped_at IS NULL")
                    .bind(tx.now)
                    .bind(jobward_core::deadline::add(tx.now, *lease))
                    .bind(node_id)
                    .execute(&mut *tx.conn)
                    .await
                    .map_err(pg_err)?;
                report.node_ok = res.rows_affected() == 1;
                // No node heartbeat for a whole node lease, or PostgreSQL restarted since the
                // last one: nobody could write. Leases count again from now.
                sqlx::query(
                    "UPDATE ledger_liveness SET alive_since = CASE WHEN $1 - last_beat > $2 * interval '1 millisecond' \
                     OR last_beat < pg_postmaster_start_time() THEN $1 ELSE alive_since END, last_beat = $1 WHERE id = 1",
                )
                .bind(tx.now)
                .bind(dur_ms(*lease) as f64)
                .execute(&mut *tx.conn)
                .await
                .map_err(pg_err)?;
            }
            if !p.leases.is_empty() {
                let phased: Vec<i64> = p
                    .leases
                    .iter()
                    .filter(|b| b.phase.is_some())
                    .map(|b| b.lease.id)
                    .collect();
                let old_phases: HashMap<i64, Option<String>> = if phased.is_empty() {
                    HashMap::new()
                } else {
                    sqlx::query_as::<_, (i64, Option<String>)>(
                        "SELECT id, phase FROM executions WHERE id = ANY($1)",
                    )
                    .bind(&phased)
                    .fetch_all(&mut *tx.conn)
                    .await
                    .map_err(pg_err)?
                    .into_iter()
                    .collect()
                };
                // One statement renews every lease.
                let ids: Vec<i64> = p.leases.iter().map(|b| b.lease.id).collect();
                let attempts: Vec<i64> = p.leases.iter().map(|b| b.lease.attempt as i64).collect();
                let tokens: Vec<String> = p.leases.iter().map(|b| b.lease.token.clone()).collect();
                let progress: Vec<Option<f64>> = p.leases.iter().map(|b| b.progress).collect();
                let phases: Vec<Option<String>> =
                    p.leases.iter().map(|b| b.phase.clone()).collect();
                let checkpoints: Vec<Option<String>> = p
                    .leases
                    .iter()
                    .map(|b| b.checkpoint.as_ref().map(|c| c.to_string()))
                    .collect();
                let renewed: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
                    "UPDATE executions e SET heartbeat_at = $1, lease_expires_at = $1 + e.heartbeat_timeout_ms * interval '1 millisecond', \
                     progress = COALESCE(v.progress, e.progress), phase = COALESCE(v.phase, e.phase), \
                     checkpoint = COALESCE(v.checkpoint, e.checkpoint) \
                     FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::float8[], $7::text[], $8::text[]) \
                          AS v(id, attempt, token, progress, phase, checkpoint) \
                     WHERE e.id = v.id AND e.attempt = v.attempt AND e.lease_token = v.token \
                       AND e.state = 'running' AND e.lease_owner = $2 \
                     RETURNING e.id, e.cancel_reason, e.phase",
                )
                .bind(tx.now)
                .bind(&p.owner)
                .bind(&ids)
                .bind(&attempts)
                .bind(&tokens)
                .bind(&progress)
                .bind(&phases)
                .bind(&checkpoints)
                .fetch_all(&mut *tx.conn)
                .await
                .map_err(pg_err)?;
                for (id, cancel, phase) in renewed {
                    report.renewed.push(id);
                    if let Some(r) = cancel.and_then(|c| c.parse::<Reason>().ok()) {
                        report.cancel_requested.push((id, r));
                    }
                    if let (Some(old), Some(new)) = (old_phases.get(&id), phase)
                        && old.as_deref() != Some(new.as_str())
                    {
                        ops::note_phase(tx, id, &new, &p.owner).await?;
                    }
                }
            }
            let renewed: HashSet<i64> = report.renewed.iter().copied().collect();
            for b in p.leases.iter().filter(|b| !renewed.contains(&b.lease.id)) {
                report
                    .lost
                    .extend(ops::not_renewed(tx, &b.lease, &p.owner).await?);
            }
            Ok(report)
        })
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<(ExecutionId, Reason)>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, cancel_reason FROM executions WHERE state = 'running' AND cancel_deadline IS NOT NULL AND lease_owner = $1")
                .bind(owner)
                .fetch_all(&self.pool)
                .await
                .map_err(pg_err)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, r)| r.parse().ok().map(|r| (id, r)))
            .collect())
    }

    async fn reap(&self, p: ReapParams) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        let batch = p.batch.max(1);
        loop {
            let settled: Vec<Recovered> = pg_tx!(self, |tx| {
                // As for nodes, a lease that expired while PostgreSQL was down counts from the
                // moment it came back: the owner could not renew it.
                let q = format!(
                    "SELECT {} FROM executions WHERE id IN ( \
                       SELECT id FROM executions WHERE state = 'running' AND cancel_deadline <= $1 \
                       UNION SELECT id FROM executions WHERE state = 'running' AND run_deadline <= $1 \
                       UNION SELECT id FROM executions WHERE state = 'running' AND lease_expires_at <= $1 \
                             AND $1 >= pg_postmaster_start_time() + heartbeat_timeout_ms * interval '1 millisecond' \
                             AND $1 >= (SELECT alive_since FROM ledger_liveness) + heartbeat_timeout_ms * interval '1 millisecond' \
                       UNION SELECT id FROM executions WHERE state = 'queued' AND start_deadline <= $1 \
                     ) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    *EXEC
                );
                let due: Vec<ExecRecord> = sqlx::query_as(sql(q))
                    .bind(tx.now)
                    .bind(batch as i64)
                    .fetch_all(&mut *tx.conn)
                    .await
                    .map_err(pg_err)?;
                ops::settle_due(tx, decode_all(due)?, &p.actor).await
            })?;
            let n = settled.len();
            report.recovered.extend(settled);
            if n < batch as usize {
                return Ok(report);
            }
        }
    }

    async fn cleanup(&self, p: CleanupParams) -> Result<CleanupReport> {
        let cutoff = sub(self.now().await?, p.stale_after);
        let q = format!(
            "SELECT {} FROM executions WHERE state = 'running' AND heartbeat_at <= $1 ORDER BY id",
            *EXEC
        );
        let candidates = self.rows(q, vec![Bind::T(cutoff)]).await?;
        let mut report = CleanupReport {
            dry_run: !p.apply,
            candidates,
            ..Default::default()
        };
        if !p.apply || report.candidates.is_empty() {
            return Ok(report);
        }
        let (changed, raced) = pg_tx!(self, |tx| {
            ops::cleanup_apply(tx, &report.candidates, &p).await
        })?;
        report.changed = changed;
        report.raced = raced;
        Ok(report)
    }

    async fn prune(&self, p: PruneParams) -> Result<PruneReport> {
        let jobs: Vec<(String, String)> =
            sqlx::query_as("SELECT name, spec FROM jobs ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(pg_err)?;
        let mut report = PruneReport::default();
        let batch = p.batch.max(1) as i64;
        for (name, spec) in jobs {
            let Ok(spec) = serde_json::from_str::<JobSpec>(&spec) else {
                continue;
            };
            loop {
                let deleted: Vec<i64> = pg_tx!(self, |tx| {
                    let mut ids: Vec<i64> = Vec::new();
                    if let Some(keep) = spec.history.keep_last {
                        ids.extend(
                            sqlx::query_scalar::<_, i64>(
                                "SELECT id FROM executions WHERE job = $1 AND finished_at IS NOT NULL ORDER BY id DESC OFFSET $2 LIMIT $3",
                            )
                            .bind(&name)
                            .bind(keep as i64)
                            .bind(batch)
                            .fetch_all(&mut *tx.conn)
                            .await
                            .map_err(pg_err)?,
                        );
                    }
                    if let Some(age) = spec.history.max_age {
                        ids.extend(
                            sqlx::query_scalar::<_, i64>(
                                "SELECT id FROM executions WHERE job = $1 AND finished_at IS NOT NULL AND finished_at < $2 LIMIT $3",
                            )
                            .bind(&name)
                            .bind(sub(tx.now, age))
                            .bind(batch)
                            .fetch_all(&mut *tx.conn)
                            .await
                            .map_err(pg_err)?,
                        );
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    let done: Vec<i64> =
                        sqlx::query_scalar("DELETE FROM executions WHERE finished_at IS NOT NULL AND id = ANY($1) RETURNING id")
                            .bind(&ids)
                            .fetch_all(&mut *tx.conn)
                            .await
                            .map_err(pg_err)?;
                    Ok(done)
                })?;
                let n = deleted.len();
                report
                    .deleted
                    .extend(deleted.into_iter().map(|id| (name.clone(), id)));
                if n == 0 {
                    break;
                }
            }
        }
        Ok(report)
    }

    async fn list_executions(&self, f: ExecutionFilter) -> Result<Vec<ExecutionRow>> {
        let mut q = format!("SELECT {} FROM executions WHERE true", *EXEC);
        let mut binds: Vec<Bind> = Vec::new();
        fn arg<'a>(binds: &mut Vec<Bind<'a>>, b: Bind<'a>) -> String {
            binds.push(b);
            format!("${}", binds.len())
        }
        if let Some(job) = &f.job {
            let n = arg(&mut binds, Bind::S(job));
            q.push_str(&format!(" AND job = {n}"));
        }
        if !f.states.is_empty() {
            let list: Vec<String> = f
                .states
                .iter()
                .map(|s| arg(&mut binds, Bind::S(s.as_str())))
                .collect();
            q.push_str(&format!(" AND state IN ({})", list.join(", ")));
        }
        if let Some(d) = f.stale_after {
            let n = arg(&mut binds, Bind::T(sub(self.now().await?, d)));
            q.push_str(&format!(" AND state = 'running' AND heartbeat_at <= {n}"));
        }
        if let Some(since) = f.since {
            let n = arg(&mut binds, Bind::T(since));
            q.push_str(&format!(" AND queued_at >= {n}"));
        }
        if let Some(until) = f.until {
            let n = arg(&mut binds, Bind::T(until));
            q.push_str(&format!(" AND queued_at < {n}"));
        }
        if let Some(before) = f.before_id {
            let n = arg(&mut binds, Bind::I(before));
            q.push_str(&format!(" AND id < {n}"));
        }
        let n = arg(&mut binds, Bind::I(f.limit.max(1) as i64));
        q.push_str(&format!(" ORDER BY id DESC LIMIT {n}"));
        self.rows(q, binds).await
    }

    async fn get_execution(&self, id: ExecutionId) -> Result<Option<ExecutionRow>> {
        Ok(self
            .rows(
                format!("SELECT {} FROM executions WHERE id = $1", *EXEC),
                vec![Bind::I(id)],
            )
            .await?
            .pop())
    }

    async fn events(&self, id: ExecutionId) -> Result<Vec<EventRow>> {
        let recs: Vec<EventRecord> = sqlx::query_as(sql(format!(
            "SELECT {} FROM events WHERE execution_id = $1 ORDER BY id",
            *EVENT
        )))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        recs.into_iter().map(EventRecord::into_row).collect()
    }

    async fn health(&self, p: HealthParams) -> Result<HealthMetrics> {
        let now = self.now().await?;
        let stale = match p.stale_after {
            Some(d) => self.count("SELECT count(*) FROM executions WHERE state = 'running' AND heartbeat_at <= $1", sub(now, d)).await?,
            None => self.count("SELECT count(*) FROM executions WHERE state = 'running' AND lease_expires_at <= $1", now).await?,
        };
        Ok(HealthMetrics {
            running_executions: self.count("SELECT count(*) FROM executions WHERE state = 'running' AND $1 IS NOT NULL", now).await?,
            queued_executions: self.count("SELECT count(*) FROM executions WHERE state = 'queued' AND $1 IS NOT NULL", now).await?,
            long_running_executions: self
                .count("SELECT count(*) FROM executions WHERE state = 'running' AND started_at <= $1", sub(now, p.long_running_after))
                .await?,
            stale_executions: stale,
            overdue_queued_executions: self.count("SELECT count(*) FROM executions WHERE state = 'queued' AND start_deadline <= $1", now).await?,
            recent_executions_24h: self
                .count("SELECT count(*) FROM executions WHERE queued_at >= $1", sub(now, Duration::from_secs(86_400)))
                .await?,
            live_nodes: self.count("SELECT count(*) FROM nodes WHERE stopped_at IS NULL AND lease_expires_at > $1", now).await?,
            timestamp: now,
        })
    }

    async fn metrics(&self) -> Result<MetricsSnapshot> {
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM executions GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(pg_err)?;
        let oldest: Option<Timestamp> =
            sqlx::query_scalar("SELECT MIN(heartbeat_at) FROM executions WHERE state = 'running'")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_err)?;
        let slots: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT l.key, (SELECT count(*) FROM executions e WHERE e.state = 'running' AND e.concurrency_key = l.key), \
             l.max_running FROM concurrency_limits l ORDER BY l.key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(MetricsSnapshot {
            by_state: State::ALL
                .into_iter()
                .map(|st| {
                    (
                        st,
                        by_state
                            .iter()
                            .find(|(s, _)| s == st.as_str())
                            .map(|(_, n)| *n as u64)
                            .unwrap_or(0),
                    )
                })
                .collect(),
            oldest_heartbeat_at: oldest,
            slots: slots
                .into_iter()
                .map(|(key, used, limit)| SlotUse {
                    key,
                    used: used as u64,
                    limit: limit as u64,
                })
                .collect(),
            now: self.now().await?,
        })
    }

    async fn audit(&self, p: AuditParams) -> Result<Vec<Violation>> {
        let now = self.now().await?.timestamp_millis();
        let late = now - dur_ms(p.tolerance);
        let q = crate::audit::queries(|c| format!("jw_ms({c})"));
        let pool = &self.pool;
        let rows = crate::audit::Rows {
            bad_state: sqlx::query_as(sql(q.bad_state))
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
            bad_reason: sqlx::query_as(sql(q.bad_reason))
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
            overdue: sqlx::query_as(sql(q.overdue))
                .bind(late)
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
            leaseless: sqlx::query_scalar(sql(q.leaseless))
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
            over_limit: sqlx::query_as(sql(q.over_limit))
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
            dead_owner: sqlx::query_as(sql(q.dead_owner))
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
            silent: sqlx::query_as(sql(q.silent))
                .fetch_all(pool)
                .await
                .map_err(pg_err)?,
        };
        Ok(crate::audit::violations(rows, now, late))
    }
}
