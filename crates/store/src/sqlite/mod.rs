//! The embedded SQLite backend: one file, WAL, one writer connection per process, and every
//! write transaction opened with `BEGIN IMMEDIATE` under a busy timeout, retried while
//! another process holds the lock, so that `SQLITE_BUSY` never reaches a caller.

mod tx;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use jobward_core::deadline::sub;
use jobward_core::{Event, JobSpec, Overlap, Reason, State, Timestamp, transition};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};

use self::tx::SqliteTx;
use crate::error::ts;
use crate::ledger::{StopNodes, Tx, ops};
use crate::rows::{
    EXEC_COLUMNS, EventRecord, ExecRecord, NODE_COLUMNS, NodeRecord, decode_all, dur_ms, from_ms,
    ms, summary,
};
use crate::sql;
use crate::types::*;
use crate::{Clock, OpenMode, Opened, Result, Store, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The reaper's selection of live executions past a deadline (`?1` = now in ms, `?2` = batch).
/// Each branch reads one partial index over live rows only, so the cost follows what is due,
/// not the size of the history. Public so that benchmarks can show its query plan.
pub const REAPER_DUE: &str = "WHERE id IN ( \
    SELECT id FROM executions WHERE state = 'running' AND cancel_deadline <= ?1 \
    UNION SELECT id FROM executions WHERE state = 'running' AND run_deadline <= ?1 \
    UNION SELECT id FROM executions WHERE state = 'running' AND lease_expires_at <= ?1 \
          AND (SELECT alive_since FROM ledger_liveness) + heartbeat_timeout_ms <= ?1 \
    UNION SELECT id FROM executions WHERE state = 'queued' AND start_deadline <= ?1 \
    ) ORDER BY id LIMIT ?2";

/// How long one attempt to take the write lock waits inside SQLite.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts before a writer gives up with `StoreError::Busy`.
const BUSY_ATTEMPTS: u32 = 12;

/// `sqlite://PATH` or `sqlite:PATH` → PATH.
pub fn path_from_url(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() || rest == ":memory:" {
        return None;
    }
    Some(PathBuf::from(rest))
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 5 || c & 0xff == 6),
        _ => false,
    }
}

fn store_err(e: sqlx::Error) -> StoreError {
    if is_busy(&e) {
        StoreError::Busy(BUSY_TIMEOUT)
    } else {
        StoreError::from(e)
    }
}

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    clock: Clock,
    url: String,
    errors: std::sync::atomic::AtomicU64,
}

/// Runs `$body` in a `BEGIN IMMEDIATE` transaction with `$now` read after the write lock is
/// held, so timestamps follow commit order. Retries while the database is locked.
macro_rules! write_tx {
    ($store:expr, |$conn:ident, $now:ident| $body:block) => {{
        let store: &SqliteStore = $store;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut tx = match store.writer.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => tx,
                Err(e) if is_busy(&e) && attempt < BUSY_ATTEMPTS => {
                    store
                        .errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Err(e) if is_busy(&e) => break Err(StoreError::Busy(BUSY_TIMEOUT * BUSY_ATTEMPTS)),
                Err(e) => break Err(store_err(e)),
            };
            let $now: Timestamp = store.clock.now();
            let result = async {
                let $conn: &mut SqliteConnection = &mut *tx;
                $body
            }
            .await;
            match result {
                Ok(v) => match tx.commit().await {
                    Ok(()) => break Ok(v),
                    Err(e) if is_busy(&e) && attempt < BUSY_ATTEMPTS => continue,
                    Err(e) => break Err(store_err(e)),
                },
                Err(StoreError::Busy(_)) if attempt < BUSY_ATTEMPTS => {
                    let _ = tx.rollback().await;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    break Err(e);
                }
            }
        }
    }};
}

impl SqliteStore {
    pub async fn open(url: &str, path: &Path, mode: OpenMode) -> Result<(SqliteStore, Opened)> {
        let open_err = |message: String| StoreError::Open {
            url: url.to_string(),
            message,
        };
        let exists = path.exists();
        if !exists {
            if mode == OpenMode::Existing {
                return Err(StoreError::Missing(url.to_string()));
            }
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(open_err(format!(
                    "directory {} does not exist",
                    parent.display()
                )));
            }
        } else if path.is_dir() {
            return Err(open_err("it is a directory".into()));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(mode == OpenMode::CreateAndMigrate)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let connect = |max: u32| {
            SqlitePoolOptions::new()
                .max_connections(max)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts.clone())
        };
        let writer = connect(1).await.map_err(|e| open_err(e.to_string()))?;
        let reader = connect(4).await.map_err(|e| open_err(e.to_string()))?;
        let store = SqliteStore {
            writer,
            reader,
            clock: Clock::default(),
            url: url.to_string(),
            errors: Default::default(),
        };
        let opened = store.check_schema(mode, !exists).await?;
        Ok((store, opened))
    }

    async fn applied_version(&self) -> Result<Option<i64>> {
        let has_table: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(store_err)?;
        if has_table == 0 {
            return Ok(None);
        }
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.reader)
                .await
                .map_err(store_err)?;
        Ok(v)
    }

    async fn check_schema(&self, mode: OpenMode, created: bool) -> Result<Opened> {
        let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let found = self.applied_version().await?;
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
                MIGRATOR
                    .run(&self.writer)
                    .await
                    .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
                let applied = MIGRATOR
                    .iter()
                    .map(|m| m.version)
                    .filter(|v| *v > found_v)
                    .collect();
                Ok(Opened {
                    created,
                    applied_migrations: applied,
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn fetch_rows(&self, q: String, binds: Vec<Bind>) -> Result<Vec<ExecutionRow>> {
        let s = sql(q);
        let mut query = sqlx::query_as::<_, ExecRecord>(s);
        for b in binds {
            query = match b {
                Bind::I(v) => query.bind(v),
                Bind::S(v) => query.bind(v),
            };
        }
        decode_all(query.fetch_all(&self.reader).await.map_err(store_err)?)
    }

    async fn count(&self, q: &'static str, binds: &[i64]) -> Result<u64> {
        let mut query = sqlx::query_scalar::<_, i64>(q);
        for b in binds {
            query = query.bind(*b);
        }
        Ok(query.fetch_one(&self.reader).await.map_err(store_err)? as u64)
    }
}

enum Bind {
    I(i64),
    S(String),
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn database_errors(&self) -> u64 {
        self.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn now(&self) -> Result<Timestamp> {
        Ok(self.clock.now())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn backup(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            return Err(StoreError::Invalid(format!(
                "{} already exists; a backup is written to a new file",
                dest.display()
            )));
        }
        let text = dest.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a UTF-8 path", dest.display()))
        })?;
        // VACUUM INTO reads one consistent snapshot while writers carry on (WAL).
        sqlx::query("VACUUM INTO ?")
            .bind(text)
            .execute(&self.reader)
            .await
            .map_err(|e| StoreError::Database(format!("backup to {text} failed: {e}")))?;
        Ok(())
    }

    async fn register_node(&self, node: NewNode) -> Result<RegisterOutcome> {
        write_tx!(self, |conn, now| {
            ops::register_node(&mut SqliteTx { conn, now }, &node).await
        })
    }

    async fn stop_node(&self, id: &str, reason: &str) -> Result<()> {
        write_tx!(self, |conn, now| {
            SqliteTx { conn, now }
                .stop_nodes(StopNodes::One { id, name: None }, reason)
                .await
        })
    }

    async fn settle_lost_nodes(&self, actor: &str) -> Result<ReapReport> {
        write_tx!(self, |conn, now| {
            ops::settle_lost_nodes(&mut SqliteTx { conn, now }, actor).await
        })
    }

    async fn settle_orphans(
        &self,
        p: RecoverParams,
        orphans: Vec<(LeaseRef, String)>,
    ) -> Result<ReapReport> {
        write_tx!(self, |conn, now| {
            ops::settle_orphans(
                &mut SqliteTx { conn, now },
                &p,
                &orphans,
                Reason::NodeRestarted,
            )
            .await
        })
    }

    async fn sync_jobs(&self, p: SyncJobs) -> Result<SyncReport> {
        write_tx!(self, |conn, now| {
            ops::sync_jobs(&mut SqliteTx { conn, now }, &p).await
        })
    }

    async fn trigger(&self, p: TriggerParams) -> Result<Created> {
        write_tx!(self, |conn, now| {
            ops::trigger(&mut SqliteTx { conn, now }, &p).await
        })
    }

    async fn fire_due(&self, actor: &str) -> Result<FireReport> {
        // Most ticks have nothing due: answer them from a reader, without the write lock.
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_fire_at) FROM jobs WHERE defined = 1")
                .fetch_one(&self.reader)
                .await
                .map_err(store_err)?;
        if next.is_none_or(|n| n > ms(self.clock.now())) {
            return Ok(FireReport {
                next_fire_at: next.map(from_ms).transpose()?,
                ..Default::default()
            });
        }
        write_tx!(self, |conn, now| {
            ops::fire_due(&mut SqliteTx { conn, now }, actor).await
        })
    }

    async fn complete(&self, p: CompleteParams) -> Result<Settled> {
        let result: Result<std::result::Result<Settled, StoreError>> =
            write_tx!(self, |conn, now| {
                ops::complete(&mut SqliteTx { conn, now }, &p).await
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
            write_tx!(self, |conn, now| {
                ops::report_progress(&mut SqliteTx { conn, now }, &p).await
            });
        result?
    }

    async fn release(&self, p: ReleaseParams) -> Result<ReleaseReport> {
        write_tx!(self, |conn, now| {
            ops::release(&mut SqliteTx { conn, now }, &p).await
        })
    }

    async fn cancel(&self, p: CancelParams) -> Result<CancelOutcome> {
        write_tx!(self, |conn, now| {
            ops::cancel(&mut SqliteTx { conn, now }, &p).await
        })
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>> {
        let recs: Vec<NodeRecord> = sqlx::query_as(sql(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY started_at DESC"
        )))
        .fetch_all(&self.reader)
        .await
        .map_err(store_err)?;
        recs.into_iter().map(NodeRecord::into_row).collect()
    }

    async fn orphans_of(&self, name: &str, node_id: &str) -> Result<Vec<ExecutionRow>> {
        self.fetch_rows(
            format!(
                "SELECT {EXEC_COLUMNS} FROM executions WHERE state = 'running' \
                 AND node_id IN (SELECT id FROM nodes WHERE name = ? AND id <> ?) ORDER BY id"
            ),
            vec![Bind::S(name.into()), Bind::S(node_id.into())],
        )
        .await
    }

    async fn list_jobs(&self) -> Result<Vec<JobRow>> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM jobs ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(job) = self.get_job(&name).await? {
                out.push(job);
            }
        }
        Ok(out)
    }

    async fn get_job(&self, name: &str) -> Result<Option<JobRow>> {
        let row: Option<(String, i64, i64, Option<i64>)> =
            sqlx::query_as("SELECT spec, defined, paused, next_fire_at FROM jobs WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.reader)
                .await
                .map_err(store_err)?;
        let Some((spec, defined, paused, next_fire_at)) = row else {
            return Ok(None);
        };
        let spec: JobSpec = serde_json::from_str(&spec)
            .map_err(|e| crate::error::corrupt(format!("job '{name}' definition: {e}")))?;
        let live = self
            .fetch_rows(
                format!("SELECT {EXEC_COLUMNS} FROM executions INDEXED BY executions_live_job WHERE job = ? AND state IN ('queued', 'running') ORDER BY id"),
                vec![Bind::S(name.into())],
            )
            .await?;
        let last = self
            .fetch_rows(
                format!("SELECT {EXEC_COLUMNS} FROM executions WHERE job = ? AND finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1"),
                vec![Bind::S(name.into())],
            )
            .await?;
        Ok(Some(JobRow {
            spec,
            defined: defined == 1,
            paused: paused == 1,
            next_fire_at: next_fire_at.map(from_ms).transpose()?,
            live: live.iter().map(summary).collect(),
            last_finished: last.first().map(summary),
        }))
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        write_tx!(self, |conn, now| {
            let res = sqlx::query("UPDATE jobs SET paused = ?, updated_at = ? WHERE name = ?")
                .bind(paused as i64)
                .bind(ms(now))
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(store_err)?;
            if res.rows_affected() == 0 {
                return Err(StoreError::JobNotFound(name.to_string()));
            }
            Ok(())
        })
    }

    async fn claim(&self, p: ClaimParams) -> Result<Vec<ExecutionRow>> {
        if p.limit == 0 {
            return Ok(vec![]);
        }
        write_tx!(self, |conn, now| {
            // Occupancy is counted from live leases in this same transaction (invariant 3).
            let candidates: Vec<ExecRecord> = sqlx::query_as(sql(format!(
                "SELECT {EXEC_COLUMNS} FROM executions e WHERE e.state = 'queued' AND e.runner = ? AND e.run_after <= ? \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.name = e.job AND j.paused = 1) \
                 AND (e.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM concurrency_limits l WHERE l.key = e.concurrency_key \
                      AND (SELECT count(*) FROM executions r WHERE r.state = 'running' AND r.concurrency_key = e.concurrency_key) >= l.max_running)) \
                 AND (e.overlap <> 'queue' OR NOT EXISTS (SELECT 1 FROM executions r WHERE r.job = e.job AND r.state = 'running')) \
                 ORDER BY e.run_after, e.id LIMIT ?"
            )))
            .bind(&p.runner)
            .bind(ms(now))
            .bind((p.limit as i64) * 4)
            .fetch_all(&mut *conn)
            .await
            .map_err(store_err)?;
            let candidates = decode_all(candidates)?;
            let mut queue_jobs_taken: HashSet<String> = HashSet::new();
            // (limit, running) per concurrency key, read once per batch and counted up as
            // this batch claims; the transaction holds the write lock, so nothing else moves.
            let mut slots: HashMap<String, Option<(i64, i64)>> = HashMap::new();
            let mut claimed = Vec::new();
            for row in candidates {
                if claimed.len() as u32 >= p.limit {
                    break;
                }
                if let Some(key) = &row.concurrency_key {
                    if !slots.contains_key(key) {
                        let occupancy: Option<(i64, i64)> = sqlx::query_as(
                            "SELECT max_running, (SELECT count(*) FROM executions WHERE state = 'running' \
                             AND concurrency_key = ?1) FROM concurrency_limits WHERE key = ?1",
                        )
                        .bind(key)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(store_err)?;
                        slots.insert(key.clone(), occupancy);
                    }
                    if let Some(Some((limit, running))) = slots.get(key)
                        && running >= limit
                    {
                        continue;
                    }
                }
                if row.overlap == Overlap::Queue && !queue_jobs_taken.insert(row.job.clone()) {
                    continue;
                }
                transition(row.state, None, Event::Claim)?;
                let token = uuid::Uuid::new_v4().to_string();
                let rec: Option<ExecRecord> = sqlx::query_as(sql(format!(
                    "UPDATE executions SET state = 'running', started_at = ?1, heartbeat_at = ?1, lease_owner = ?2, \
                     lease_token = ?3, lease_expires_at = ?1 + heartbeat_timeout_ms, \
                     run_deadline = ?1 + run_timeout_ms + kill_grace_ms + ?4, node_id = ?5 \
                     WHERE id = ?6 AND state = 'queued' AND attempt = ?7 AND lease_token IS NULL RETURNING {EXEC_COLUMNS}"
                )))
                .bind(ms(now))
                .bind(&p.owner)
                .bind(&token)
                .bind(dur_ms(jobward_core::deadline::OWNER_MARGIN))
                .bind(p.node_id.as_deref())
                .bind(row.id)
                .bind(row.attempt as i64)
                .fetch_optional(&mut *conn)
                .await
                .map_err(store_err)?;
                let Some(rec) = rec else { continue };
                let claimed_row = rec.into_row()?;
                if let Some(Some((_, running))) =
                    row.concurrency_key.as_ref().and_then(|k| slots.get_mut(k))
                {
                    *running += 1;
                }
                ops::event(
                    &mut SqliteTx {
                        conn: &mut *conn,
                        now,
                    },
                    row.id,
                    EventKind::Transition,
                    Some(State::Queued),
                    Some(State::Running),
                    None,
                    &format!(
                        "claimed by {} (lease until {})",
                        p.owner,
                        claimed_row.lease_expires_at.map(ts).unwrap_or_default()
                    ),
                    &p.owner,
                )
                .await?;
                claimed.push(claimed_row);
            }
            Ok(claimed)
        })
    }

    async fn record_process(&self, lease: &LeaseRef, process: &ProcessInfo) -> Result<()> {
        write_tx!(self, |conn, now| {
            let res = sqlx::query(
                "UPDATE executions SET pid = ?, pgid = ?, proc_start_ticks = ?, boot_id = ? \
                 WHERE id = ? AND state = 'running' AND attempt = ? AND lease_token = ?",
            )
            .bind(process.pid as i64)
            .bind(process.pgid as i64)
            .bind(process.start_ticks as i64)
            .bind(process.boot_id.as_deref())
            .bind(lease.id)
            .bind(lease.attempt as i64)
            .bind(&lease.token)
            .execute(&mut *conn)
            .await
            .map_err(store_err)?;
            if res.rows_affected() != 1 {
                let row = Tx::load(
                    &mut SqliteTx {
                        conn: &mut *conn,
                        now,
                    },
                    lease.id,
                )
                .await?
                .ok_or(StoreError::ExecutionNotFound(lease.id))?;
                return Err(StoreError::LeaseLost {
                    id: lease.id,
                    state: row.state,
                    reason: row.reason,
                });
            }
            ops::event(
                &mut SqliteTx {
                    conn: &mut *conn,
                    now,
                },
                lease.id,
                EventKind::Note,
                None,
                None,
                None,
                &format!(
                    "process started: pid {} in process group {}",
                    process.pid, process.pgid
                ),
                "executor",
            )
            .await?;
            Ok(())
        })
    }

    async fn heartbeat(&self, p: HeartbeatParams) -> Result<HeartbeatReport> {
        write_tx!(self, |conn, now| {
            let mut report = HeartbeatReport {
                node_ok: true,
                ..Default::default()
            };
            if let Some((node_id, lease)) = &p.node {
                let res = sqlx::query("UPDATE nodes SET heartbeat_at = ?, lease_expires_at = ? WHERE id = ? AND stopped_at IS NULL")
                    .bind(ms(now))
                    .bind(ms(jobward_core::deadline::add(now, *lease)))
                    .bind(node_id)
                    .execute(&mut *conn)
                    .await
                    .map_err(store_err)?;
                report.node_ok = res.rows_affected() == 1;
                // A whole node lease without any node heartbeat: nobody could write (this
                // process was paused). Leases count again from now (see ledger_liveness).
                sqlx::query(
                    "UPDATE ledger_liveness SET alive_since = CASE WHEN ?1 - last_beat > ?2 THEN ?1 ELSE alive_since END, \
                     last_beat = ?1 WHERE id = 1",
                )
                .bind(ms(now))
                .bind(dur_ms(*lease))
                .execute(&mut *conn)
                .await
                .map_err(store_err)?;
            }
            for chunk in p.leases.chunks(200) {
                if let Some(bad) = chunk
                    .iter()
                    .find_map(|b| b.progress.filter(|v| !(0.0..=1.0).contains(v)))
                {
                    return Err(StoreError::Invalid(format!(
                        "progress must be between 0 and 1, got {bad}"
                    )));
                }
                // Phases before the update, so that a change of phase is written as a note.
                let phased: Vec<i64> = chunk
                    .iter()
                    .filter(|b| b.phase.is_some())
                    .map(|b| b.lease.id)
                    .collect();
                let old_phases: HashMap<i64, Option<String>> = if phased.is_empty() {
                    HashMap::new()
                } else {
                    let marks = vec!["?"; phased.len()].join(", ");
                    let mut q = sqlx::query_as::<_, (i64, Option<String>)>(sql(format!(
                        "SELECT id, phase FROM executions WHERE id IN ({marks})"
                    )));
                    for id in &phased {
                        q = q.bind(*id);
                    }
                    q.fetch_all(&mut *conn)
                        .await
                        .map_err(store_err)?
                        .into_iter()
                        .collect()
                };
                // One statement renews every lease of the chunk (VALUES columns are column1..6).
                let values = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                let q = format!(
                    "UPDATE executions SET heartbeat_at = ?, lease_expires_at = ? + heartbeat_timeout_ms, \
                     progress = COALESCE(v.column4, progress), phase = COALESCE(v.column5, phase), \
                     checkpoint = COALESCE(v.column6, checkpoint) \
                     FROM (VALUES {values}) AS v \
                     WHERE executions.id = v.column1 AND executions.attempt = v.column2 AND executions.lease_token = v.column3 \
                     AND executions.state = 'running' AND executions.lease_owner = ? \
                     RETURNING executions.id, executions.cancel_reason, executions.phase"
                );
                // Positional parameters only: a bare `?` after `?N` would be numbered N+1.
                let mut query = sqlx::query_as::<_, (i64, Option<String>, Option<String>)>(sql(q))
                    .bind(ms(now))
                    .bind(ms(now));
                for b in chunk {
                    query = query
                        .bind(b.lease.id)
                        .bind(b.lease.attempt as i64)
                        .bind(&b.lease.token)
                        .bind(b.progress)
                        .bind(b.phase.as_deref())
                        .bind(b.checkpoint.as_ref().map(|c| c.to_string()));
                }
                query = query.bind(&p.owner);
                for (id, cancel, phase) in query.fetch_all(&mut *conn).await.map_err(store_err)? {
                    report.renewed.push(id);
                    if let Some(r) = cancel.and_then(|c| c.parse::<Reason>().ok()) {
                        report.cancel_requested.push((id, r));
                    }
                    if let (Some(old), Some(new)) = (old_phases.get(&id), phase)
                        && old.as_deref() != Some(new.as_str())
                    {
                        let text = format!("phase: {new}");
                        ops::event(
                            &mut SqliteTx {
                                conn: &mut *conn,
                                now,
                            },
                            id,
                            EventKind::Note,
                            None,
                            None,
                            Some("phase"),
                            &text,
                            &p.owner,
                        )
                        .await?;
                    }
                }
            }
            let renewed: HashSet<i64> = report.renewed.iter().copied().collect();
            for b in p.leases.iter().filter(|b| !renewed.contains(&b.lease.id)) {
                let mut tx = SqliteTx {
                    conn: &mut *conn,
                    now,
                };
                report
                    .lost
                    .extend(ops::not_renewed(&mut tx, &b.lease, &p.owner).await?);
            }
            Ok(report)
        })
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<(ExecutionId, Reason)>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, cancel_reason FROM executions WHERE state = 'running' AND cancel_deadline IS NOT NULL AND lease_owner = ?",
        )
        .bind(owner)
        .fetch_all(&self.reader)
        .await
        .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, r)| r.parse().ok().map(|r| (id, r)))
            .collect())
    }

    async fn reap(&self, p: ReapParams) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        let batch = p.batch.max(1);
        loop {
            let settled: Vec<Recovered> = write_tx!(self, |conn, now| {
                let due: Vec<ExecRecord> = sqlx::query_as(sql(format!(
                    "SELECT {EXEC_COLUMNS} FROM executions {REAPER_DUE}"
                )))
                .bind(ms(now))
                .bind(batch as i64)
                .fetch_all(&mut *conn)
                .await
                .map_err(store_err)?;
                ops::settle_due(&mut SqliteTx { conn, now }, decode_all(due)?, &p.actor).await
            })?;
            let n = settled.len();
            report.recovered.extend(settled);
            if n < batch as usize {
                return Ok(report);
            }
        }
    }

    async fn cleanup(&self, p: CleanupParams) -> Result<CleanupReport> {
        let cutoff = ms(sub(self.clock.now(), p.stale_after));
        let q = format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE state = 'running' AND heartbeat_at <= ? ORDER BY id"
        );
        let candidates = self.fetch_rows(q, vec![Bind::I(cutoff)]).await?;
        let mut report = CleanupReport {
            dry_run: !p.apply,
            candidates,
            ..Default::default()
        };
        if !p.apply || report.candidates.is_empty() {
            return Ok(report);
        }
        let (changed, raced) = write_tx!(self, |conn, now| {
            ops::cleanup_apply(&mut SqliteTx { conn, now }, &report.candidates, &p).await
        })?;
        report.changed = changed;
        report.raced = raced;
        Ok(report)
    }

    async fn prune(&self, p: PruneParams) -> Result<PruneReport> {
        let jobs: Vec<(String, String)> =
            sqlx::query_as("SELECT name, spec FROM jobs ORDER BY name")
                .fetch_all(&self.reader)
                .await
                .map_err(store_err)?;
        let mut report = PruneReport::default();
        let batch = p.batch.max(1) as i64;
        for (name, spec) in jobs {
            let Ok(spec) = serde_json::from_str::<JobSpec>(&spec) else {
                continue;
            };
            loop {
                let deleted: Vec<i64> = write_tx!(self, |conn, now| {
                    let mut ids: Vec<i64> = Vec::new();
                    if let Some(keep) = spec.history.keep_last {
                        ids.extend(
                            sqlx::query_scalar::<_, i64>(
                                "SELECT id FROM executions WHERE job = ? AND finished_at IS NOT NULL ORDER BY id DESC LIMIT ? OFFSET ?",
                            )
                            .bind(&name)
                            .bind(batch)
                            .bind(keep as i64)
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(store_err)?,
                        );
                    }
                    if let Some(age) = spec.history.max_age {
                        ids.extend(
                            sqlx::query_scalar::<_, i64>(
                                "SELECT id FROM executions WHERE job = ? AND finished_at IS NOT NULL AND finished_at < ? LIMIT ?",
                            )
                            .bind(&name)
                            .bind(ms(sub(now, age)))
                            .bind(batch)
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(store_err)?,
                        );
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    let mut done = Vec::new();
                    for chunk in ids.chunks(500) {
                        let marks = vec!["?"; chunk.len()].join(", ");
                        let mut q = sqlx::query_scalar::<_, i64>(sql(format!(
                            "DELETE FROM executions WHERE finished_at IS NOT NULL AND id IN ({marks}) RETURNING id"
                        )));
                        for id in chunk {
                            q = q.bind(*id);
                        }
                        done.extend(q.fetch_all(&mut *conn).await.map_err(store_err)?);
                    }
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
        let mut q = format!("SELECT {EXEC_COLUMNS} FROM executions WHERE 1 = 1");
        let mut binds = Vec::new();
        if let Some(job) = &f.job {
            q.push_str(" AND job = ?");
            binds.push(Bind::S(job.clone()));
        }
        if !f.states.is_empty() {
            let marks = vec!["?"; f.states.len()].join(", ");
            q.push_str(&format!(" AND state IN ({marks})"));
            binds.extend(f.states.iter().map(|s| Bind::S(s.as_str().into())));
        }
        if let Some(d) = f.stale_after {
            q.push_str(" AND state = 'running' AND heartbeat_at <= ?");
            binds.push(Bind::I(ms(sub(self.clock.now(), d))));
        }
        if let Some(since) = f.since {
            q.push_str(" AND queued_at >= ?");
            binds.push(Bind::I(ms(since)));
        }
        if let Some(until) = f.until {
            q.push_str(" AND queued_at < ?");
            binds.push(Bind::I(ms(until)));
        }
        if let Some(before) = f.before_id {
            q.push_str(" AND id < ?");
            binds.push(Bind::I(before));
        }
        q.push_str(" ORDER BY id DESC LIMIT ?");
        binds.push(Bind::I(f.limit.max(1) as i64));
        self.fetch_rows(q, binds).await
    }

    async fn get_execution(&self, id: ExecutionId) -> Result<Option<ExecutionRow>> {
        Ok(self
            .fetch_rows(
                format!("SELECT {EXEC_COLUMNS} FROM executions WHERE id = ?"),
                vec![Bind::I(id)],
            )
            .await?
            .pop())
    }

    async fn events(&self, id: ExecutionId) -> Result<Vec<EventRow>> {
        let recs: Vec<EventRecord> = sqlx::query_as(
            "SELECT id, execution_id, at, kind, from_state, to_state, reason, message, actor FROM events WHERE execution_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(store_err)?;
        recs.into_iter().map(EventRecord::into_row).collect()
    }

    async fn health(&self, p: HealthParams) -> Result<HealthMetrics> {
        let now = self.clock.now();
        let n = ms(now);
        let stale = match p.stale_after {
            Some(d) => self.count("SELECT count(*) FROM executions WHERE state = 'running' AND heartbeat_at <= ?", &[ms(sub(now, d))]).await?,
            None => self.count("SELECT count(*) FROM executions WHERE state = 'running' AND lease_expires_at <= ?", &[n]).await?,
        };
        Ok(HealthMetrics {
            running_executions: self.count("SELECT count(*) FROM executions WHERE state = 'running'", &[]).await?,
            queued_executions: self.count("SELECT count(*) FROM executions WHERE state = 'queued'", &[]).await?,
            long_running_executions: self
                .count(
                    "SELECT count(*) FROM executions WHERE state = 'running' AND started_at <= ?",
                    &[ms(sub(now, p.long_running_after))],
                )
                .await?,
            stale_executions: stale,
            overdue_queued_executions: self
                .count("SELECT count(*) FROM executions WHERE state = 'queued' AND start_deadline <= ?", &[n])
                .await?,
            recent_executions_24h: self
                .count("SELECT count(*) FROM executions WHERE queued_at >= ?", &[ms(sub(now, Duration::from_secs(86_400)))])
                .await?,
            live_nodes: self
                .count("SELECT count(*) FROM nodes WHERE stopped_at IS NULL AND lease_expires_at > ?", &[n])
                .await?,
            timestamp: now,
        })
    }

    async fn metrics(&self) -> Result<MetricsSnapshot> {
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM executions GROUP BY state")
                .fetch_all(&self.reader)
                .await
                .map_err(store_err)?;
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(heartbeat_at) FROM executions WHERE state = 'running'")
                .fetch_one(&self.reader)
                .await
                .map_err(store_err)?;
        let slots: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT l.key, (SELECT count(*) FROM executions e WHERE e.state = 'running' AND e.concurrency_key = l.key), \
             l.max_running FROM concurrency_limits l ORDER BY l.key",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(store_err)?;
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
            oldest_heartbeat_at: oldest.map(from_ms).transpose()?,
            slots: slots
                .into_iter()
                .map(|(key, used, limit)| SlotUse {
                    key,
                    used: used as u64,
                    limit: limit as u64,
                })
                .collect(),
            now: self.clock.now(),
        })
    }

    async fn audit(&self, p: AuditParams) -> Result<Vec<Violation>> {
        let now = ms(self.clock.now());
        let late = now - dur_ms(p.tolerance);
        let q = crate::audit::queries(|c| c.to_string());
        let pool = &self.reader;
        let rows = crate::audit::Rows {
            bad_state: sqlx::query_as(sql(q.bad_state))
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
            bad_reason: sqlx::query_as(sql(q.bad_reason))
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
            overdue: sqlx::query_as(sql(q.overdue))
                .bind(late)
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
            leaseless: sqlx::query_scalar(sql(q.leaseless))
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
            over_limit: sqlx::query_as(sql(q.over_limit))
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
            dead_owner: sqlx::query_as(sql(q.dead_owner))
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
            silent: sqlx::query_as(sql(q.silent))
                .fetch_all(pool)
                .await
                .map_err(store_err)?,
        };
        Ok(crate::audit::violations(rows, now, late))
    }
}
