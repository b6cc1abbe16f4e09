//! SQLite data sets: one database file per data set, an authorizer on every connection,
//! and statements interrupted at their deadline.
//!
//! SQLite has no roles, so the walls are built per connection:
//! - a data set is its own file (`<dir>/<stem>.<data set>.db`): nothing else is reachable
//!   once attaching is impossible (the authorizer refuses `ATTACH`, and the connection's
//!   limit of attached databases is 0, which also stops `VACUUM INTO`);
//! - the authorizer ([`Policy`]) allows data statements only; transaction statements only
//!   on the transaction pool's connections (the host ends every transaction it starts);
//!   schema changes only while the host applies a migration; never `PRAGMA`, temporary
//!   objects, `load_extension`, or the host's `_plinth_migrations` table;
//! - every statement is interrupted once it has run for the plugin's time limit (a trace
//!   callback notes when it starts, the progress handler compares).
//!
//! The authorizer is set through `libsqlite3-sys`, the crate sqlx itself links, because
//! sqlx has no API for it (nor for the trace callback); the `unsafe` is confined to the
//! two `install_` functions and the callbacks.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use libsqlite3_sys as ffi;
use sqlx::Connection;
use sqlx::Executor as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::migrations::{AppliedMigration, MIGRATIONS_TABLE, Migration};
use super::pool::{Pool, PoolStatsFamilies};

/// How often (in SQLite VM steps) a running statement checks its deadline.
const PROGRESS_STEPS: i32 = 1_000;

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

/// SQLite settings shared by every data set file.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    base: SqliteConnectOptions,
    dir: PathBuf,
    stem: String,
}

impl SqliteBackend {
    /// `url` names the host's database file (`sqlite://data/plinth.db`); data sets live
    /// next to it as `data/plinth.<data set>.db`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .context("DATABASE_URL is not a valid SQLite URL")?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let file = base.get_filename().to_path_buf();
        anyhow::ensure!(
            file.as_os_str() != ":memory:" && !file.as_os_str().is_empty(),
            "DATABASE_URL must name a SQLite file: each data set is a file next to it"
        );
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
        Ok(Self { base, dir, stem })
    }

    pub fn file_of(&self, data_set: &str) -> PathBuf {
        self.dir.join(format!("{}.{data_set}.db", self.stem))
    }

    fn options(&self, data_set: &str) -> SqliteConnectOptions {
        self.base.clone().filename(self.file_of(data_set))
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
        let options = self.options(data_set);
        let pool = |policy: &'static Policy, max: u32, role: &str| {
            let options = options.clone();
            // In-process connections gain nothing from recycling, and each carries a small
            // statement clock for its whole life (see `install_statement_clock`).
            Pool::new(
                max,
                None,
                Arc::new(move || {
                    let options = options.clone();
                    Box::pin(async move {
                        let mut conn = SqliteConnection::connect_with(&options).await?;
                        install_policy(&mut conn, policy).await?;
                        install_statement_clock(&mut conn, statement_timeout).await?;
                        Ok(conn)
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
        let options = self.options(data_set).busy_timeout(Duration::from_secs(60));
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .with_context(|| format!("cannot open {}", self.file_of(data_set).display()))?;
        let result = apply(&mut conn, plugin, migrations).await;
        if result.is_err() {
            let _ = (&mut conn).execute(sqlx::raw_sql("ROLLBACK")).await;
        }
        let _ = conn.close().await;
        result
    }
}

/// The migration transaction: record table, plan, apply under the migration policy,
/// record, commit.
async fn apply(
    conn: &mut SqliteConnection,
    plugin: &str,
    migrations: &[Migration],
) -> anyhow::Result<Vec<i64>> {
    (&mut *conn)
        .execute(sqlx::raw_sql("BEGIN IMMEDIATE"))
        .await?;
    (&mut *conn)
        .execute(sqlx::raw_sql(&format!(
            "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, \
             name TEXT NOT NULL, checksum TEXT NOT NULL, applied_by TEXT NOT NULL, \
             applied_at TEXT NOT NULL)"
        )))
        .await?;
    let applied: Vec<AppliedMigration> = sqlx::query_as(&format!(
        "SELECT version, checksum FROM {MIGRATIONS_TABLE} ORDER BY version"
    ))
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let pending = super::migrations::plan(migrations, &applied)?;
    for migration in &pending {
        install_policy(conn, &MIGRATING).await?;
        let ran = (&mut *conn).execute(sqlx::raw_sql(&migration.sql)).await;
        remove_policy(&mut *conn).await?;
        ran.map_err(|e| migration.failed(&e))?;
        sqlx::query(&format!(
            "INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_by, \
                 applied_at) VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(migration.version)
        .bind(&migration.name)
        .bind(&migration.checksum)
        .bind(plugin)
        .bind(super::format_timestamp(chrono::Utc::now()))
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    }
    (&mut *conn).execute(sqlx::raw_sql("COMMIT")).await?;
    anyhow::Ok(pending.iter().map(|m| m.version).collect())
}

/// The pools of one SQLite data set.
#[derive(Debug, Clone)]
pub struct SqlitePools {
    pub serving: Pool<SqliteConnection>,
    pub transactions: Pool<SqliteConnection>,
}

/// When a connection's running statement started, and how long one may run.
#[derive(Debug)]
struct StatementClock {
    /// Nanoseconds since [`clock_origin`].
    started: AtomicU64,
    limit_nanos: u64,
}

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn nanos_since_origin() -> u64 {
    u64::try_from(clock_origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Interrupts any statement of this connection still running after `limit` (SQLite
/// answers `SQLITE_INTERRUPT`, which the plugin sees as `timed-out`). Installed once per
/// connection: a trace callback notes when each statement starts and the progress handler
/// compares, so nothing is done per statement from the async side.
async fn install_statement_clock(
    conn: &mut SqliteConnection,
    limit: Duration,
) -> Result<(), sqlx::Error> {
    // Leaked on purpose: SQLite holds the pointer for the connection's whole life and sqlx
    // has no close hook to free it. The pools never recycle connections, so this is one
    // small allocation per connection opened.
    let clock: &'static StatementClock = Box::leak(Box::new(StatementClock {
        started: AtomicU64::new(nanos_since_origin()),
        limit_nanos: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
    }));
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let context = std::ptr::from_ref(clock).cast_mut().cast::<c_void>();
    // SAFETY: `db` is a live connection handle, and the locked handle guarantees that
    // sqlx's worker thread makes no call on it meanwhile. `clock` is 'static; the
    // callbacks only read it and store to its atomic. sqlx sets no trace callback and no
    // progress handler of its own on these connections.
    let status = unsafe {
        ffi::sqlite3_progress_handler(db, PROGRESS_STEPS, Some(past_deadline), context);
        ffi::sqlite3_trace_v2(db, STATEMENT_STARTS, Some(statement_started), context)
    };
    if status == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "cannot install the SQLite statement clock (code {status})"
        )))
    }
}

/// `SQLITE_TRACE_STMT`: called when a statement starts running.
const STATEMENT_STARTS: c_uint = 1;

unsafe extern "C" fn statement_started(
    _event: c_uint,
    clock: *mut c_void,
    _statement: *mut c_void,
    _sql: *mut c_void,
) -> c_int {
    // SAFETY: `clock` is the `&'static StatementClock` given in `install_statement_clock`.
    let clock = unsafe { &*clock.cast::<StatementClock>() };
    clock.started.store(nanos_since_origin(), Ordering::Relaxed);
    0
}

unsafe extern "C" fn past_deadline(clock: *mut c_void) -> c_int {
    // SAFETY: as in `statement_started`.
    let clock = unsafe { &*clock.cast::<StatementClock>() };
    let running = nanos_since_origin().saturating_sub(clock.started.load(Ordering::Relaxed));
    c_int::from(running > clock.limit_nanos)
}

/// Sets `policy` as the connection's authorizer and forbids attaching databases.
pub async fn install_policy(
    conn: &mut SqliteConnection,
    policy: &'static Policy,
) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is a live connection handle, and the locked handle guarantees that
    // sqlx's worker thread makes no call on it meanwhile. `policy` is 'static, so the
    // pointer SQLite keeps stays valid for the connection's whole life; the callback only
    // reads it.
    let status = unsafe {
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
        Err(sqlx::Error::Protocol(format!(
            "cannot install the SQLite authorizer (code {status})"
        )))
    }
}

async fn remove_policy(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: as in `install_policy`; a null callback removes the authorizer.
    unsafe { ffi::sqlite3_set_authorizer(db, None, std::ptr::null_mut()) };
    Ok(())
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
