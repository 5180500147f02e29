//! The embedded SQLite backend: one file, WAL, and one writer thread per process that owns the
//! write connection and runs whole operations on it.
//!
//! Why a thread of its own (rusqlite) rather than an async driver: an async SQLite driver
//! hands every statement to the connection's thread and back (two thread switches per
//! statement, dozens per job); here an operation is sent once, runs all its statements on the
//! writer thread, and its result comes back once. Operations that arrive while one runs are
//! committed together (group commit): each in a savepoint of one `BEGIN IMMEDIATE`
//! transaction, so one failing operation rolls back alone. Reads run on a small pool of
//! connections on the blocking thread pool. Every write transaction takes the write lock with
//! `BEGIN IMMEDIATE` under a busy timeout and is retried while another process (a CLI
//! command) holds it, so `SQLITE_BUSY` never reaches a caller.

mod migrate;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use jobward_core::Timestamp;
use rusqlite::types::ValueRef;
use tokio::sync::oneshot;

use crate::ledger::{Backend, BoxFuture, Op};
use crate::sql::{Arg, Conn, Dialect, Row, Val};
use crate::{Clock, OpenMode, Opened, Result, StoreError, WorkSignal};

static DIALECT: Dialect = Dialect::new("sqlite");

/// How long one attempt to take the write lock waits inside SQLite.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts before a writer gives up with `StoreError::Busy`.
const BUSY_ATTEMPTS: u32 = 12;
/// Most operations committed together.
const GROUP: usize = 256;
/// Read connections.
const READERS: usize = 4;

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

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub(crate) fn sqlite_err(e: rusqlite::Error) -> StoreError {
    if is_busy(&e) {
        return StoreError::Busy(BUSY_TIMEOUT);
    }
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => StoreError::Database(m),
        other => StoreError::Database(other.to_string()),
    }
}

/// Polls a future that never waits: every statement of a SQLite operation completes in the
/// call that starts it, so an operation's future is ready the first time it is polled.
fn run_now<F: Future>(f: F) -> Result<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => Err(StoreError::Database(
            "a SQLite operation waited on something other than SQLite".into(),
        )),
    }
}

fn connect(path: &Path, create: bool) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// A SQLite connection seen through the ledger's row-level interface.
pub(crate) struct SqliteConn<'c> {
    conn: &'c mut rusqlite::Connection,
    now: Timestamp,
    /// Runners with newly claimable work, and how much: rung once the transaction commits.
    notified: Vec<(String, usize)>,
}

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, args: &[Arg<'_>]) -> rusqlite::Result<()> {
    let count = stmt.parameter_count();
    for (i, a) in args.iter().enumerate().take(count) {
        let idx = i + 1;
        match *a {
            Arg::Int(v) => stmt.raw_bind_parameter(idx, v)?,
            Arg::Real(v) => stmt.raw_bind_parameter(idx, v)?,
            Arg::Text(v) => stmt.raw_bind_parameter(idx, v)?,
            Arg::Bool(v) => stmt.raw_bind_parameter(idx, v.map(i64::from))?,
            Arg::Ints(v) => stmt.raw_bind_parameter(
                idx,
                serde_json::to_string(v).unwrap_or_else(|_| "[]".into()),
            )?,
        }
    }
    Ok(())
}

fn value(v: ValueRef<'_>) -> Val {
    match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(i) => Val::Int(i),
        ValueRef::Real(f) => Val::Real(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
    }
}

impl SqliteConn<'_> {
    fn fetch_sync(&mut self, sql: &str, args: &[Arg<'_>]) -> rusqlite::Result<Vec<Row>> {
        let sql = DIALECT.translate(sql);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        bind(&mut stmt, args)?;
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(columns);
            for i in 0..columns {
                vals.push(value(r.get_ref(i)?));
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    fn execute_sync(&mut self, sql: &str, args: &[Arg<'_>]) -> rusqlite::Result<u64> {
        let sql = DIALECT.translate(sql);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        bind(&mut stmt, args)?;
        if stmt.column_count() > 0 {
            // A statement that returns rows (SELECT, RETURNING): step through them all.
            let mut rows = stmt.raw_query();
            let mut n = 0;
            while rows.next()?.is_some() {
                n += 1;
            }
            return Ok(n);
        }
        Ok(stmt.raw_execute()? as u64)
    }
}

#[async_trait]
impl Conn for SqliteConn<'_> {
    fn now(&self) -> Timestamp {
        self.now
    }

    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    async fn fetch(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>> {
        crate::sql::count_statement();
        self.fetch_sync(sql, args).map_err(sqlite_err)
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        crate::sql::count_statement();
        self.execute_sync(sql, args).map_err(sqlite_err)
    }

    async fn notify_work(&mut self, runner: &str, count: usize) -> Result<()> {
        self.notified.push((runner.to_string(), count));
        Ok(())
    }
}

/// One operation for the writer thread: run it inside the group's transaction, then deliver
/// its result once the transaction's fate is known (a failed commit fails every operation).
trait Job: Send {
    fn run(&mut self, conn: &mut SqliteConn<'_>) -> bool;
    fn deliver(self: Box<Self>, commit: Option<StoreError>);
}

struct Pending<T> {
    op: Op<T>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T: Send + 'static> Job for Pending<T> {
    fn run(&mut self, conn: &mut SqliteConn<'_>) -> bool {
        let r = run_now((self.op)(conn)).and_then(|r| r);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn deliver(self: Box<Self>, commit: Option<StoreError>) {
        let r = match (commit, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => r,
            (None, None) => Err(StoreError::Database("the operation did not run".into())),
        };
        let _ = self.reply.send(r);
    }
}

struct Shared {
    clock: Clock,
    errors: AtomicU64,
    work: Arc<WorkSignal>,
}

pub struct SqliteBackend {
    writer: std::sync::mpsc::Sender<Box<dyn Job>>,
    readers: Arc<Mutex<Vec<rusqlite::Connection>>>,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl SqliteBackend {
    pub(crate) fn open(url: &str, path: &Path, mode: OpenMode) -> Result<(SqliteBackend, Opened)> {
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
        let conn = connect(path, mode == OpenMode::CreateAndMigrate)
            .map_err(|e| open_err(e.to_string()))?;
        let opened = migrate::check(&conn, mode, !exists)?;
        let shared = Arc::new(Shared {
            clock: Clock::default(),
            errors: AtomicU64::new(0),
            work: WorkSignal::new(),
        });
        let (writer, jobs) = std::sync::mpsc::channel::<Box<dyn Job>>();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("jobward-sqlite-writer".into())
            .spawn(move || writer_loop(conn, jobs, s))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        Ok((
            SqliteBackend {
                writer,
                readers: Arc::default(),
                path: path.to_path_buf(),
                shared,
            },
            opened,
        ))
    }
}

/// Begins a write transaction, waiting (and retrying) while another process holds the lock.
fn begin(conn: &rusqlite::Connection, shared: &Shared) -> std::result::Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && attempt < BUSY_ATTEMPTS => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
            }
            Err(e) if is_busy(&e) => return Err(StoreError::Busy(BUSY_TIMEOUT * BUSY_ATTEMPTS)),
            Err(e) => return Err(sqlite_err(e)),
        }
    }
}

fn writer_loop(
    mut conn: rusqlite::Connection,
    jobs: std::sync::mpsc::Receiver<Box<dyn Job>>,
    shared: Arc<Shared>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = begin(&conn, &shared) {
            for job in group {
                job.deliver(Some(e.clone()));
            }
            continue;
        }
        // The time is read once the write lock is held, so timestamps follow commit order.
        let now = shared.clock.now();
        let mut notified = Vec::new();
        for job in group.iter_mut() {
            let _ = conn.execute_batch("SAVEPOINT op");
            let mut c = SqliteConn {
                conn: &mut conn,
                now,
                notified: Vec::new(),
            };
            if job.run(&mut c) {
                notified.append(&mut c.notified);
                let _ = conn.execute_batch("RELEASE op");
            } else {
                let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            }
        }
        let commit = conn.execute_batch("COMMIT").map_err(sqlite_err).err();
        if commit.is_none() {
            crate::sql::count_commit();
        }
        if commit.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        for job in group {
            job.deliver(commit.clone());
        }
        if commit.is_none() {
            for (runner, count) in notified {
                shared.work.notify(&runner, count);
            }
        }
    }
}

impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    fn work_signal(&self) -> Arc<WorkSignal> {
        self.shared.work.clone()
    }

    fn write<T: Send + 'static>(&self, op: Op<T>) -> BoxFuture<'_, Result<T>> {
        let (reply, rx) = oneshot::channel::<Result<T>>();
        let sent = self.writer.send(Box::new(Pending {
            op,
            result: None,
            reply,
        }));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Database("the SQLite writer thread stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Database("the SQLite writer thread stopped".into()))?
        })
    }

    fn read<T: Send + 'static>(&self, mut op: Op<T>) -> BoxFuture<'_, Result<T>> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.lock().expect("reader pool").pop();
                let mut conn = match conn {
                    Some(c) => c,
                    None => connect(&path, false).map_err(sqlite_err)?,
                };
                let mut c = SqliteConn {
                    conn: &mut conn,
                    now: shared.clock.now(),
                    notified: Vec::new(),
                };
                let r = run_now(op(&mut c)).and_then(|r| r);
                let mut pool = readers.lock().expect("reader pool");
                if pool.len() < READERS {
                    pool.push(conn);
                }
                r
            })
            .await
            .map_err(|e| StoreError::Database(format!("a read failed: {e}")))?
        })
    }

    fn backup<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if dest.exists() {
                return Err(StoreError::Invalid(format!(
                    "{} already exists; a backup is written to a new file",
                    dest.display()
                )));
            }
            let text = dest
                .to_str()
                .ok_or_else(|| {
                    StoreError::Invalid(format!("{} is not a UTF-8 path", dest.display()))
                })?
                .to_string();
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || {
                let conn = connect(&path, false).map_err(sqlite_err)?;
                // VACUUM INTO reads one consistent snapshot while writers carry on (WAL).
                conn.execute("VACUUM INTO ?1", [&text])
                    .map_err(|e| StoreError::Database(format!("backup to {text} failed: {e}")))?;
                Ok(())
            })
            .await
            .map_err(|e| StoreError::Database(format!("backup failed: {e}")))?
        })
    }
}
