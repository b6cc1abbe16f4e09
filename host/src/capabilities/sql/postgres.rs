//! PostgreSQL data sets: a schema and two roles per data set, created by the host.
//!
//! For data set `d` the host, connected with `DATABASE_URL` (the administrative
//! connection, used only at start-up and when a plugin version is prepared), creates:
//! - schema `d`, owned by role `<prefix>_d_owner` (LOGIN, used only by the host to apply
//!   the plugins' migrations: tables belong to it);
//! - role `<prefix>_d` (LOGIN), which the serving pools connect as: `USAGE` on schema `d`
//!   and data rights on its tables and sequences (by default privileges), nothing else —
//!   no rights on other schemas, no DDL, no superuser, `CREATEROLE` or `CREATEDB`.
//!
//! Serving connections pin `search_path` to the schema and carry `statement_timeout`
//! (and `idle_in_transaction_session_timeout`) from the plugin's limits in their start-up
//! packet, so nothing is sent per request. The database itself is closed to `PUBLIC`
//! (no `CREATE`, no `TEMPORARY`, nothing in schema `public`), so a data set role can make
//! no temporary object or reach the `public` schema.
//!
//! Roles are cluster-wide, so their names carry a prefix derived from the database name:
//! the database name itself when short, else a hash of it. Their passwords are derived
//! from `DATABASE_ROLE_SECRET` (HMAC-SHA256), so every host sharing the database computes
//! the same ones.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::Executor as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::migrations::{AppliedMigration, MIGRATIONS_TABLE, Migration};
use super::pool::{Pool, PoolStatsFamilies, Recycle};

/// Role name prefixes longer than this are replaced by a hash of the database name.
const MAX_PREFIX_LEN: usize = 20;

#[derive(Clone)]
pub struct PgBackend {
    admin: PgPool,
    admin_options: PgConnectOptions,
    read_options: Option<PgConnectOptions>,
    prefix: String,
    role_secret: Vec<u8>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("role_prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The roles and schema of one data set.
#[derive(Debug, Clone)]
struct Names {
    schema: String,
    owner: String,
    serving: String,
}

/// The pools of one PostgreSQL data set (the read pool is the primary without a replica).
#[derive(Debug, Clone)]
pub struct PgPools {
    pub primary: Pool<PgConnection>,
    pub read: Pool<PgConnection>,
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A stable advisory-lock key for `what`.
fn lock_key(what: &str) -> i64 {
    let digest = Sha256::digest(what.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

impl PgBackend {
    /// Connects the administrative pool and closes the database to `PUBLIC`.
    pub async fn connect(
        url: &str,
        read_url: Option<&str>,
        role_secret: &[u8],
    ) -> anyhow::Result<Self> {
        let admin_options = url
            .parse::<PgConnectOptions>()
            .context("DATABASE_URL is not a valid PostgreSQL URL")?
            // Provisioning statements carry role passwords: never log their text.
            .log_statements(log::LevelFilter::Off);
        let read_options = read_url
            .map(|url| url.parse::<PgConnectOptions>())
            .transpose()
            .context("DATABASE_READ_URL is not a valid PostgreSQL URL")?;
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(super::pool::ACQUIRE_TIMEOUT)
            .connect_lazy_with(admin_options.clone());
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&admin)
            .await
            .context("cannot reach PostgreSQL at DATABASE_URL")?;
        let plain = database
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let prefix = if plain && database.len() <= MAX_PREFIX_LEN {
            database.clone()
        } else {
            format!(
                "p{}",
                &super::hex(&Sha256::digest(database.as_bytes()))[..12]
            )
        };
        let backend = Self {
            admin,
            admin_options,
            read_options,
            prefix,
            role_secret: role_secret.to_vec(),
        };
        // Hosts starting together would otherwise collide on the catalog ("tuple
        // concurrently updated"): the same lock as provisioning.
        let close = format!(
            "REVOKE CREATE, TEMPORARY ON DATABASE {} FROM PUBLIC; \
             REVOKE ALL ON SCHEMA public FROM PUBLIC;",
            quote(&database)
        );
        let closed = async {
            let mut tx = backend.admin.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key("plinth:provision"))
                .execute(&mut *tx)
                .await?;
            (&mut *tx).execute(sqlx::raw_sql(&close)).await?;
            tx.commit().await
        };
        closed.await.context(
            "closing the database to PUBLIC (DATABASE_URL must be the database's owner or a \
             superuser)",
        )?;
        Ok(backend)
    }

    fn names(&self, data_set: &str) -> Names {
        Names {
            schema: data_set.to_owned(),
            owner: format!("{}_{data_set}_owner", self.prefix),
            serving: format!("{}_{data_set}", self.prefix),
        }
    }

    fn password(&self, role: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.role_secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"plinth data set role:");
        mac.update(role.as_bytes());
        super::hex(&mac.finalize().into_bytes())
    }

    /// Creates (or brings up to date) the schema and roles of `data_set`. Idempotent;
    /// hosts starting together serialise on an advisory lock.
    pub async fn provision(&self, data_set: &str) -> anyhow::Result<()> {
        let Names {
            schema,
            owner,
            serving,
        } = self.names(data_set);
        let (schema_q, owner_q, serving_q) = (quote(&schema), quote(&owner), quote(&serving));
        // What a CREATEROLE administrator may set; a role it creates is never superuser,
        // replication or BYPASSRLS, and a role found with those is refused below.
        let attributes = "LOGIN NOCREATEDB NOCREATEROLE NOINHERIT";
        let mut tx = self
            .admin
            .begin()
            .await
            .context("provisioning a data set")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key("plinth:provision"))
            .execute(&mut *tx)
            .await?;
        for role in [&owner, &serving] {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                    .bind(role)
                    .fetch_one(&mut *tx)
                    .await?;
            if !exists {
                let create = format!("CREATE ROLE {}", quote(role));
                (&mut *tx).execute(sqlx::raw_sql(&create)).await?;
            }
            // The password is hex: safe to inline (utility statements take no parameters).
            let alter = format!(
                "ALTER ROLE {} WITH {attributes} PASSWORD '{}'",
                quote(role),
                self.password(role)
            );
            (&mut *tx).execute(sqlx::raw_sql(&alter)).await?;
            let privileged: bool = sqlx::query_scalar(
                "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles \
                 WHERE rolname = $1",
            )
            .bind(role)
            .fetch_one(&mut *tx)
            .await?;
            anyhow::ensure!(
                !privileged,
                "role `{role}` is a superuser, a replication role or bypasses row security: \
                 a data set is never served through such a role"
            );
        }
        let grants = format!(
            "GRANT {owner_q} TO CURRENT_USER; \
             CREATE SCHEMA IF NOT EXISTS {schema_q} AUTHORIZATION {owner_q}; \
             REVOKE ALL ON SCHEMA {schema_q} FROM PUBLIC; \
             GRANT USAGE ON SCHEMA {schema_q} TO {serving_q}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner_q} IN SCHEMA {schema_q} \
               GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {serving_q}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner_q} IN SCHEMA {schema_q} \
               GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {serving_q};"
        );
        (&mut *tx).execute(sqlx::raw_sql(&grants)).await?;
        tx.commit().await?;
        Ok(())
    }

    fn role_options(
        &self,
        base: &PgConnectOptions,
        role: &str,
        settings: &[(&str, String)],
    ) -> PgConnectOptions {
        base.clone()
            .username(role)
            .password(&self.password(role))
            .options(settings.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// The serving pools of `data_set`, whose statements are cancelled after
    /// `statement_timeout`.
    pub fn open(
        &self,
        data_set: &str,
        statement_timeout: Duration,
        max_connections: u32,
        stats: Option<&PoolStatsFamilies>,
    ) -> PgPools {
        let Names {
            schema, serving, ..
        } = self.names(data_set);
        let timeout_ms = statement_timeout.as_millis().max(1).to_string();
        let settings = [
            ("search_path", quote(&schema)),
            ("statement_timeout", timeout_ms.clone()),
            ("idle_in_transaction_session_timeout", timeout_ms),
        ];
        let pool = |options: PgConnectOptions, role: &str| {
            Pool::new(
                max_connections,
                Some(Recycle::DEFAULT),
                Arc::new(move || {
                    let options = options.clone();
                    Box::pin(async move { PgConnection::connect_with(&options).await })
                }),
                stats.map(|stats| stats.of(data_set, role)),
            )
        };
        let primary = pool(
            self.role_options(&self.admin_options, &serving, &settings),
            "primary",
        );
        let read = match &self.read_options {
            Some(read) => pool(self.role_options(read, &serving, &settings), "read"),
            None => primary.clone(),
        };
        PgPools { primary, read }
    }

    /// Applies the pending `migrations` as the data set's owner role, in one transaction
    /// under an advisory lock: hosts starting together apply each migration once.
    pub async fn migrate(
        &self,
        data_set: &str,
        plugin: &str,
        migrations: &[Migration],
    ) -> anyhow::Result<Vec<i64>> {
        let Names {
            schema,
            owner,
            serving,
        } = self.names(data_set);
        let options = self.role_options(
            &self.admin_options,
            &owner,
            &[("search_path", quote(&schema))],
        );
        let mut conn = PgConnection::connect_with(&options)
            .await
            .with_context(|| format!("connecting as the owner of data set `{data_set}`"))?;
        let result = apply(&mut conn, &schema, &serving, plugin, migrations).await;
        let _ = conn.close().await;
        result
    }

    /// Checks that the administrative connection answers.
    pub async fn ping_admin(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.admin).await.map(drop)
    }
}

/// The migration transaction: lock, record table, plan, apply, record, commit.
async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    serving: &str,
    plugin: &str,
    migrations: &[Migration],
) -> anyhow::Result<Vec<i64>> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(&format!("plinth:migrate:{schema}")))
        .execute(&mut *tx)
        .await?;
    (&mut *tx)
        .execute(sqlx::raw_sql(&format!(
            "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version BIGINT PRIMARY KEY, \
             name TEXT NOT NULL, checksum TEXT NOT NULL, applied_by TEXT NOT NULL, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             REVOKE ALL ON {MIGRATIONS_TABLE} FROM {};",
            quote(serving)
        )))
        .await?;
    let applied: Vec<AppliedMigration> = sqlx::query_as(&format!(
        "SELECT version, checksum FROM {MIGRATIONS_TABLE} ORDER BY version"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let pending = super::migrations::plan(migrations, &applied)?;
    for migration in &pending {
        (&mut *tx)
            .execute(sqlx::raw_sql(&migration.sql))
            .await
            .map_err(|e| migration.failed(&super::describe_for_author(&e)))?;
        sqlx::query(&format!(
            "INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_by) \
                 VALUES ($1, $2, $3, $4)"
        ))
        .bind(migration.version)
        .bind(&migration.name)
        .bind(&migration.checksum)
        .bind(plugin)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    anyhow::Ok(pending.iter().map(|m| m.version).collect())
}
