//! SQLite data sets: one database file per data set, an authorizer on every connection,
//! statements run on the calling thread and interrupted at their deadline.
//!
//! SQLite has no roles, so the walls are built per connection:
//! - a data set is its own file (`<dir>/<stem>.<data set>.db`): nothing else is reachable
//!   once attaching is impossible (the authorizer refuses `ATTACH`, and the connection's
//!   limit of attached databases is 0, which also stops `VACUUM INTO`);
//! - the authorizer ([`Policy`]) allows data statements only; transaction statements only
//!   on the transaction pool's connections (the host ends every transaction it starts);
//!   schema changes only while the host applies a migration; never `PRAGMA`, temporary
//!   objects, `load_extension`, or the host's `_plinth_migrations` table;
//! - every statement is interrupted once it has run for the plugin's time limit (the
//!   progress handler compares the statement's start with the clock).
//!
//! Statements run where the plugin's call runs (through `rusqlite`), not on a thread per
//! connection as sqlx's driver ran them: without that hop there and back, `users/me` on
//! SQLite serves 1.38× the requests (issue 14, BENCHMARKS.md). A serving worker must not be
//! held for long, so whatever may take long first hands the worker's queue to another
//! thread ([`hand_over`]):
//! - a statement that may write (committing syncs SQLite's log to disk), and every
//!   statement inside a transaction;
//! - a read that is still running after [`INLINE_BUDGET`]: it is interrupted (a read
//!   changes nothing) and runs again, handed over, within what is left of its time limit;
//! - waiting for another connection's write lock (the busy handler).
//!
//! The authorizer is set through `libsqlite3-sys` (the SQLite rusqlite links) on
//! rusqlite's handle, so that its decision table ([`decide`]) works on SQLite's own action
//! codes; the `unsafe` is confined to `install_policy` and the callback.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use libsqlite3_sys as ffi;
use rusqlite::types::ValueRef;
use rusqlite::{ErrorCode, OpenFlags, Statement};

use super::migrations::{AppliedMigration, MIGRATIONS_TABLE, Migration};
use super::pool::{Pool, PoolStatsFamilies, Pooled};
use super::{BoxFuture, PERMISSION_DENIED, normalise_timestamp};
use crate::bindings::plinth::plugin::sql::{Error, Rows, Value};
use crate::workers::{hand_over, now_ns};

/// How often (in SQLite VM steps) a running statement checks its clock.
const PROGRESS_STEPS: c_int = 1_000;

/// How long a read may hold a serving worker before it is interrupted and run again
/// handed over (a point lookup takes tens of microseconds).
pub const INLINE_BUDGET: Duration = Duration::from_millis(2);

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a migration waits for the write lock (another host may be migrating).
const MIGRATION_BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Prepared statements kept per connection (sqlx's default, which this replaced).
const STATEMENT_CACHE: usize = 100;

/// What the authorizer lets a connection do.
#[derive(Debug)]
pub struct Policy {
    transactions: bool,
    schema_changes: bool,
}

/// Plain statements of a plugin: data only.
pub static SERVING: Policy = Policy {
    transactions: false,
    schema_changes: false,
};
/// Connections handed to the transaction API: data, and the host's BEGIN/COMMIT/ROLLBACK.
pub static TRANSACTIONS: Policy = Policy {
    transactions: true,
    schema_changes: false,
};
/// A plugin's migration: data and schema, inside the host's transaction.
pub static MIGRATING: Policy = Policy {
    transactions: false,
    schema_changes: true,
};

/// A failed SQLite call, or no connection to make it on.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The statement names a parameter the call did not pass.
    #[error("{0}")]
    Parameters(String),
    #[error("timed out waiting for a connection")]
    PoolTimedOut,
    #[error("pool closed")]
    PoolClosed,
    #[error("the thread opening a connection failed")]
    OpenFailed,
}

/// Where the data set files live.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    dir: PathBuf,
    stem: String,
}

impl SqliteBackend {
    /// `url` names the host's database file (`sqlite://data/plinth.db`); data sets live
    /// next to it as `data/plinth.<data set>.db`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let file = database_file(url)?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plinth".into());
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(&dir).with_context(|| {
                format!("cannot create the database directory {}", dir.display())
            })?;
        }
        Ok(Self { dir, stem })
    }

    pub fn file_of(&self, data_set: &str) -> PathBuf {
        self.dir.join(format!("{}.{data_set}.db", self.stem))
    }

    /// The serving and transaction pools of a data set, whose statements are interrupted
    /// after `statement_timeout`.
    pub async fn open(
        &self,
        data_set: &str,
        statement_timeout: Duration,
        max_connections: u32,
        stats: Option<&PoolStatsFamilies>,
    ) -> anyhow::Result<SqlitePools> {
        let file = self.file_of(data_set);
        let pool = |policy: &'static Policy, max: u32, role: &str| {
            let file = file.clone();
            // In-process connections gain nothing from recycling.
            Pool::new(
                max,
                None,
                Arc::new(move || {
                    let file = file.clone();
                    Box::pin(async move {
                        // Opening may create the file and wait for its lock.
                        tokio::task::spawn_blocking(move || {
                            SqliteConn::open(&file, policy, statement_timeout)
                        })
                        .await
                        .unwrap_or(Err(SqliteError::OpenFailed))
                    })
                }),
                stats.map(|stats| stats.of(data_set, role)),
            )
        };
        let serving = pool(&SERVING, max_connections, "serving");
        // The file opens (or is created) now, not at the first request.
        serving
            .acquire()
            .await
            .with_context(|| format!("cannot open {}", self.file_of(data_set).display()))?
            .release_unused();
        // SQLite has one writer at a time: a few transaction connections are plenty.
        let transactions = pool(&TRANSACTIONS, max_connections.clamp(1, 4), "transactions");
        Ok(SqlitePools {
            serving,
            transactions,
        })
    }

    /// Applies `pending` to the data set's file in one immediate transaction, which also
    /// keeps two hosts from applying the same migration: the second waits for the first,
    /// then finds it recorded. Returns what was applied (nothing when all were already).
    pub async fn migrate(
        &self,
        data_set: &str,
        plugin: &str,
        migrations: &[Migration],
    ) -> anyhow::Result<Vec<i64>> {
        let file = self.file_of(data_set);
        let plugin = plugin.to_owned();
        let migrations = migrations.to_vec();
        // Migrations run at load, off the request path, and may wait a minute for the lock.
        tokio::task::spawn_blocking(move || {
            let conn = open_file(&file)
                .and_then(|conn| conn.busy_timeout(MIGRATION_BUSY_TIMEOUT).map(|()| conn))
                .with_context(|| format!("cannot open {}", file.display()))?;
            let result = apply(&conn, &plugin, &migrations);
            if result.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            result
        })
        .await
        .context("the migration thread failed")?
    }
}

/// The file a `sqlite:` URL names.
fn database_file(url: &str) -> anyhow::Result<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .context("DATABASE_URL is not a valid SQLite URL")?;
    anyhow::ensure!(
        !path.contains('?'),
        "DATABASE_URL: a SQLite URL takes no options (`?…`); the host sets them"
    );
    anyhow::ensure!(
        !path.is_empty() && path != ":memory:",
        "DATABASE_URL must name a SQLite file: each data set is a file next to it"
    );
    Ok(PathBuf::from(path))
}

/// Opens (or creates) a data set file with the settings every connection shares; set
/// before any authorizer, which refuses `PRAGMA`.
fn open_file(file: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    Ok(conn)
}

/// The migration transaction: record table, plan, apply under the migration policy,
/// record, commit.
fn apply(
    conn: &rusqlite::Connection,
    plugin: &str,
    migrations: &[Migration],
) -> anyhow::Result<Vec<i64>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, \
         name TEXT NOT NULL, checksum TEXT NOT NULL, applied_by TEXT NOT NULL, \
         applied_at TEXT NOT NULL)"
    ))?;
    let applied = conn
        .prepare(&format!(
            "SELECT version, checksum FROM {MIGRATIONS_TABLE} ORDER BY version"
        ))?
        .query_map([], |row| {
            Ok(AppliedMigration {
                version: row.get(0)?,
                checksum: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let pending = super::migrations::plan(migrations, &applied)?;
    for migration in &pending {
        install_policy(conn, &MIGRATING)?;
        let ran = conn.execute_batch(&migration.sql);
        remove_policy(conn);
        ran.map_err(|e| migration.failed(&describe_for_author(&e)))?;
        conn.execute(
            &format!(
                "INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_by, \
                 applied_at) VALUES (?1, ?2, ?3, ?4, ?5)"
            ),
            rusqlite::params![
                migration.version,
                migration.name,
                migration.checksum,
                plugin,
                super::format_timestamp(chrono::Utc::now()),
            ],
        )?;
    }
    conn.execute_batch("COMMIT")?;
    anyhow::Ok(pending.iter().map(|m| m.version).collect())
}

/// The pools of one SQLite data set.
#[derive(Debug, Clone)]
pub struct SqlitePools {
    pub serving: Pool<SqliteConn>,
    pub transactions: Pool<SqliteConn>,
}

/// One connection to a data set's file, with its policy and statement clock installed.
/// Its statements run on the calling thread (see the module docs for when that thread
/// first leaves the serving workers).
pub struct SqliteConn {
    db: rusqlite::Connection,
    clock: Arc<StatementClock>,
}

impl std::fmt::Debug for SqliteConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteConn").finish_non_exhaustive()
    }
}

impl SqliteConn {
    /// Opens `file` for statements allowed by `policy`, each interrupted after `limit`.
    pub fn open(
        file: &Path,
        policy: &'static Policy,
        limit: Duration,
    ) -> Result<Self, SqliteError> {
        let db = open_file(file)?;
        db.busy_handler(Some(wait_for_lock))?;
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        install_policy(&db, policy)?;
        let clock = Arc::new(StatementClock::new(limit));
        let ticking = clock.clone();
        db.progress_handler(PROGRESS_STEPS, Some(move || ticking.interrupts()));
        Ok(Self { db, clock })
    }

    /// Runs a statement and returns its rows (no columns when there are no rows, as on
    /// PostgreSQL).
    pub fn query(&mut self, statement: &str, params: &[Value]) -> Result<Rows, SqliteError> {
        self.run(statement, params, collect_rows)
    }

    /// Runs a statement (rows it returns are dropped) and returns the rows it changed.
    pub fn execute(&mut self, statement: &str, params: &[Value]) -> Result<u64, SqliteError> {
        let wrote = self.run(statement, params, |prepared| {
            let mut rows = prepared.raw_query();
            while rows.next()?.is_some() {}
            drop(rows);
            Ok(!prepared.readonly())
        })?;
        Ok(if wrote { self.db.changes() } else { 0 })
    }

    /// Runs the host's own transaction control (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`).
    pub fn control(&mut self, statement: &'static str) -> Result<(), SqliteError> {
        self.execute(statement, &[]).map(drop)
    }

    fn run<T>(
        &mut self,
        statement: &str,
        params: &[Value],
        step: impl Fn(&mut Statement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, SqliteError> {
        let mut prepared = self.db.prepare_cached(statement)?;
        bind(&mut prepared, params)?;
        let clock = &self.clock;
        if !prepared.readonly() || !self.db.is_autocommit() {
            clock.start(None);
            return Ok(hand_over(|| step(&mut prepared))?);
        }
        clock.start(Some(INLINE_BUDGET));
        let inline = step(&mut prepared);
        if clock.lift_budget() {
            // Interrupted only for holding a worker: a read, so run it again handed over.
            return Ok(hand_over(|| step(&mut prepared))?);
        }
        Ok(inline?)
    }
}

impl Pooled for SqliteConn {
    type Error = SqliteError;

    fn ping(&mut self) -> BoxFuture<'_, Result<(), SqliteError>> {
        Box::pin(async move {
            self.query("SELECT count(*) FROM sqlite_schema", &[])
                .map(drop)
        })
    }

    fn ready_after(err: &SqliteError) -> bool {
        // The statement ran to its end here, failed or not, unless the file itself failed.
        !matches!(err, SqliteError::Sqlite(e) if file_failed(e))
    }

    fn timed_out() -> SqliteError {
        SqliteError::PoolTimedOut
    }

    fn closed() -> SqliteError {
        SqliteError::PoolClosed
    }
}

/// Binds `params` to the statement's placeholders: `$2` (or `?2`) is the second
/// parameter wherever it appears, as sqlx bound them; any other placeholder takes the
/// parameter of its position.
fn bind(prepared: &mut Statement<'_>, params: &[Value]) -> Result<(), SqliteError> {
    for index in 1..=prepared.parameter_count() {
        let position = prepared
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .and_then(|number| number.parse::<usize>().ok())
            .unwrap_or(index);
        let Some(value) = position.checked_sub(1).and_then(|i| params.get(i)) else {
            return Err(SqliteError::Parameters(format!(
                "the statement uses parameter {position}, but {} were given",
                params.len()
            )));
        };
        match value {
            Value::Null => prepared.raw_bind_parameter(index, rusqlite::types::Null),
            Value::Integer(v) => prepared.raw_bind_parameter(index, v),
            Value::Real(v) => prepared.raw_bind_parameter(index, v),
            Value::Text(v) => prepared.raw_bind_parameter(index, v.as_str()),
            Value::Boolean(v) => prepared.raw_bind_parameter(index, v),
            Value::Blob(v) => prepared.raw_bind_parameter(index, v.as_slice()),
            // SQLite has no timestamp type: RFC 3339 text sorts chronologically.
            Value::Timestamp(v) => prepared.raw_bind_parameter(
                index,
                normalise_timestamp(v).as_deref().unwrap_or(v.as_str()),
            ),
        }?;
    }
    Ok(())
}

/// What a column's declared type adds to SQLite's dynamic value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Boolean,
    Timestamp,
    Other,
}

impl Declared {
    fn of(declared: Option<&str>) -> Self {
        let is = |names: [&str; 2]| {
            declared.is_some_and(|d| names.iter().any(|n| d.eq_ignore_ascii_case(n)))
        };
        if is(["boolean", "bool"]) {
            Self::Boolean
        } else if is(["datetime", "timestamp"]) {
            Self::Timestamp
        } else {
            Self::Other
        }
    }
}

fn collect_rows(prepared: &mut Statement<'_>) -> rusqlite::Result<Rows> {
    let declared: Vec<Declared> = prepared
        .columns()
        .iter()
        .map(|column| Declared::of(column.decl_type()))
        .collect();
    let mut rows = Vec::new();
    let mut cursor = prepared.raw_query();
    while let Some(row) = cursor.next()? {
        let values = declared
            .iter()
            .enumerate()
            .map(|(index, declared)| Ok(value_of(row.get_ref(index)?, *declared)))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.push(values);
    }
    drop(cursor);
    let columns = if rows.is_empty() {
        Vec::new()
    } else {
        prepared
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    Ok(Rows { columns, rows })
}

/// SQLite is dynamically typed: a value is read by its own type, then by what its column
/// declares (booleans are integers, timestamps text).
fn value_of(value: ValueRef<'_>, declared: Declared) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) if declared == Declared::Boolean => Value::Boolean(v != 0),
        ValueRef::Integer(v) => Value::Integer(v),
        ValueRef::Real(v) => Value::Real(v),
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) if declared == Declared::Timestamp => Value::Timestamp(text.to_owned()),
            Ok(text) => Value::Text(text.to_owned()),
            Err(_) => Value::Null,
        },
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
    }
}

/// When a connection's running statement started, how long it may run, and how long it
/// may hold a serving worker.
#[derive(Debug)]
struct StatementClock {
    /// When it started ([`now_ns`]).
    started: AtomicU64,
    limit_nanos: u64,
    /// Past this many nanoseconds the statement is interrupted to run again handed over;
    /// `u64::MAX`: no budget.
    budget_nanos: AtomicU64,
    over_budget: AtomicBool,
}

impl StatementClock {
    fn new(limit: Duration) -> Self {
        Self {
            started: AtomicU64::new(now_ns()),
            limit_nanos: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            budget_nanos: AtomicU64::new(u64::MAX),
            over_budget: AtomicBool::new(false),
        }
    }

    /// A statement starts, inline within `budget` or (`None`) handed over.
    fn start(&self, budget: Option<Duration>) {
        let budget = budget.map_or(u64::MAX, |b| {
            u64::try_from(b.as_nanos()).unwrap_or(u64::MAX)
        });
        self.budget_nanos.store(budget, Ordering::Relaxed);
        self.over_budget.store(false, Ordering::Relaxed);
        self.started.store(now_ns(), Ordering::Relaxed);
    }

    /// The progress handler: whether to interrupt the running statement (SQLite answers
    /// `SQLITE_INTERRUPT`: past the limit the plugin sees `timed-out`).
    fn interrupts(&self) -> bool {
        let running = now_ns().saturating_sub(self.started.load(Ordering::Relaxed));
        if running > self.limit_nanos {
            return true;
        }
        if running > self.budget_nanos.load(Ordering::Relaxed) {
            self.over_budget.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Ends the inline budget (the time limit still counts from the first start); returns
    /// whether the statement was interrupted for exceeding it.
    fn lift_budget(&self) -> bool {
        self.budget_nanos.store(u64::MAX, Ordering::Relaxed);
        self.over_budget.swap(false, Ordering::Relaxed)
    }
}

/// SQLite's busy handler: waits for another connection's lock with SQLite's own back-off
/// (`sqliteDefaultBusyCallback`), up to [`BUSY_TIMEOUT`], off the serving workers.
fn wait_for_lock(attempt: i32) -> bool {
    const DELAYS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    let attempt = usize::try_from(attempt).unwrap_or(0);
    let delay = DELAYS_MS.get(attempt).copied().unwrap_or(100);
    let waited: u64 = DELAYS_MS.iter().take(attempt).sum::<u64>()
        + 100 * u64::try_from(attempt.saturating_sub(DELAYS_MS.len())).unwrap_or(u64::MAX);
    let timeout = u64::try_from(BUSY_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    if waited >= timeout {
        return false;
    }
    let delay = delay.min(timeout - waited);
    hand_over(|| std::thread::sleep(Duration::from_millis(delay)));
    true
}

/// Errors that say the database file itself failed: the plugin sees `unavailable`.
fn file_failed(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code().is_some_and(|code| {
        matches!(
            code,
            ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::OutOfMemory
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
        )
    })
}

/// A short, data-free description of a SQLite error, for logs and `/ready`.
pub fn describe(err: &SqliteError) -> String {
    match err {
        SqliteError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
            format!("database error {}", failure.extended_code)
        }
        other => other.to_string().chars().take(120).collect(),
    }
}

/// The database's message for a failed migration: shown to operators (log, admin API),
/// and about the plugin's own SQL.
fn describe_for_author(err: &rusqlite::Error) -> String {
    match err {
        rusqlite::Error::SqliteFailure(failure, Some(message)) => {
            format!("{message} (code {})", failure.extended_code)
        }
        other => other.to_string(),
    }
}

/// What a plugin sees of a failed statement. SQLite's messages name tables, columns and
/// indexes, never values, so they may cross the boundary.
pub fn into_wit_error(err: SqliteError) -> Error {
    let failure = match &err {
        SqliteError::Sqlite(rusqlite::Error::SqliteFailure(failure, message)) => {
            Some((failure, message.as_deref().unwrap_or_default()))
        }
        _ => None,
    };
    match (&err, failure) {
        (SqliteError::Parameters(reason), _) => Error::Invalid(reason.clone()),
        (SqliteError::PoolTimedOut | SqliteError::PoolClosed | SqliteError::OpenFailed, _) => {
            tracing::warn!(error = %describe(&err), "database unavailable");
            Error::Unavailable
        }
        (_, Some((failure, _))) if failure.code == ErrorCode::OperationInterrupted => {
            tracing::warn!("statement cancelled at its deadline");
            Error::TimedOut
        }
        (_, Some((failure, message)))
            if matches!(
                failure.extended_code,
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ) =>
        {
            // The index or column, e.g. `users_email_unique`: never the values.
            Error::UniqueViolation(index_name(message).unwrap_or_default())
        }
        (_, Some((failure, _)))
            if matches!(
                failure.extended_code,
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY
                    | ffi::SQLITE_CONSTRAINT_NOTNULL
                    | ffi::SQLITE_CONSTRAINT_CHECK
            ) =>
        {
            Error::ConstraintViolation(String::new())
        }
        (_, Some((failure, _))) if failure.code == ErrorCode::AuthorizationForStatementDenied => {
            Error::Invalid(PERMISSION_DENIED.into())
        }
        (SqliteError::Sqlite(sqlite), _) if file_failed(sqlite) => {
            tracing::warn!(error = %describe(&err), "database unavailable");
            Error::Unavailable
        }
        (_, Some((_, message))) => {
            tracing::warn!(error = %describe(&err), "statement failed");
            Error::Invalid(message.chars().take(200).collect())
        }
        (_, None) => {
            tracing::warn!(error = %describe(&err), "statement failed");
            Error::Invalid(describe(&err))
        }
    }
}

/// SQLite reports `UNIQUE constraint failed: index 'users_email_unique'` for expression
/// indexes, or `...: users.email` for column constraints.
fn index_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("UNIQUE constraint failed: ")?;
    Some(
        rest.trim_start_matches("index ")
            .trim_matches('\'')
            .to_owned(),
    )
}

/// Sets `policy` as the connection's authorizer and forbids attaching databases.
pub fn install_policy(
    conn: &rusqlite::Connection,
    policy: &'static Policy,
) -> rusqlite::Result<()> {
    // SAFETY: the handle is live for `conn`'s lifetime, and `conn` is used by one thread
    // at a time. `policy` is 'static, so the pointer SQLite keeps stays valid for the
    // connection's whole life; the callback only reads it. rusqlite sets no authorizer of
    // its own (it only clears one when closing).
    let status = unsafe {
        let db = conn.handle();
        ffi::sqlite3_limit(db, ffi::SQLITE_LIMIT_ATTACHED, 0);
        ffi::sqlite3_set_authorizer(
            db,
            Some(authorize),
            std::ptr::from_ref(policy).cast_mut().cast::<c_void>(),
        )
    };
    if status == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(status),
            Some("cannot install the SQLite authorizer".into()),
        ))
    }
}

fn remove_policy(conn: &rusqlite::Connection) {
    // SAFETY: as in `install_policy`; a null callback removes the authorizer.
    unsafe { ffi::sqlite3_set_authorizer(conn.handle(), None, std::ptr::null_mut()) };
}

/// SQLite's authorizer callback: decides, while a statement is prepared, whether each
/// action it would take is allowed.
unsafe extern "C" fn authorize(
    policy: *mut c_void,
    action: c_int,
    arg1: *const c_char,
    arg2: *const c_char,
    database: *const c_char,
    _trigger: *const c_char,
) -> c_int {
    // SAFETY: `policy` is the `&'static Policy` given in `install_policy`; the strings are
    // NUL-terminated or null, valid for the duration of the call (SQLite's contract).
    let (policy, arg1, arg2, database) = unsafe {
        (
            &*policy.cast::<Policy>(),
            text(arg1),
            text(arg2),
            text(database),
        )
    };
    if decide(policy, action, arg1, arg2, database) {
        ffi::SQLITE_OK
    } else {
        ffi::SQLITE_DENY
    }
}

/// # Safety
/// `ptr` is null or a valid NUL-terminated string.
unsafe fn text<'a>(ptr: *const c_char) -> Option<&'a str> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(ptr) }.to_str().ok()
    }
}

/// The authorizer's decision, kept free of FFI so it can be tested directly.
fn decide(
    policy: &Policy,
    action: c_int,
    arg1: Option<&str>,
    arg2: Option<&str>,
    database: Option<&str>,
) -> bool {
    let hidden_table =
        |table: Option<&str>| table.is_some_and(|t| t.eq_ignore_ascii_case(MIGRATIONS_TABLE));
    let internal_table = |table: Option<&str>| {
        table.is_some_and(|t| t.len() >= 7 && t[..7].eq_ignore_ascii_case("sqlite_"))
    };
    // Everything lives in the data set's own file; `temp` holds nothing a plugin made.
    if database.is_some_and(|db| db != "main") {
        return false;
    }
    match action {
        ffi::SQLITE_SELECT | ffi::SQLITE_RECURSIVE => true,
        ffi::SQLITE_READ => !hidden_table(arg1),
        // A schema change writes SQLite's own tables (`sqlite_master`); writing them
        // directly still needs `PRAGMA writable_schema`, which is never allowed.
        ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE | ffi::SQLITE_DELETE => {
            !hidden_table(arg1) && (policy.schema_changes || !internal_table(arg1))
        }
        ffi::SQLITE_FUNCTION => !matches!(
            arg2.map(str::to_ascii_lowercase).as_deref(),
            Some("load_extension" | "readfile" | "writefile" | "edit" | "fts3_tokenizer")
        ),
        ffi::SQLITE_TRANSACTION | ffi::SQLITE_SAVEPOINT => policy.transactions,
        ffi::SQLITE_CREATE_INDEX
        | ffi::SQLITE_CREATE_TABLE
        | ffi::SQLITE_CREATE_TRIGGER
        | ffi::SQLITE_CREATE_VIEW
        | ffi::SQLITE_DROP_INDEX
        | ffi::SQLITE_DROP_TABLE
        | ffi::SQLITE_DROP_TRIGGER
        | ffi::SQLITE_DROP_VIEW
        | ffi::SQLITE_ALTER_TABLE
        | ffi::SQLITE_REINDEX
        // SQLite creates its own tables as needed (`sqlite_sequence` for AUTOINCREMENT),
        // and refuses to drop or alter them itself.
        | ffi::SQLITE_ANALYZE => policy.schema_changes && !hidden_table(arg1),
        // ATTACH, DETACH, PRAGMA, virtual tables, temporary objects and anything newer.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_violations_name_the_index_or_column() {
        assert_eq!(
            index_name("UNIQUE constraint failed: index 'users_email_unique'").as_deref(),
            Some("users_email_unique")
        );
        assert_eq!(
            index_name("UNIQUE constraint failed: users.email").as_deref(),
            Some("users.email")
        );
    }

    /// The first row of `statement` with `params` bound, as text.
    fn bound(statement: &str, params: &[Value]) -> anyhow::Result<Vec<String>> {
        let conn = rusqlite::Connection::open_in_memory()?;
        let mut prepared = conn.prepare(statement)?;
        bind(&mut prepared, params)?;
        let columns = prepared.column_count();
        let mut rows = prepared.raw_query();
        let row = rows.next()?.ok_or_else(|| anyhow::anyhow!("no row"))?;
        Ok((0..columns)
            .map(|i| row.get::<_, String>(i))
            .collect::<rusqlite::Result<_>>()?)
    }

    #[test]
    fn numbered_placeholders_bind_by_number_others_by_position() -> anyhow::Result<()> {
        let text = |t: &str| Value::Text(t.into());
        assert_eq!(
            bound("SELECT $2, $1, $2", &[text("a"), text("b")])?,
            ["b", "a", "b"]
        );
        assert_eq!(bound("SELECT ?, ?", &[text("a"), text("b")])?, ["a", "b"]);
        assert!(matches!(
            bound("SELECT $3", &[text("a")]).map_err(|e| e.downcast::<SqliteError>()),
            Err(Ok(SqliteError::Parameters(_)))
        ));
        Ok(())
    }

    #[test]
    fn serving_connections_manipulate_data_only() {
        let main = Some("main");
        assert!(decide(
            &SERVING,
            ffi::SQLITE_READ,
            Some("users"),
            Some("email"),
            main
        ));
        assert!(decide(
            &SERVING,
            ffi::SQLITE_INSERT,
            Some("users"),
            None,
            main
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_INSERT,
            Some(MIGRATIONS_TABLE),
            None,
            main
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_READ,
            Some(MIGRATIONS_TABLE),
            Some("version"),
            main
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_UPDATE,
            Some("sqlite_sequence"),
            None,
            main
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_TRANSACTION,
            Some("BEGIN"),
            None,
            None
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_CREATE_TABLE,
            Some("x"),
            None,
            main
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_CREATE_TEMP_TABLE,
            Some("users"),
            None,
            Some("temp")
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_ATTACH,
            Some("/tmp/x.db"),
            None,
            None
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_PRAGMA,
            Some("writable_schema"),
            Some("1"),
            None
        ));
        assert!(!decide(
            &SERVING,
            ffi::SQLITE_FUNCTION,
            None,
            Some("load_extension"),
            None
        ));
        assert!(decide(
            &SERVING,
            ffi::SQLITE_FUNCTION,
            None,
            Some("lower"),
            None
        ));
    }

    #[test]
    fn transactions_and_migrations_get_only_their_extra() {
        let main = Some("main");
        assert!(decide(
            &TRANSACTIONS,
            ffi::SQLITE_TRANSACTION,
            Some("COMMIT"),
            None,
            None
        ));
        assert!(!decide(
            &TRANSACTIONS,
            ffi::SQLITE_DROP_TABLE,
            Some("users"),
            None,
            main
        ));
        assert!(decide(
            &MIGRATING,
            ffi::SQLITE_CREATE_TABLE,
            Some("notes"),
            None,
            main
        ));
        assert!(!decide(
            &MIGRATING,
            ffi::SQLITE_DROP_TABLE,
            Some(MIGRATIONS_TABLE),
            None,
            main
        ));
        assert!(!decide(
            &MIGRATING,
            ffi::SQLITE_TRANSACTION,
            Some("COMMIT"),
            None,
            None
        ));
        assert!(!decide(
            &MIGRATING,
            ffi::SQLITE_ATTACH,
            Some("/tmp/x.db"),
            None,
            None
        ));
    }
}
