//! The one row-level interface the ledger is written against, inside a transaction and
//! outside one (Temporal's SQL persistence layer has one `TableCRUD` for both `DB` and `Tx`):
//! a `Conn` runs a statement with bound `Arg`s and returns `Row`s of plain values.
//!
//! Every statement of the ledger is written once, in PostgreSQL's spelling with `$N`
//! placeholders. What the two databases spell differently is marked in the text and
//! translated once per statement (see `Dialect::translate`):
//! - `$N` placeholders become `?N` on SQLite;
//! - `/*pg: TEXT*/` is TEXT on PostgreSQL and nothing on SQLite (row locks, `SKIP LOCKED`,
//!   the postmaster's start time), `/*sqlite: TEXT*/` the other way round (`INDEXED BY`
//!   hints for SQLite's planner, which has no statistics on a fresh file; and
//!   `/*sqlite: +*/state = '...'`, which keeps it from driving a batch `UPDATE ... FROM` by an
//!   index over every row in that state instead of by the batch);
//! - `/*now*/$N` is the moment of the change: on PostgreSQL `jw_now_ms()` (its
//!   `clock_timestamp()`, so an event written late in a long transaction says when it was
//!   written), on SQLite the transaction's `now` bound as `$N` (one writer, no waiting).
//!
//! Times are integers (milliseconds since the Unix epoch) in both schemas, so no statement
//! converts them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jobward_core::Timestamp;

use crate::Result;
use crate::error::corrupt;

/// A value bound to a statement. Typed even when NULL: PostgreSQL needs a type for every
/// parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<&'a str>),
    Bool(Option<bool>),
    /// An array of integers: on PostgreSQL a `bigint[]` (for `id = ANY($N)`, which lets its
    /// planner look rows up by key however stale its statistics); JSON text on SQLite.
    Ints(&'a [i64]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}
impl From<i32> for Arg<'_> {
    fn from(v: i32) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}
impl From<Option<i32>> for Arg<'_> {
    fn from(v: Option<i32>) -> Self {
        Arg::Int(v.map(i64::from))
    }
}
impl From<Option<f64>> for Arg<'_> {
    fn from(v: Option<f64>) -> Self {
        Arg::Real(v)
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v.as_str()))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}
impl From<Timestamp> for Arg<'_> {
    fn from(v: Timestamp) -> Self {
        Arg::Int(Some(v.timestamp_millis()))
    }
}
impl From<Option<Timestamp>> for Arg<'_> {
    fn from(v: Option<Timestamp>) -> Self {
        Arg::Int(v.map(|t| t.timestamp_millis()))
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// One row: its values in the order of the statement's columns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row(pub Vec<Val>);

impl Row {
    fn at(&self, i: usize) -> Result<&Val> {
        self.0
            .get(i)
            .ok_or_else(|| corrupt(format!("row has no column {i}")))
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            Val::Real(v) => Ok(Some(*v as i64)),
            Val::Text(t) => t
                .parse()
                .map(Some)
                .map_err(|_| corrupt(format!("column {i}: '{t}' is not an integer"))),
        }
    }

    pub fn i64(&self, i: usize) -> Result<i64> {
        self.opt_i64(i)?
            .ok_or_else(|| corrupt(format!("column {i} is NULL")))
    }

    pub fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.i64(i)? != 0)
    }

    pub fn opt_f64(&self, i: usize) -> Result<Option<f64>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v as f64)),
            Val::Real(v) => Ok(Some(*v)),
            Val::Text(t) => Err(corrupt(format!("column {i}: '{t}' is not a number"))),
        }
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(t) => Ok(Some(t.clone())),
            Val::Int(v) => Ok(Some(v.to_string())),
            Val::Real(v) => Ok(Some(v.to_string())),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| corrupt(format!("column {i} is NULL")))
    }

    pub fn opt_time(&self, i: usize) -> Result<Option<Timestamp>> {
        self.opt_i64(i)?.map(crate::rows::from_ms).transpose()
    }

    pub fn time(&self, i: usize) -> Result<Timestamp> {
        crate::rows::from_ms(self.i64(i)?)
    }
}

/// A connection of a backend: a write transaction, or a pooled connection for reads.
#[async_trait]
pub(crate) trait Conn: Send {
    /// The store's `now`: read once when the transaction began (after the write lock was
    /// held, on SQLite), or when the read connection was taken.
    fn now(&self) -> Timestamp;

    fn dialect(&self) -> &'static Dialect;

    /// Runs a statement and returns its rows.
    async fn fetch(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>>;

    /// Runs a statement and returns the number of rows it changed.
    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64>;

    /// Serialises this transaction with every other one that takes the same key (PostgreSQL's
    /// transaction-scoped advisory locks; SQLite has one writer, so nothing to do).
    async fn lock(&mut self, _key: &str) -> Result<()> {
        Ok(())
    }

    /// Tells claimers (on every node) that `count` executions of `runner` may be claimable
    /// once this transaction commits.
    async fn notify_work(&mut self, runner: &str, count: usize) -> Result<()>;
}

impl dyn Conn + '_ {
    pub async fn one(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>> {
        Ok(self.fetch(sql, args).await?.into_iter().next())
    }

    pub async fn scalar_i64(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<i64> {
        self.one(sql, args)
            .await?
            .ok_or_else(|| corrupt("a scalar query returned no row"))?
            .i64(0)
    }
}

/// The backend's spelling of the ledger's statements.
pub(crate) struct Dialect {
    pub name: &'static str,
    translated: Mutex<Option<HashMap<String, Arc<str>>>>,
}

impl Dialect {
    pub const fn new(name: &'static str) -> Dialect {
        Dialect {
            name,
            translated: Mutex::new(None),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.name == "postgres"
    }

    /// The statement as this backend spells it (see the module's documentation). Cached:
    /// every distinct statement is translated once.
    pub fn translate(&self, sql: &str) -> Arc<str> {
        let mut guard = self.translated.lock().expect("dialect cache");
        let map = guard.get_or_insert_with(HashMap::new);
        if let Some(t) = map.get(sql) {
            return t.clone();
        }
        let t: Arc<str> = translate(sql, self.is_postgres()).into();
        if map.len() < 4096 {
            map.insert(sql.to_string(), t.clone());
        }
        t
    }
}

fn translate(sql: &str, postgres: bool) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        out.push_str(&placeholders(&rest[..start], postgres));
        let after = &rest[start + 2..];
        let Some(end) = after.find("*/") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let marker = &after[..end];
        rest = &after[end + 2..];
        if let Some(text) = marker.strip_prefix("pg:") {
            if postgres {
                out.push_str(&placeholders(text.trim(), postgres));
            }
        } else if let Some(text) = marker.strip_prefix("sqlite:") {
            if !postgres {
                out.push_str(&placeholders(text.trim(), postgres));
            }
        } else if marker == "now" {
            // The parameter that follows is the transaction's `now`.
            let digits: String = rest
                .strip_prefix('$')
                .map(|r| r.chars().take_while(|c| c.is_ascii_digit()).collect())
                .unwrap_or_default();
            if postgres && !digits.is_empty() {
                out.push_str(&format!("COALESCE(jw_now_ms(), ${digits})"));
                rest = &rest[1 + digits.len()..];
            }
        } else {
            out.push_str("/*");
            out.push_str(marker);
            out.push_str("*/");
        }
    }
    out.push_str(&placeholders(rest, postgres));
    out
}

/// `$N` → `?N` for SQLite (numbered parameters keep their meaning when one is used twice).
fn placeholders(sql: &str, postgres: bool) -> String {
    if postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A batch of rows bound as one JSON parameter (`$param`: an array of objects whose keys are
/// the column names), usable as a table named `v` in FROM. `cols` are (name, PostgreSQL type).
/// One statement then carries a whole batch, whatever its size, on both databases.
pub(crate) fn batch(dialect: &Dialect, param: usize, cols: &[(&str, &str)]) -> String {
    if dialect.is_postgres() {
        let typed: Vec<String> = cols.iter().map(|(n, t)| format!("{n} {t}")).collect();
        format!(
            "json_to_recordset(${param}::json) AS v({})",
            typed.join(", ")
        )
    } else {
        let picked: Vec<String> = cols
            .iter()
            .map(|(n, _)| format!("json_extract(value, '$.{n}') AS {n}"))
            .collect();
        format!(
            "(SELECT {} FROM jsonb_each(${param})) AS v",
            picked.join(", ")
        )
    }
}

/// Statements this process's stores ran, and write transactions they committed (a SQLite
/// group commit is one), for `/metrics` and the benchmarks' "statements per job".
static STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn count_statement() {
    STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn count_commit() {
    COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// (statements run, write transactions committed) by this process's stores so far.
pub fn database_counts() -> (u64, u64) {
    (
        STATEMENTS.load(std::sync::atomic::Ordering::Relaxed),
        COMMITS.load(std::sync::atomic::Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_spelled_for_each_backend() {
        let sql = "SELECT a FROM t /*sqlite: INDEXED BY t_a*/ WHERE a = $1 AND b = '$2' \
                   ORDER BY a /*pg: FOR UPDATE SKIP LOCKED*/";
        assert_eq!(
            translate(sql, false),
            "SELECT a FROM t INDEXED BY t_a WHERE a = ?1 AND b = '$2' ORDER BY a "
        );
        assert_eq!(
            translate(sql, true),
            "SELECT a FROM t  WHERE a = $1 AND b = '$2' ORDER BY a FOR UPDATE SKIP LOCKED"
        );
        let ev = "INSERT INTO events (at, kind) VALUES (/*now*/$3, $1)";
        assert_eq!(
            translate(ev, true),
            "INSERT INTO events (at, kind) VALUES (COALESCE(jw_now_ms(), $3), $1)"
        );
        assert_eq!(
            translate(ev, false),
            "INSERT INTO events (at, kind) VALUES (?3, ?1)"
        );
        assert_eq!(
            translate("SELECT 1 /* a comment */", false),
            "SELECT 1 /* a comment */"
        );
    }
}
