//! The two backends every API test runs against: SQLite with the in-process store, and
//! the local PostgreSQL + Redis with a fresh database and key prefix per test.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

/// Where the PostgreSQL tests connect (trust auth on this machine).
fn pg_host() -> String {
    std::env::var("TEST_PG_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}
fn pg_port() -> String {
    std::env::var("TEST_PG_PORT").unwrap_or_else(|_| "5432".into())
}
fn pg_user() -> String {
    std::env::var("TEST_PG_USER").unwrap_or_else(|_| "postgres".into())
}
fn redis_addr() -> String {
    std::env::var("TEST_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

fn require_reachable(what: &str, addr: &str) {
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{what} is not reachable at {addr}: start it (scripts/services.sh does) — these \
         tests do not skip silently"
    );
}

fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

#[derive(Debug)]
pub enum Backend {
    /// The embedded default: SQLite (in the host's data dir) and the in-process store.
    Sqlite,
    /// A private database on the local PostgreSQL (dropped afterwards) and the local Redis
    /// under a private key prefix.
    Postgres {
        database: String,
        key_prefix: String,
    },
}

impl Backend {
    pub fn sqlite() -> Self {
        Self::Sqlite
    }

    pub fn postgres() -> Self {
        require_reachable("PostgreSQL", &format!("{}:{}", pg_host(), pg_port()));
        require_reachable("Redis", &redis_addr());
        let database = unique_name("plinth_test");
        psql(&format!("CREATE DATABASE {database}"));
        Self::Postgres {
            database,
            key_prefix: unique_name("plinth-test"),
        }
    }

    pub fn database_url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres { database, .. } => Some(format!(
                "postgres://{}@{}:{}/{database}",
                pg_user(),
                pg_host(),
                pg_port()
            )),
        }
    }

    pub fn redis_url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres { .. } => Some(format!("redis://{}", redis_addr())),
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Sqlite => Vec::new(),
            Self::Postgres { key_prefix, .. } => vec![
                (
                    "DATABASE_URL".into(),
                    self.database_url().unwrap_or_default(),
                ),
                ("REDIS_URL".into(), self.redis_url().unwrap_or_default()),
                ("REDIS_KEY_PREFIX".into(), key_prefix.clone()),
            ],
        }
    }
}

impl Backend {
    /// Runs `sql` in this backend's PostgreSQL database as the test superuser and returns
    /// its unaligned output (`None` on SQLite).
    pub fn psql_query(&self, sql: &str) -> Option<String> {
        let Self::Postgres { database, .. } = self else {
            return None;
        };
        let output = Command::new("psql")
            .args([
                "-h",
                &pg_host(),
                "-p",
                &pg_port(),
                "-U",
                &pg_user(),
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-t", "-A", "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// `psql` against the maintenance database of the test server.
fn psql_command(sql: &str) -> Command {
    let mut command = Command::new("psql");
    command
        .args([
            "-h",
            &pg_host(),
            "-p",
            &pg_port(),
            "-U",
            &pg_user(),
            "-d",
            "postgres",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql]);
    command
}

fn psql(sql: &str) {
    let output = psql_command(sql)
        .output()
        .expect("running psql (PostgreSQL client) for the test database");
    assert!(
        output.status.success(),
        "psql `{sql}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Self::Postgres { database, .. } = self {
            // Hosts are killed before the backend is dropped; force out stragglers.
            let _ =
                psql_command(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).output();
        }
    }
}
