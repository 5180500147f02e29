//! SQLite schema versions. The migrations in `migrations/sqlite/` are compiled in and applied in
//! order, each in its own `BEGIN IMMEDIATE` transaction (two processes opening a new file at
//! once take turns). Applied versions are recorded in `_sqlx_migrations`, the table (and row
//! format) earlier jobward versions wrote, so their ledgers upgrade in place.

use sha2::{Digest, Sha384};

use super::sqlite_err;
use crate::{OpenMode, Opened, Result, StoreError};

/// (version, description, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../migrations/sqlite/0001_ledger.sql"),
    ),
    (
        2,
        "truth under faults",
        include_str!("../../migrations/sqlite/0002_truth_under_faults.sql"),
    ),
    (
        3,
        "hot path indexes",
        include_str!("../../migrations/sqlite/0003_hot_path_indexes.sql"),
    ),
    (
        4,
        "runtime jobs",
        include_str!("../../migrations/sqlite/0004_runtime_jobs.sql"),
    ),
    (
        5,
        "lighter transitions",
        include_str!("../../migrations/sqlite/0005_lighter_transitions.sql"),
    ),
    (
        6,
        "workers",
        include_str!("../../migrations/sqlite/0006_workers.sql"),
    ),
    (
        7,
        "expected duration",
        include_str!("../../migrations/sqlite/0007_expected_duration.sql"),
    ),
];

pub(crate) fn latest() -> i64 {
    MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0)
}

fn applied(conn: &rusqlite::Connection) -> Result<Option<i64>> {
    let has: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite_err)?;
    if has == 0 {
        return Ok(None);
    }
    conn.query_row(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1",
        [],
        |r| r.get(0),
    )
    .map_err(sqlite_err)
}

/// Checks the schema version and, when asked, brings it up to date.
pub(crate) fn check(conn: &rusqlite::Connection, mode: OpenMode, created: bool) -> Result<Opened> {
    let expected = latest();
    let found = applied(conn)?;
    match crate::schema_verdict(found, expected, mode)? {
        false => Ok(Opened::default()),
        true => {
            // A migration may rebuild a table others refer to: foreign keys are off while
            // migrations run (this cannot change inside a transaction), and checked after.
            conn.execute_batch("PRAGMA foreign_keys = OFF")
                .map_err(sqlite_err)?;
            let mut applied_now = Vec::new();
            let mut result = Ok(());
            for (version, description, sql) in MIGRATIONS {
                match apply(conn, *version, description, sql) {
                    Ok(true) => applied_now.push(*version),
                    Ok(false) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            conn.execute_batch("PRAGMA foreign_keys = ON")
                .map_err(sqlite_err)?;
            result?;
            let broken: i64 = conn
                .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                    r.get(0)
                })
                .map_err(sqlite_err)?;
            if broken > 0 {
                return Err(StoreError::Database(format!(
                    "after migrating, {broken} rows refer to rows that do not exist"
                )));
            }
            Ok(Opened {
                created,
                applied_migrations: applied_now,
            })
        }
    }
}

/// Applies one migration unless it already is; true when this call applied it.
fn apply(conn: &rusqlite::Connection, version: i64, description: &str, sql: &str) -> Result<bool> {
    let fail =
        |e: rusqlite::Error| StoreError::Database(format!("migration {version} failed: {e}"));
    conn.execute_batch(
        "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS _sqlx_migrations ( \
           version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
           installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
           checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);",
    )
    .map_err(fail)?;
    let done: i64 = conn
        .query_row(
            "SELECT count(*) FROM _sqlx_migrations WHERE version = ?1 AND success = 1",
            [version],
            |r| r.get(0),
        )
        .map_err(fail)?;
    if done > 0 {
        conn.execute_batch("COMMIT").map_err(fail)?;
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let result = conn.execute_batch(sql).and_then(|_| {
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?1, ?2, 1, ?3, ?4)",
            rusqlite::params![
                version,
                description,
                Sha384::digest(sql.as_bytes()).to_vec(),
                started.elapsed().as_nanos() as i64
            ],
        )
    });
    match result {
        Ok(_) => {
            conn.execute_batch("COMMIT").map_err(fail)?;
            Ok(true)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(fail(e))
        }
    }
}
