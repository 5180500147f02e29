//! The PostgreSQL backend, for several nodes and remote workers on several machines. Nodes
//! coordinate only through PostgreSQL: row locks (`FOR UPDATE`, `SKIP LOCKED`), unique
//! constraints, advisory locks and compare-and-set statements. Every deadline is compared with
//! PostgreSQL's clock, so node and worker clocks do not matter. Maintenance (reaper,
//! scheduler, lost-node settlement, retention) is safe on every node at once; there is no
//! leader. This module only runs the ledger's operations: in a transaction with retries, on a
//! pooled connection for reads; `LISTEN`s for new work; and migrates the schema.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jobward_core::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Column, PgConnection, PgPool, Row as _, TypeInfo, ValueRef};

use crate::ledger::{Backend, BoxFuture, Op};
use crate::sql::{Arg, Conn, Dialect, Row, Val};
use crate::{Clock, OpenMode, Opened, Result, StoreError, WorkSignal};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static DIALECT: Dialect = Dialect::new("postgres");

/// Connections per node: claims, heartbeats, the reaper and the API share them.
const MAX_CONNECTIONS: u32 = 10;
/// How long an operation waits for a free connection before it fails (and is retried).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a transaction that hit a serialization failure, a deadlock or a lost
/// connection before it started committing.
const TX_ATTEMPTS: u32 = 5;

pub fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// SQLSTATEs worth retrying a whole transaction for.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "25P03")
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

pub struct PgBackend {
    pool: PgPool,
    clock: Clock,
    work: Arc<WorkSignal>,
    url: String,
    errors: Arc<AtomicU64>,
}

impl PgBackend {
    pub async fn open(
        url: &str,
        mode: OpenMode,
        options: &crate::StoreOptions,
    ) -> Result<(PgBackend, Opened)> {
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
        let store = PgBackend {
            pool,
            clock: Clock::default(),
            work: WorkSignal::new(),
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
        let found_v = found.unwrap_or(0);
        match crate::schema_verdict(found, expected, mode)? {
            false => Ok(Opened::default()),
            true => {
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
                        work.notify_all();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }

    fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// PostgreSQL's `now` for an operation on `conn`; in tests, the store clock's offset is
    /// set on the session first, so `jw_now_ms()` in statements moves with it.
    async fn session_now(&self, conn: &mut PgConnection) -> Result<Timestamp> {
        let offset = self.clock.offset_ms();
        let ms: i64 = if offset != 0 {
            sqlx::query_as::<_, (String, i64)>(
                "SELECT set_config('jobward.clock_offset_ms', $1, false), jw_now_ms()",
            )
            .bind(offset.to_string())
            .fetch_one(&mut *conn)
            .await
            .map(|(_, ms)| ms)
            .map_err(pg_err)?
        } else {
            sqlx::query_scalar("SELECT jw_now_ms()")
                .fetch_one(&mut *conn)
                .await
                .map_err(pg_err)?
        };
        crate::rows::from_ms(ms)
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

async fn listen(pool: &PgPool, work: &WorkSignal) -> std::result::Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen("jobward_work").await?;
    let ping_every = Duration::from_secs(5);
    let mut last_heard = tokio::time::Instant::now();
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    loop {
        tokio::select! {
            n = listener.try_recv() => match n? {
                Some(n) => {
                    last_heard = tokio::time::Instant::now();
                    // "runner<TAB>count"; the listener's own ping carries no tab.
                    if let Some((runner, count)) = n.payload().rsplit_once('\t') {
                        work.notify(runner, count.parse().unwrap_or(1));
                    }
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

/// A PostgreSQL connection (in a transaction or not) seen through the ledger's row-level
/// interface.
struct PgConn<'c> {
    conn: &'c mut PgConnection,
    now: Timestamp,
    /// Work this transaction made claimable, for this process's own claimers once it commits
    /// (other processes hear of it through NOTIFY).
    woken: Vec<(String, usize)>,
}

fn bind<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: &'q [Arg<'q>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = match *a {
            Arg::Int(v) => q.bind(v),
            Arg::Real(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Ints(v) => q.bind(v),
        };
    }
    q
}

fn row(r: &PgRow) -> Result<Row> {
    let mut vals = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let raw = r.try_get_raw(i).map_err(pg_err)?;
        if raw.is_null() {
            vals.push(Val::Null);
            continue;
        }
        let v = match col.type_info().name() {
            "INT8" => Val::Int(r.try_get::<i64, _>(i).map_err(pg_err)?),
            "INT4" => Val::Int(i64::from(r.try_get::<i32, _>(i).map_err(pg_err)?)),
            "INT2" => Val::Int(i64::from(r.try_get::<i16, _>(i).map_err(pg_err)?)),
            "BOOL" => Val::Int(i64::from(r.try_get::<bool, _>(i).map_err(pg_err)?)),
            "FLOAT8" => Val::Real(r.try_get::<f64, _>(i).map_err(pg_err)?),
            "FLOAT4" => Val::Real(f64::from(r.try_get::<f32, _>(i).map_err(pg_err)?)),
            _ => Val::Text(r.try_get::<String, _>(i).map_err(pg_err)?),
        };
        vals.push(v);
    }
    Ok(Row(vals))
}

#[async_trait]
impl Conn for PgConn<'_> {
    fn now(&self) -> Timestamp {
        self.now
    }

    fn dialect(&self) -> &'static Dialect {
        &DIALECT
    }

    async fn fetch(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>> {
        crate::sql::count_statement();
        let text = DIALECT.translate(sql);
        let rows = bind(sqlx::query(crate::sql_text(&text)), args)
            .fetch_all(&mut *self.conn)
            .await
            .map_err(pg_err)?;
        rows.iter().map(row).collect()
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        crate::sql::count_statement();
        let text = DIALECT.translate(sql);
        Ok(bind(sqlx::query(crate::sql_text(&text)), args)
            .execute(&mut *self.conn)
            .await
            .map_err(pg_err)?
            .rows_affected())
    }

    async fn lock(&mut self, key: &str) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(key)
            .execute(&mut *self.conn)
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    async fn notify_work(&mut self, runner: &str, count: usize) -> Result<()> {
        self.woken.push((runner.to_string(), count));
        // Delivered to every node's listener when the transaction commits.
        sqlx::query("SELECT pg_notify('jobward_work', $1)")
            .bind(format!("{runner}\t{count}"))
            .execute(&mut *self.conn)
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}

impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn work_signal(&self) -> Arc<WorkSignal> {
        self.work.clone()
    }

    /// Serialization failures, deadlocks, lock timeouts and connections lost before the
    /// commit are retried; an error during the commit itself is not (it may have committed).
    fn write<T: Send + 'static>(&self, mut op: Op<T>) -> BoxFuture<'_, Result<T>> {
        Box::pin(async move {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let backoff = Duration::from_millis(50 * u64::from(attempt));
                let mut txn = match self.pool.begin().await {
                    Ok(t) => t,
                    Err(e) if retryable(&e) && attempt < TX_ATTEMPTS => {
                        self.count_error();
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    Err(e) => {
                        self.count_error();
                        return Err(pg_err(e));
                    }
                };
                let now = match self.session_now(&mut txn).await {
                    Ok(n) => n,
                    Err(_) if attempt < TX_ATTEMPTS => {
                        self.count_error();
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let (result, woken) = {
                    let mut conn = PgConn {
                        conn: &mut txn,
                        now,
                        woken: Vec::new(),
                    };
                    let r = op(&mut conn).await;
                    (r, conn.woken)
                };
                match result {
                    Ok(v) => {
                        return match txn.commit().await {
                            Ok(()) => {
                                crate::sql::count_commit();
                                // This process's claimers need not wait for the round trip
                                // through the listener (which rings them again: harmless).
                                for (runner, count) in &woken {
                                    self.work.notify(runner, *count);
                                }
                                Ok(v)
                            }
                            Err(e) => {
                                self.count_error();
                                Err(pg_err(e))
                            }
                        };
                    }
                    Err(StoreError::Database(_) | StoreError::Busy(_)) if attempt < TX_ATTEMPTS => {
                        self.count_error();
                        let _ = txn.rollback().await;
                        tokio::time::sleep(backoff).await;
                    }
                    Err(e) => {
                        let _ = txn.rollback().await;
                        return Err(e);
                    }
                }
            }
        })
    }

    fn read<T: Send + 'static>(&self, mut op: Op<T>) -> BoxFuture<'_, Result<T>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(pg_err)?;
            let now = self.session_now(&mut conn).await?;
            let mut c = PgConn {
                conn: &mut conn,
                now,
                woken: Vec::new(),
            };
            op(&mut c).await
        })
    }

    fn backup<'a>(&'a self, _dest: &'a std::path::Path) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Err(StoreError::Unsupported(format!(
                "jobward backup copies SQLite ledgers; for PostgreSQL use pg_dump, e.g. `pg_dump --format=custom --file=jobward.dump '{}'`",
                self.url()
            )))
        })
    }
}
