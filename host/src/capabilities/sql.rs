//! `sql`: parameterised statements against SQLite (the embedded default) or PostgreSQL.
//!
//! The module owns the pools (a primary and an optional read replica), applies the
//! migrations at start-up, and implements the WIT `sql` interface. Errors reach plugins as
//! WIT values: a unique violation is distinguishable (a plugin answers 409), a database that
//! cannot be reached is `unavailable` (a plugin answers 503), and nothing of the database's
//! own error text that could carry data crosses the boundary.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::bindings::plinth::plugin::sql::{BackendKind, Error, Host, Rows, Value};
use crate::plugins::runtime::InstanceState;

pub const INTERFACE: &str = "sql";

/// How long a statement waits for a pooled connection before answering `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Database settings from the environment.
#[derive(Clone)]
pub struct SqlConfig {
    pub url: String,
    pub read_url: Option<String>,
    pub max_connections: u32,
}

impl std::fmt::Debug for SqlConfig {
    // URLs may carry passwords: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConfig")
            .field("backend", &backend_name(&self.url))
            .field("read_replica", &self.read_url.is_some())
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

fn backend_name(url: &str) -> &'static str {
    if url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    }
}

/// The connection pools.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres { primary: PgPool, read: PgPool },
}

impl Database {
    /// Opens the pools and applies the migrations. A database that cannot be reached at
    /// start-up stops the host with that reason; once running, an outage answers 503 and
    /// the pools reconnect by themselves when the database is back.
    pub async fn connect(config: &SqlConfig) -> anyhow::Result<Self> {
        let db = if config.url.starts_with("postgres://") || config.url.starts_with("postgresql://")
        {
            let pool = |url: &str| -> anyhow::Result<PgPool> {
                PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy(url)
                    .context("DATABASE_URL is not a valid PostgreSQL URL")
            };
            let primary = pool(&config.url)?;
            let read = match &config.read_url {
                Some(url) => pool(url).context("DATABASE_READ_URL")?,
                None => primary.clone(),
            };
            Self::Postgres { primary, read }
        } else if config.url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(&config.url)
                .context("DATABASE_URL is not a valid SQLite URL")?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!("cannot create the database directory {}", parent.display())
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .context("cannot open the SQLite database")?;
            Self::Sqlite(pool)
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite: or postgres://");
        };
        db.migrate().await.context("applying database migrations")?;
        Ok(db)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Self::Postgres { primary, .. } => POSTGRES_MIGRATIONS.run(primary).await?,
        }
        Ok(())
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Sqlite(_) => BackendKind::Sqlite,
            Self::Postgres { .. } => BackendKind::Postgres,
        }
    }

    /// Checks that the primary answers (and the replica, when there is one).
    pub async fn ping(&self) -> Result<(), String> {
        match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)
                .map_err(|e| describe(&e)),
            Self::Postgres { primary, read } => {
                sqlx::query("SELECT 1")
                    .execute(primary)
                    .await
                    .map_err(|e| describe(&e))?;
                sqlx::query("SELECT 1")
                    .execute(read)
                    .await
                    .map(drop)
                    .map_err(|e| format!("read replica: {}", describe(&e)))
            }
        }
    }

    pub async fn query(
        &self,
        statement: &str,
        params: Vec<Value>,
        read_only: bool,
    ) -> Result<Rows, Error> {
        match self {
            Self::Sqlite(pool) => {
                let query = bind_all_sqlite(sqlx::query(statement), params);
                let rows = query.fetch_all(pool).await.map_err(into_wit_error)?;
                Ok(collect_rows(&rows, sqlite_value))
            }
            Self::Postgres { primary, read } => {
                let pool = if read_only { read } else { primary };
                let query = bind_all_pg(sqlx::query(statement), params);
                let rows = query.fetch_all(pool).await.map_err(into_wit_error)?;
                Ok(collect_rows(&rows, pg_value))
            }
        }
    }

    pub async fn execute(&self, statement: &str, params: Vec<Value>) -> Result<u64, Error> {
        match self {
            Self::Sqlite(pool) => bind_all_sqlite(sqlx::query(statement), params)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(into_wit_error),
            Self::Postgres { primary, .. } => bind_all_pg(sqlx::query(statement), params)
                .execute(primary)
                .await
                .map(|r| r.rows_affected())
                .map_err(into_wit_error),
        }
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_all_sqlite(mut query: SqliteQuery<'_>, params: Vec<Value>) -> SqliteQuery<'_> {
    for param in params {
        query = match param {
            Value::Null => query.bind(None::<String>),
            Value::Integer(v) => query.bind(v),
            Value::Real(v) => query.bind(v),
            Value::Text(v) => query.bind(v),
            Value::Boolean(v) => query.bind(v),
            Value::Blob(v) => query.bind(v),
            // SQLite has no timestamp type: RFC 3339 text sorts chronologically.
            Value::Timestamp(v) => query.bind(normalise_timestamp(&v).unwrap_or(v)),
        };
    }
    query
}

fn bind_all_pg(mut query: PgQuery<'_>, params: Vec<Value>) -> PgQuery<'_> {
    for param in params {
        query = match param {
            Value::Null => query.bind(None::<String>),
            Value::Integer(v) => query.bind(v),
            Value::Real(v) => query.bind(v),
            Value::Text(v) => query.bind(v),
            Value::Boolean(v) => query.bind(v),
            Value::Blob(v) => query.bind(v),
            Value::Timestamp(v) => match DateTime::parse_from_rfc3339(&v) {
                Ok(t) => query.bind(t.with_timezone(&Utc)),
                // Let the database reject it with a clear `invalid` error.
                Err(_) => query.bind(v),
            },
        };
    }
    query
}

fn normalise_timestamp(value: &str) -> Option<String> {
    let parsed = DateTime::parse_from_rfc3339(value).ok()?;
    Some(format_timestamp(parsed.with_timezone(&Utc)))
}

/// The one timestamp format of the API: RFC 3339 UTC with a `Z`, whole seconds when exact.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn collect_rows<R: Row>(rows: &[R], decode: fn(&R, usize) -> Value) -> Rows {
    let columns = rows
        .first()
        .map(|row| row.columns().iter().map(|c| c.name().to_owned()).collect())
        .unwrap_or_default();
    let rows = rows
        .iter()
        .map(|row| (0..row.columns().len()).map(|i| decode(row, i)).collect())
        .collect();
    Rows { columns, rows }
}

fn sqlite_value(row: &SqliteRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    // SQLite is dynamically typed: decode by the declared type, then by the value's own.
    let declared = row.columns()[index].type_info().name().to_ascii_uppercase();
    let actual = raw.type_info().name().to_ascii_uppercase();
    if declared == "BOOLEAN"
        && let Ok(v) = row.try_get::<bool, _>(index)
    {
        return Value::Boolean(v);
    }
    match actual.as_str() {
        "INTEGER" | "INT" | "BIGINT" | "BOOLEAN" => row
            .try_get::<i64, _>(index)
            .map(Value::Integer)
            .unwrap_or(Value::Null),
        "REAL" | "FLOAT" | "DOUBLE" | "NUMERIC" => row
            .try_get::<f64, _>(index)
            .map(Value::Real)
            .unwrap_or(Value::Null),
        "BLOB" => row
            .try_get::<Vec<u8>, _>(index)
            .map(Value::Blob)
            .unwrap_or(Value::Null),
        _ => row
            .try_get::<String, _>(index)
            .map(|text| {
                if declared == "DATETIME" || declared == "TIMESTAMP" {
                    Value::Timestamp(text)
                } else {
                    Value::Text(text)
                }
            })
            .unwrap_or(Value::Null),
    }
}

fn pg_value(row: &PgRow, index: usize) -> Value {
    let Ok(raw) = row.try_get_raw(index) else {
        return Value::Null;
    };
    if raw.is_null() {
        return Value::Null;
    }
    let type_name = row.columns()[index].type_info().name().to_owned();
    let decoded = match type_name.as_str() {
        "INT2" => row
            .try_get::<i16, _>(index)
            .map(|v| Value::Integer(v.into())),
        "INT4" => row
            .try_get::<i32, _>(index)
            .map(|v| Value::Integer(v.into())),
        "INT8" => row.try_get::<i64, _>(index).map(Value::Integer),
        "FLOAT4" => row.try_get::<f32, _>(index).map(|v| Value::Real(v.into())),
        "FLOAT8" => row.try_get::<f64, _>(index).map(Value::Real),
        "BOOL" => row.try_get::<bool, _>(index).map(Value::Boolean),
        "BYTEA" => row.try_get::<Vec<u8>, _>(index).map(Value::Blob),
        "TIMESTAMPTZ" => row
            .try_get::<DateTime<Utc>, _>(index)
            .map(|t| Value::Timestamp(format_timestamp(t))),
        "TIMESTAMP" => row
            .try_get::<chrono::NaiveDateTime, _>(index)
            .map(|t| Value::Timestamp(format_timestamp(t.and_utc()))),
        _ => row.try_get::<String, _>(index).map(Value::Text),
    };
    decoded.unwrap_or(Value::Null)
}

/// A short, data-free description of a database error, for logs and `/ready`.
pub fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        sqlx::Error::Io(e) => format!("connection failed: {}", e.kind()),
        sqlx::Error::Tls(_) => "TLS failure".into(),
        sqlx::Error::PoolClosed => "pool closed".into(),
        sqlx::Error::Database(db) => format!("database error {}", db.code().unwrap_or_default()),
        other => other.to_string().chars().take(120).collect(),
    }
}

fn into_wit_error(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(db) => match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                // The constraint (index) name, e.g. `users_email_unique`: never the values.
                let name = db
                    .constraint()
                    .map(str::to_owned)
                    .or_else(|| sqlite_index_name(db.message()))
                    .unwrap_or_default();
                Error::UniqueViolation(name)
            }
            sqlx::error::ErrorKind::ForeignKeyViolation
            | sqlx::error::ErrorKind::NotNullViolation
            | sqlx::error::ErrorKind::CheckViolation => {
                Error::ConstraintViolation(db.constraint().unwrap_or_default().to_owned())
            }
            _ => {
                tracing::warn!(error = %describe(&err), "statement failed");
                Error::Invalid(describe(&err))
            }
        },
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => {
            tracing::warn!(error = %describe(&err), "database unavailable");
            Error::Unavailable
        }
        _ => {
            tracing::warn!(error = %describe(&err), "statement failed");
            Error::Invalid(describe(&err))
        }
    }
}

/// SQLite reports `UNIQUE constraint failed: index 'users_email_unique'` for expression
/// indexes, or `...: users.email` for column constraints.
fn sqlite_index_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("UNIQUE constraint failed: ")?;
    Some(
        rest.trim_start_matches("index ")
            .trim_matches('\'')
            .to_owned(),
    )
}

impl Host for InstanceState {
    async fn backend(&mut self) -> wasmtime::Result<BackendKind> {
        Ok(self.capabilities.database.kind())
    }

    async fn query(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        Ok(self
            .capabilities
            .database
            .query(&statement, params, false)
            .await)
    }

    async fn query_read(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        Ok(self
            .capabilities
            .database
            .query(&statement, params, true)
            .await)
    }

    async fn execute(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        Ok(self.capabilities.database.execute(&statement, params).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_unique_messages_name_the_index() {
        assert_eq!(
            sqlite_index_name("UNIQUE constraint failed: index 'users_email_unique'").as_deref(),
            Some("users_email_unique")
        );
        assert_eq!(
            sqlite_index_name("UNIQUE constraint failed: users.email").as_deref(),
            Some("users.email")
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_z() {
        assert_eq!(
            normalise_timestamp("2026-11-29T11:00:00+01:00").as_deref(),
            Some("2026-11-29T10:00:00Z")
        );
    }

    #[tokio::test]
    async fn sqlite_round_trips_typed_values_and_reports_unique_violations() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let db = Database::connect(&SqlConfig {
            url,
            read_url: None,
            max_connections: 2,
        })
        .await?;
        let now = "2026-11-29T10:00:00Z".to_owned();
        let insert = "INSERT INTO users (email, username, hashed_password, full_name, \
                      is_active, is_superuser, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                      RETURNING id, is_active, full_name, created_at";
        let params = || {
            vec![
                Value::Text("a@example.com".into()),
                Value::Text("ana".into()),
                Value::Text("hash".into()),
                Value::Null,
                Value::Boolean(true),
                Value::Boolean(false),
                Value::Timestamp(now.clone()),
            ]
        };
        let rows = db
            .query(insert, params(), false)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(rows.columns, ["id", "is_active", "full_name", "created_at"]);
        assert!(matches!(rows.rows[0][0], Value::Integer(1)));
        assert!(matches!(rows.rows[0][1], Value::Boolean(true)));
        assert!(matches!(rows.rows[0][2], Value::Null));
        assert!(matches!(&rows.rows[0][3], Value::Text(t) if *t == now));

        let mut again = params();
        again[0] = Value::Text("A@EXAMPLE.COM".into());
        again[1] = Value::Text("other".into());
        match db.query(insert, again, false).await {
            Err(Error::UniqueViolation(name)) => assert!(name.contains("email"), "{name}"),
            other => panic!("expected a unique violation, got {other:?}"),
        }
        Ok(())
    }
}
