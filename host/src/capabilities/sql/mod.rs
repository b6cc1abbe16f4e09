//! `sql`: parameterised statements in the plugin's own **data set**.
//!
//! A data set is a namespace of tables that one plugin, or the few plugins the operator
//! lets share it, own: a schema with its own login roles on PostgreSQL
//! ([`postgres`]), a database file of its own on SQLite ([`sqlite`]). A plugin reaches
//! only its data set; the database enforces it (roles, an authorizer), and a lexical
//! [`guard`] refuses what privileges cannot express (transaction control, session
//! settings, several statements in one call). Plugins change their schema only through
//! the [`migrations`] they ship, applied by the host before a version serves; atomic
//! multi-statement work goes through the `transaction` resource.
//!
//! Flow: at load, [`SqlService::prepare`] provisions the data set (once), applies the
//! plugin's pending migrations and hands back a [`DataSet`] handle with the plugin's
//! statement timeout; per request, [`SqlInstance`] (the WIT `Host`) runs statements
//! through it. Errors reach plugins as WIT values: a unique violation is distinguishable
//! (409), an unreachable database is `unavailable` (503), a statement past its deadline is
//! `timed-out`, and nothing of the database's own error text that could carry data crosses
//! the boundary.

pub mod guard;
pub mod migrations;
pub mod pool;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Executor as _;
use sqlx::postgres::PgConnection;
use sqlx::postgres::PgRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use super::{CapabilityView, Descriptor, Grants};
use crate::bindings::plinth::plugin::sql::{self as wit, BackendKind, Error, Rows, Value};
use crate::telemetry::metrics::{HostCall, HostCalls};

pub use migrations::Migration;

/// Futures of the database calls are boxed as `Send` where they are made: nested in the
/// server's connection future, rustc fails to prove sqlx's generic executor futures `Send`
/// for every lifetime ("implementation of `Executor` is not general enough"). For the same
/// reason SQL text runs as `executor.execute(sqlx::raw_sql(..))`, whose future is already
/// boxed, rather than `raw_sql(..).execute(executor)`.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Transactions one instance may hold open at once (each holds a connection).
const MAX_OPEN_TRANSACTIONS: usize = 1;

/// What a plugin is told when the database's privileges refuse a statement.
const PERMISSION_DENIED: &str = "permission denied: plugins reach only their own data set's \
                                 tables, and change its schema only through migrations";

pub fn descriptor<T: CapabilityView>() -> Descriptor<T> {
    Descriptor {
        interface: "sql",
        granted: |grants: &Grants| grants.sql.is_some(),
        link: |linker: &mut Linker<T>| {
            wit::add_to_linker::<T, HasSelf<SqlInstance>>(linker, |state| {
                &mut state.capabilities().sql
            })
        },
    }
}

/// Database settings from the environment.
#[derive(Clone)]
pub struct SqlConfig {
    pub url: String,
    pub read_url: Option<String>,
    /// Connections per data set pool.
    pub max_connections: u32,
    /// Derives the passwords of the PostgreSQL data set roles (`DATABASE_ROLE_SECRET`).
    pub role_secret: Vec<u8>,
    /// True when `DATABASE_ROLE_SECRET` was unset and the secret is random for this process.
    pub ephemeral_role_secret: bool,
}

impl std::fmt::Debug for SqlConfig {
    // URLs may carry passwords: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConfig")
            .field("backend", &backend_name(&self.url))
            .field("read_replica", &self.read_url.is_some())
            .field("max_connections", &self.max_connections)
            .field("role_secret", &"<redacted>")
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

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug)]
// One per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite(sqlite::SqliteBackend),
    Postgres(postgres::PgBackend),
}

#[derive(Debug, Clone)]
enum Pools {
    Sqlite(sqlite::SqlitePools),
    Postgres(postgres::PgPools),
}

/// The database behind every data set: the backend, and the pools opened so far.
#[derive(Debug)]
pub struct SqlService {
    backend: Backend,
    max_connections: u32,
    /// Pools by data set and statement timeout (a connection setting on both backends).
    pools: tokio::sync::Mutex<HashMap<(String, u128), Pools>>,
    /// Data sets whose namespace exists (provisioned by this process).
    provisioned: tokio::sync::Mutex<std::collections::HashSet<String>>,
    /// Where pools report their connections and waits (`None`: nowhere).
    stats: Option<pool::PoolStatsFamilies>,
}

impl SqlService {
    /// Connects the backend. On PostgreSQL this reaches the administrative connection and
    /// closes the database to `PUBLIC`; a database that cannot be reached at start-up stops
    /// the host with that reason. Once running, an outage answers 503 and the pools
    /// reconnect by themselves.
    pub async fn connect(
        config: &SqlConfig,
        stats: Option<pool::PoolStatsFamilies>,
    ) -> anyhow::Result<Self> {
        let backend =
            if config.url.starts_with("postgres://") || config.url.starts_with("postgresql://") {
                Backend::Postgres(
                    postgres::PgBackend::connect(
                        &config.url,
                        config.read_url.as_deref(),
                        &config.role_secret,
                    )
                    .await?,
                )
            } else if config.url.starts_with("sqlite:") {
                anyhow::ensure!(
                    config.read_url.is_none(),
                    "DATABASE_READ_URL is for PostgreSQL read replicas"
                );
                Backend::Sqlite(sqlite::SqliteBackend::new(&config.url)?)
            } else {
                anyhow::bail!("DATABASE_URL must start with sqlite: or postgres://");
            };
        Ok(Self {
            backend,
            max_connections: config.max_connections,
            pools: tokio::sync::Mutex::default(),
            provisioned: tokio::sync::Mutex::default(),
            stats,
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The directory name of this backend's migrations in a plugin (`migrations/<dialect>`).
    pub fn dialect(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Makes `data_set` ready for a plugin version: its namespace exists, `migrations`
    /// are applied, and its pools are open. Runs off the request path (at start-up and
    /// when a version is prepared); an error refuses the version.
    pub fn prepare<'a>(
        &'a self,
        data_set: &'a str,
        plugin: &'a str,
        migrations: &'a [Migration],
        statement_timeout: Duration,
    ) -> BoxFuture<'a, anyhow::Result<Arc<DataSet>>> {
        Box::pin(async move {
            {
                let mut provisioned = self.provisioned.lock().await;
                if !provisioned.contains(data_set) {
                    if let Backend::Postgres(pg) = &self.backend {
                        pg.provision(data_set)
                            .await
                            .with_context(|| format!("creating data set `{data_set}`"))?;
                    }
                    provisioned.insert(data_set.to_owned());
                }
            }
            let applied = match &self.backend {
                Backend::Sqlite(sqlite) => sqlite.migrate(data_set, plugin, migrations).await,
                Backend::Postgres(pg) => pg.migrate(data_set, plugin, migrations).await,
            }
            .with_context(|| format!("migrating data set `{data_set}`"))?;
            if !applied.is_empty() {
                tracing::info!(data_set, plugin, versions = ?applied, "migrations applied");
            }
            let pools = self.pools(data_set, statement_timeout).await?;
            Ok(Arc::new(DataSet {
                name: data_set.to_owned(),
                pools,
            }))
        })
    }

    async fn pools(&self, data_set: &str, statement_timeout: Duration) -> anyhow::Result<Pools> {
        // The statement timeout is a connection setting on both backends.
        let key = (data_set.to_owned(), statement_timeout.as_millis());
        let mut open = self.pools.lock().await;
        if let Some(pools) = open.get(&key) {
            return Ok(pools.clone());
        }
        let pools = match &self.backend {
            Backend::Sqlite(sqlite) => Pools::Sqlite(
                sqlite
                    .open(
                        data_set,
                        statement_timeout,
                        self.max_connections,
                        self.stats.as_ref(),
                    )
                    .await?,
            ),
            Backend::Postgres(pg) => Pools::Postgres(pg.open(
                data_set,
                statement_timeout,
                self.max_connections,
                self.stats.as_ref(),
            )),
        };
        open.insert(key, pools.clone());
        Ok(pools)
    }

    /// A handle on `data_set` for the host's own use (the admin check and the first
    /// superuser read the accounts data set), if some plugin prepared it.
    pub async fn existing(&self, data_set: &str) -> Option<Arc<DataSet>> {
        let open = self.pools.lock().await;
        open.iter()
            .find(|((name, _), _)| name == data_set)
            .map(|((name, _), pools)| {
                Arc::new(DataSet {
                    name: name.clone(),
                    pools: pools.clone(),
                })
            })
    }

    /// Checks that every open pool answers (replicas included); with none open yet, that
    /// the database does.
    pub fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let open: Vec<(String, Pools)> = self
                .pools
                .lock()
                .await
                .iter()
                .map(|((name, _), pools)| (name.clone(), pools.clone()))
                .collect();
            if open.is_empty()
                && let Backend::Postgres(pg) = &self.backend
            {
                return pg.ping_admin().await.map_err(|e| describe(&e));
            }
            for (name, pools) in open {
                let failed = |what: &str, e: sqlx::Error| {
                    format!("{what} of data set `{name}`: {}", describe(&e))
                };
                match pools {
                    Pools::Sqlite(p) => {
                        answers(&p.serving).await.map_err(|e| {
                            format!("database of data set `{name}`: {}", sqlite::describe(&e))
                        })?;
                    }
                    Pools::Postgres(p) => {
                        answers(&p.primary)
                            .await
                            .map_err(|e| failed("primary", e))?;
                        answers(&p.read)
                            .await
                            .map_err(|e| failed("read replica", e))?;
                    }
                }
            }
            Ok(())
        })
    }
}

/// Whether a pool hands out a connection that answers a ping.
async fn answers<C: pool::Pooled>(pool: &pool::Pool<C>) -> Result<(), C::Error> {
    let mut conn = pool.acquire().await?;
    let pinged = conn.ping().await;
    conn.settle(pinged)
}

/// One data set as a plugin version uses it: its pools, whose connections cancel a
/// statement at the plugin's time limit.
#[derive(Debug)]
pub struct DataSet {
    name: String,
    pools: Pools,
}

impl DataSet {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> BackendKind {
        match self.pools {
            Pools::Sqlite(_) => BackendKind::Sqlite,
            Pools::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Runs a statement that returns rows; `read_only` ones go to the read replica.
    pub fn query<'a>(
        &'a self,
        statement: &'a str,
        params: Vec<Value>,
        read_only: bool,
    ) -> BoxFuture<'a, Result<Rows, Error>> {
        Box::pin(async move {
            guard::check_serving(statement).map_err(|r| Error::Invalid(r.to_string()))?;
            match &self.pools {
                Pools::Sqlite(pools) => {
                    let mut conn = pools
                        .serving
                        .acquire()
                        .await
                        .map_err(sqlite::into_wit_error)?;
                    let rows = conn.query(statement, &params);
                    conn.settle(rows).map_err(sqlite::into_wit_error)
                }
                Pools::Postgres(pools) => {
                    let pool = if read_only {
                        &pools.read
                    } else {
                        &pools.primary
                    };
                    let mut conn = pool.acquire().await.map_err(into_wit_error)?;
                    let rows = bind_all_pg(sqlx::query(statement), params)
                        .fetch_all(&mut *conn)
                        .await;
                    let rows = conn.settle(rows).map_err(into_wit_error)?;
                    Ok(collect_rows(&rows, pg_value))
                }
            }
        })
    }

    /// Runs a statement without rows; returns the number of rows affected.
    pub fn execute<'a>(
        &'a self,
        statement: &'a str,
        params: Vec<Value>,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            guard::check_serving(statement).map_err(|r| Error::Invalid(r.to_string()))?;
            match &self.pools {
                Pools::Sqlite(pools) => {
                    let mut conn = pools
                        .serving
                        .acquire()
                        .await
                        .map_err(sqlite::into_wit_error)?;
                    let done = conn.execute(statement, &params);
                    conn.settle(done).map_err(sqlite::into_wit_error)
                }
                Pools::Postgres(pools) => {
                    let mut conn = pools.primary.acquire().await.map_err(into_wit_error)?;
                    let done = bind_all_pg(sqlx::query(statement), params)
                        .execute(&mut *conn)
                        .await;
                    conn.settle(done)
                        .map(|r| r.rows_affected())
                        .map_err(into_wit_error)
                }
            }
        })
    }

    /// Starts a transaction on a connection of its own, held until commit or rollback.
    pub fn begin(&self) -> BoxFuture<'_, Result<Transaction, Error>> {
        Box::pin(async move {
            let connection = match &self.pools {
                Pools::Sqlite(pools) => {
                    let mut conn = pools
                        .transactions
                        .acquire()
                        .await
                        .map_err(sqlite::into_wit_error)?;
                    // IMMEDIATE takes the write lock now: a later write cannot fail to upgrade.
                    conn.control("BEGIN IMMEDIATE")
                        .map_err(sqlite::into_wit_error)?;
                    TransactionConnection::Sqlite(conn)
                }
                Pools::Postgres(pools) => {
                    let mut conn = pools.primary.acquire().await.map_err(into_wit_error)?;
                    (&mut *conn)
                        .execute(sqlx::raw_sql("BEGIN"))
                        .await
                        .map_err(into_wit_error)?;
                    TransactionConnection::Postgres(conn)
                }
            };
            Ok(Transaction {
                connection: Some(connection),
            })
        })
    }
}

/// A connection inside a transaction is never settled: should its holder vanish before
/// `COMMIT` or `ROLLBACK` completes, it is closed, never pooled again.
enum TransactionConnection {
    Sqlite(pool::PooledConnection<sqlite::SqliteConn>),
    Postgres(pool::PooledConnection<PgConnection>),
}

/// An open transaction (the WIT `transaction` resource). Ending it any way other than
/// `commit` rolls it back: `rollback`, the guest dropping the handle, the instance ending
/// or trapping. A connection whose rollback fails is closed, never pooled again, so no
/// transaction survives its holder.
pub struct Transaction {
    connection: Option<TransactionConnection>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("open", &self.connection.is_some())
            .finish()
    }
}

impl Transaction {
    fn connection(&mut self) -> Result<&mut TransactionConnection, Error> {
        self.connection
            .as_mut()
            .ok_or_else(|| Error::Invalid("the transaction has ended".into()))
    }

    pub fn query<'a>(
        &'a mut self,
        statement: &'a str,
        params: Vec<Value>,
    ) -> BoxFuture<'a, Result<Rows, Error>> {
        Box::pin(async move {
            guard::check_serving(statement).map_err(|r| Error::Invalid(r.to_string()))?;
            match self.connection()? {
                TransactionConnection::Sqlite(conn) => conn
                    .query(statement, &params)
                    .map_err(sqlite::into_wit_error),
                TransactionConnection::Postgres(conn) => {
                    let rows = bind_all_pg(sqlx::query(statement), params)
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(into_wit_error)?;
                    Ok(collect_rows(&rows, pg_value))
                }
            }
        })
    }

    pub fn execute<'a>(
        &'a mut self,
        statement: &'a str,
        params: Vec<Value>,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            guard::check_serving(statement).map_err(|r| Error::Invalid(r.to_string()))?;
            match self.connection()? {
                TransactionConnection::Sqlite(conn) => conn
                    .execute(statement, &params)
                    .map_err(sqlite::into_wit_error),
                TransactionConnection::Postgres(conn) => {
                    bind_all_pg(sqlx::query(statement), params)
                        .execute(&mut **conn)
                        .await
                        .map(|r| r.rows_affected())
                        .map_err(into_wit_error)
                }
            }
        })
    }

    /// Commits; if that fails the transaction is rolled back and the error returned.
    pub async fn commit(mut self) -> Result<(), Error> {
        let Some(connection) = self.connection.take() else {
            return Err(Error::Invalid("the transaction has ended".into()));
        };
        finish(connection, "COMMIT").await
    }

    pub async fn rollback(mut self) -> Result<(), Error> {
        match self.connection.take() {
            Some(connection) => finish(connection, "ROLLBACK").await,
            None => Ok(()),
        }
    }
}

/// Ends the transaction with `COMMIT` or `ROLLBACK`. Whatever happens, the connection goes
/// back to its pool outside any transaction, or is closed.
fn finish(
    connection: TransactionConnection,
    statement: &'static str,
) -> BoxFuture<'static, Result<(), Error>> {
    // Back to the pool only once outside any transaction; if even `ROLLBACK` fails, its
    // state is unknown and it is closed (never settled).
    Box::pin(async move {
        match connection {
            TransactionConnection::Sqlite(mut conn) => {
                let ended = conn.control(statement);
                let outside = match &ended {
                    Ok(()) => Ok(()),
                    Err(_) => conn.control("ROLLBACK"),
                };
                if outside.is_ok() {
                    let _ = conn.settle(outside);
                }
                ended.map_err(sqlite::into_wit_error)
            }
            TransactionConnection::Postgres(mut conn) => {
                let ended = (&mut *conn)
                    .execute(sqlx::raw_sql(statement))
                    .await
                    .map(drop);
                let outside = match &ended {
                    Ok(()) => Ok(()),
                    Err(_) => (&mut *conn)
                        .execute(sqlx::raw_sql("ROLLBACK"))
                        .await
                        .map(drop),
                };
                if outside.is_ok() {
                    let _ = conn.settle(outside);
                }
                ended.map_err(into_wit_error)
            }
        }
    })
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Err(err) = finish(connection, "ROLLBACK").await {
                            tracing::warn!(error = ?err, "rolling back an abandoned transaction");
                        }
                    });
                }
                // No runtime to roll back on: the connection, never settled, is closed,
                // which ends the transaction.
                Err(_) => drop(connection),
            }
        }
    }
}

/// A request's view of `sql`: the plugin's data set and the transactions it opened.
#[derive(Debug, Default)]
pub struct SqlInstance {
    data_set: Option<Arc<DataSet>>,
    transactions: ResourceTable,
    open_transactions: usize,
    calls: HostCalls,
}

impl SqlInstance {
    pub fn new(data_set: Option<Arc<DataSet>>, calls: HostCalls) -> Self {
        Self {
            data_set,
            transactions: ResourceTable::new(),
            open_transactions: 0,
            calls,
        }
    }

    fn data_set(&self) -> wasmtime::Result<&Arc<DataSet>> {
        // Unreachable for a plugin: `sql` is linked only when a data set is granted.
        self.data_set
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("sql called without a granted data set"))
    }

    /// Starts measuring a call that runs `statement` (its span names the operation and
    /// table, never values).
    fn time_statement(&self, function: &str, statement: &str) -> HostCall {
        let call = self.calls.time("sql", function);
        if let Some(data_set) = &self.data_set {
            // OpenTelemetry's `db.system.name` values.
            let system = match data_set.kind() {
                BackendKind::Sqlite => "sqlite",
                BackendKind::Postgres => "postgresql",
            };
            call.statement(system, statement);
        }
        call
    }
}

impl wit::Host for SqlInstance {
    async fn backend(&mut self) -> wasmtime::Result<BackendKind> {
        Ok(self.data_set()?.kind())
    }

    async fn query(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let _timed = self.time_statement("query", &statement);
        Ok(self.data_set()?.query(&statement, params, false).await)
    }

    async fn query_read(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let _timed = self.time_statement("query-read", &statement);
        Ok(self.data_set()?.query(&statement, params, true).await)
    }

    async fn execute(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let _timed = self.time_statement("execute", &statement);
        Ok(self.data_set()?.execute(&statement, params).await)
    }

    async fn begin(&mut self) -> wasmtime::Result<Result<Resource<Transaction>, Error>> {
        let _timed = self.calls.time("sql", "begin");
        if self.open_transactions >= MAX_OPEN_TRANSACTIONS {
            return Ok(Err(Error::Invalid(
                "a transaction is already open: commit or roll it back first".into(),
            )));
        }
        let transaction = match self.data_set()?.begin().await {
            Ok(transaction) => transaction,
            Err(err) => return Ok(Err(err)),
        };
        let handle = self.transactions.push(transaction)?;
        self.open_transactions += 1;
        Ok(Ok(handle))
    }
}

impl wit::HostTransaction for SqlInstance {
    async fn query(
        &mut self,
        this: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let _timed = self.time_statement("transaction.query", &statement);
        let transaction = self.transactions.get_mut(&this)?;
        Ok(transaction.query(&statement, params).await)
    }

    async fn execute(
        &mut self,
        this: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let _timed = self.time_statement("transaction.execute", &statement);
        let transaction = self.transactions.get_mut(&this)?;
        Ok(transaction.execute(&statement, params).await)
    }

    async fn commit(&mut self, this: Resource<Transaction>) -> wasmtime::Result<Result<(), Error>> {
        let _timed = self.calls.time("sql", "transaction.commit");
        let transaction = self.transactions.delete(this)?;
        self.open_transactions -= 1;
        Ok(transaction.commit().await)
    }

    async fn rollback(
        &mut self,
        this: Resource<Transaction>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let _timed = self.calls.time("sql", "transaction.rollback");
        let transaction = self.transactions.delete(this)?;
        self.open_transactions -= 1;
        Ok(transaction.rollback().await)
    }

    async fn drop(&mut self, this: Resource<Transaction>) -> wasmtime::Result<()> {
        let transaction = self.transactions.delete(this)?;
        self.open_transactions -= 1;
        // Not committed: its drop rolls it back off the guest's path.
        drop(transaction);
        Ok(())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

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

/// What a plugin author needs to fix a statement, without the database's own message
/// where it could carry data (PostgreSQL quotes input values; SQLite does not).
fn describe_for_plugin(err: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = err else {
        return describe(err);
    };
    let code = db.code().unwrap_or_default();
    match code.as_ref() {
        // insufficient_privilege
        "42501" => PERMISSION_DENIED.into(),
        // undefined_table
        "42P01" => "no such table in the plugin's data set".into(),
        _ => format!("database error {code}"),
    }
}

/// The database's message for a failed migration: shown to operators (log, admin API),
/// and about the plugin's own SQL.
fn describe_for_author(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => describe(other),
    }
}

fn is_timeout(db: &dyn sqlx::error::DatabaseError) -> bool {
    // query_canceled: the connection's statement_timeout.
    db.code().as_deref() == Some("57014")
}

fn into_wit_error(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(db) if is_timeout(db.as_ref()) => {
            tracing::warn!("statement cancelled at its deadline");
            Error::TimedOut
        }
        sqlx::Error::Database(db) => match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                // The constraint (index) name, e.g. `users_email_unique`: never the values.
                let name = db.constraint().map(str::to_owned).unwrap_or_default();
                Error::UniqueViolation(name)
            }
            sqlx::error::ErrorKind::ForeignKeyViolation
            | sqlx::error::ErrorKind::NotNullViolation
            | sqlx::error::ErrorKind::CheckViolation => {
                Error::ConstraintViolation(db.constraint().unwrap_or_default().to_owned())
            }
            _ => {
                tracing::warn!(error = %describe(&err), "statement failed");
                Error::Invalid(describe_for_plugin(&err))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_z() {
        assert_eq!(
            normalise_timestamp("2026-11-29T11:00:00+01:00").as_deref(),
            Some("2026-11-29T10:00:00Z")
        );
    }

    fn migration(version: i64, sql: &str) -> Migration {
        Migration {
            version,
            name: "m".into(),
            file: format!("migrations/sqlite/{version:04}_m.sql"),
            sql: sql.into(),
            checksum: hex(sql.as_bytes()),
        }
    }

    async fn sqlite_service(dir: &std::path::Path) -> anyhow::Result<SqlService> {
        SqlService::connect(
            &SqlConfig {
                url: format!("sqlite://{}/t.db", dir.display()),
                read_url: None,
                max_connections: 2,
                role_secret: b"test-secret".to_vec(),
                ephemeral_role_secret: false,
            },
            None,
        )
        .await
    }

    #[tokio::test]
    async fn sqlite_data_sets_round_trip_values_and_stay_apart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sql = sqlite_service(dir.path()).await?;
        let notes = [migration(
            1,
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, done BOOLEAN NOT \
             NULL, at DATETIME); CREATE UNIQUE INDEX notes_body_unique ON notes (lower(body));",
        )];
        let timeout = Duration::from_secs(2);
        let mine = sql.prepare("mine", "p", &notes, timeout).await?;
        let theirs = sql.prepare("theirs", "q", &[], timeout).await?;
        assert!(dir.path().join("t.mine.db").is_file());

        let insert =
            "INSERT INTO notes (body, done, at) VALUES ($1, $2, $3) RETURNING id, done, at";
        let at = "2026-11-29T10:00:00Z".to_owned();
        let params = |body: &str| {
            vec![
                Value::Text(body.into()),
                Value::Boolean(true),
                Value::Timestamp(at.clone()),
            ]
        };
        let rows = mine
            .query(insert, params("a"), false)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(rows.columns, ["id", "done", "at"]);
        assert!(matches!(rows.rows[0][0], Value::Integer(1)));
        assert!(matches!(rows.rows[0][1], Value::Boolean(true)));
        assert!(matches!(&rows.rows[0][2], Value::Timestamp(t) if *t == at));
        match mine.query(insert, params("A"), false).await {
            Err(Error::UniqueViolation(name)) => assert!(name.contains("notes_body"), "{name}"),
            other => panic!("expected a unique violation, got {other:?}"),
        }
        // Another data set is another file: its plugin cannot see `notes`.
        match theirs.query("SELECT * FROM notes", vec![], true).await {
            Err(Error::Invalid(msg)) => assert!(msg.contains("no such table"), "{msg}"),
            other => panic!("expected no such table, got {other:?}"),
        }
        // Applying the same migrations again is a no-op.
        sql.prepare("mine", "p2", &notes, timeout).await?;
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_refuses_what_a_plugin_must_not_do() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sql = sqlite_service(dir.path()).await?;
        let ds = sql
            .prepare(
                "ds",
                "p",
                &[migration(1, "CREATE TABLE t (x INTEGER);")],
                Duration::from_millis(300),
            )
            .await?;
        for statement in [
            "ATTACH DATABASE 'other.db' AS o",
            "CREATE TEMP TABLE t (x INTEGER)",
            "BEGIN IMMEDIATE",
            "PRAGMA writable_schema = 1",
            "VACUUM INTO 'copy.db'",
            "DROP TABLE t",
            "SELECT load_extension('x')",
            "INSERT INTO _plinth_migrations VALUES (9, 'x', 'x', 'x', 'x')",
            "SELECT * FROM _plinth_migrations",
            "SELECT 1; DELETE FROM t",
        ] {
            let refused = ds.execute(statement, vec![]).await;
            assert!(
                matches!(refused, Err(Error::Invalid(_))),
                "{statement}: {refused:?}"
            );
        }
        // A statement that would run forever is interrupted at the deadline.
        let started = std::time::Instant::now();
        let endless = ds
            .query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                 SELECT count(*) FROM c",
                vec![],
                true,
            )
            .await;
        assert!(matches!(endless, Err(Error::TimedOut)), "{endless:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        Ok(())
    }

    // The host's runtime: an abandoned transaction is rolled back by a task of its own,
    // which another worker runs while the next writer waits for the lock (on a single
    // thread, that wait would hold the only thread the rollback could run on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_transactions_commit_roll_back_and_never_outlive_their_holder()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sql = sqlite_service(dir.path()).await?;
        let ds = sql
            .prepare(
                "ds",
                "p",
                &[migration(1, "CREATE TABLE t (x INTEGER);")],
                Duration::from_secs(2),
            )
            .await?;
        let count = || async {
            let rows = ds.query("SELECT count(*) AS n FROM t", vec![], true).await;
            match rows.map(|r| r.rows[0][0].clone()) {
                Ok(Value::Integer(n)) => n,
                other => panic!("{other:?}"),
            }
        };
        let mut tx = ds.begin().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        tx.execute("INSERT INTO t VALUES (1)", vec![])
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        tx.commit().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(count().await, 1);

        let mut tx = ds.begin().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        tx.execute("INSERT INTO t VALUES (2)", vec![])
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        drop(tx); // abandoned: rolled back, and the write lock released
        let mut next = ds.begin().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        next.execute("INSERT INTO t VALUES (3)", vec![])
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        next.rollback()
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(count().await, 1);
        Ok(())
    }

    /// A data set with one table `t (x INTEGER)`, statements limited to 10 s.
    async fn table_t(dir: &std::path::Path) -> anyhow::Result<Arc<DataSet>> {
        let sql = sqlite_service(dir).await?;
        let timeout = Duration::from_secs(10);
        sql.prepare(
            "ds",
            "p",
            &[migration(1, "CREATE TABLE t (x INTEGER);")],
            timeout,
        )
        .await
    }

    /// With a single serving worker, another task keeps running while a long read (past
    /// its inline budget) or a long write runs: both left the worker's queue to another
    /// thread. The read, interrupted and run again, still answers every row once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn long_statements_leave_the_serving_worker() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ds = table_t(dir.path()).await?;
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        const COUNT: i64 = 100_000;
        let numbers = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT $1)";
        let read = format!("{numbers} SELECT x FROM c");
        let write = format!("INSERT INTO t (x) {numbers} SELECT x FROM c");
        let (rows, ticked_reading, wrote, ticked_writing) = tokio::spawn({
            let ds = ds.clone();
            let ticks = ticks.clone();
            async move {
                let before = ticks.load(Ordering::Relaxed);
                let rows = ds.query(&read, vec![Value::Integer(COUNT)], true).await;
                let between = ticks.load(Ordering::Relaxed);
                let wrote = ds.execute(&write, vec![Value::Integer(COUNT)]).await;
                let after = ticks.load(Ordering::Relaxed);
                (rows, between - before, wrote, after - between)
            }
        })
        .await?;
        ticker.abort();
        let rows = rows.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(rows.rows.len(), usize::try_from(COUNT)?);
        assert!(matches!(rows.rows[0][0], Value::Integer(1)));
        assert!(matches!(
            rows.rows.last().map(|r| &r[0]),
            Some(Value::Integer(COUNT))
        ));
        assert!(ticked_reading > 0, "the worker was held during the read");
        assert_eq!(
            wrote.map_err(|e| anyhow::anyhow!("{e:?}"))?,
            u64::try_from(COUNT)?
        );
        assert!(ticked_writing > 0, "the worker was held during the write");
        Ok(())
    }

    /// A write waiting for another connection's write lock waits off the worker: the
    /// holder, on the same single worker, commits meanwhile and the write then succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_waits_for_the_lock_without_holding_the_worker() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ds = table_t(dir.path()).await?;
        let mut tx = ds.begin().await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        tx.execute("INSERT INTO t VALUES (1)", vec![])
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let started = std::time::Instant::now();
        let waiting = tokio::spawn({
            let ds = ds.clone();
            async move { ds.execute("INSERT INTO t VALUES (2)", vec![]).await }
        });
        let holder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.commit().await
        });
        holder.await?.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert_eq!(waiting.await?.map_err(|e| anyhow::anyhow!("{e:?}"))?, 1);
        assert!(started.elapsed() < Duration::from_secs(4));
        let rows = ds
            .query("SELECT count(*) FROM t", vec![], true)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(matches!(rows.rows[0][0], Value::Integer(2)));
        Ok(())
    }

    #[tokio::test]
    async fn edited_or_failing_migrations_refuse_and_change_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sql = sqlite_service(dir.path()).await?;
        let timeout = Duration::from_secs(2);
        sql.prepare(
            "ds",
            "p",
            &[migration(1, "CREATE TABLE t (x INTEGER);")],
            timeout,
        )
        .await?;
        let edited = [migration(1, "CREATE TABLE t (x INTEGER, y TEXT);")];
        let err = sql
            .prepare("ds", "p", &edited, timeout)
            .await
            .expect_err("edited");
        assert!(
            format!("{err:#}").contains("was changed after it was applied"),
            "{err:#}"
        );
        let failing = [
            migration(1, "CREATE TABLE t (x INTEGER);"),
            migration(2, "CREATE TABLE u (x INTEGER);"),
            migration(3, "CREATE TABLE oops (;"),
        ];
        let err = sql
            .prepare("ds", "p", &failing, timeout)
            .await
            .expect_err("failing");
        assert!(format!("{err:#}").contains("0003_m.sql failed"), "{err:#}");
        // All or nothing: 0002 was not kept either.
        let ds = sql.prepare("ds", "p", &failing[..1], timeout).await?;
        let u = ds.query("SELECT * FROM u", vec![], true).await;
        assert!(matches!(u, Err(Error::Invalid(_))), "{u:?}");
        Ok(())
    }
}
