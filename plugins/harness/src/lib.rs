//! # plinth-harness: test a plugin from its own `cargo test`
//!
//! A plugin is a WebAssembly component; its behaviour is what the host makes of it: the
//! routes of its manifest, its grants, its data set and migrations, its limits. This crate
//! runs that for real, in the test's process:
//!
//! 1. [`TestHost::start`] builds the plugin as `plinth build` does (Rust: `cargo build
//!    --release --target wasm32-wasip2`; Python: componentize-py), lays out its plugin
//!    directory (manifest, component, schemas, migrations) in a temporary `PLUGINS_DIR`,
//!    and starts a Plinth host on `127.0.0.1:0` with the embedded defaults: SQLite in a
//!    temporary directory and the in-process key-value store. Everything a host does at
//!    start-up happens (the policy check of its grants, the import check, migrations).
//! 2. [`TestHost::get`], [`TestHost::request`], … send HTTP requests to it; a
//!    [`TestResponse`] holds the status, headers, body, and the [`LogLine`]s the plugin
//!    logged while serving that request.
//! 3. [`TestHost::sql`] reads (or seeds) the plugin's data set as the host sees it;
//!    [`TestHost::access_token`] mints the access token a signed-in user would send.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let host = plinth_harness::TestHost::start(env!("CARGO_MANIFEST_DIR")).await?;
//! let response = host.get("/hello/ada").await?;
//! assert_eq!(response.status, 200);
//! assert_eq!(response.json()?["message"], "Hello, ada!");
//! assert!(response.logs.iter().any(|line| line.message == "greeting ada"));
//! # Ok(()) }
//! ```
//!
//! [`TestHost::builder`] loads several plugins together (e.g. `auth` with `users`), takes
//! an already built plugin directory (any language), or sets host variables
//! (`FIRST_SUPERUSER_*`, …; see the host's README "Configuration"), and
//! [`Builder::postgres_and_redis`] runs it on PostgreSQL (a fresh database) and Redis (a
//! fresh key prefix) instead. Rate limits are off unless a variable sets them.

mod logs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::HeaderMap;
use plinth_host::bindings::plinth::plugin::tokens::TokenKind;
use plinth_host::capabilities::Capabilities;
use plinth_host::{Application, Config};

pub use http::{Method, StatusCode};
pub use logs::LogLine;
/// A statement parameter of [`TestHost::sql`].
pub use plinth_host::bindings::plinth::plugin::sql::Value;
pub use tracing::Level;

/// What to start: plugins and host variables.
#[derive(Debug, Default)]
pub struct Builder {
    sources: Vec<PathBuf>,
    built: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// `postgres_and_redis`: the server to make a fresh database on, and Redis.
    postgres_and_redis: Option<(String, String)>,
}

impl Builder {
    /// A plugin's sources (its `plugin.toml` with `Cargo.toml` or `app.py`), built when
    /// the host starts.
    pub fn plugin(mut self, source: impl AsRef<Path>) -> Self {
        self.sources.push(source.as_ref().to_path_buf());
        self
    }

    /// An already built plugin directory (`plugin.toml` and the files it names).
    pub fn built_plugin(mut self, dir: impl AsRef<Path>) -> Self {
        self.built.push(dir.as_ref().to_path_buf());
        self
    }

    /// PostgreSQL and Redis instead of the embedded defaults: a fresh database on the server
    /// `postgres_url` names (created with `psql`, which must be installed; dropped when the
    /// host is), and Redis at `redis_url` under a fresh key prefix.
    pub fn postgres_and_redis(mut self, postgres_url: &str, redis_url: &str) -> Self {
        self.postgres_and_redis = Some((postgres_url.to_owned(), redis_url.to_owned()));
        self
    }

    /// A host variable, as the environment would set it (README "Configuration").
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub async fn start(self) -> anyhow::Result<TestHost> {
        let capturing = logs::install();
        let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
        let plugins_dir = scratch.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir)?;
        for source in &self.sources {
            let source = source.clone();
            let into = plugins_dir.clone();
            // Runs cargo (or componentize-py): off the async workers.
            tokio::task::spawn_blocking(move || {
                plinth_host::plugins::build::build(&source, Some(&into))
            })
            .await??;
        }
        for dir in &self.built {
            plinth_host::plugins::check::deploy(dir, &plugins_dir)?;
        }

        let data_dir = scratch.path().join("data");
        std::fs::create_dir_all(&data_dir)?;
        let mut vars: Vec<(String, String)> = vec![
            ("BIND_ADDR".into(), "127.0.0.1:0".into()),
            ("PLUGINS_DIR".into(), plugins_dir.display().to_string()),
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}/plinth.db", data_dir.display()),
            ),
            ("WATCH_PLUGINS".into(), "false".into()),
            ("RATE_LIMIT_PER_MINUTE".into(), "0".into()),
            ("AUTH_RATE_LIMIT_PER_MINUTE".into(), "0".into()),
            // Compiled components are reused across test processes (keyed by their bytes
            // and the engine's settings, so a rebuilt plugin is compiled again).
            (
                "PLUGIN_CACHE_DIR".into(),
                std::env::temp_dir()
                    .join("plinth-harness-cache")
                    .display()
                    .to_string(),
            ),
        ];
        let database = match &self.postgres_and_redis {
            Some((postgres_url, redis_url)) => {
                // psql runs to completion: off the async workers.
                let admin_url = postgres_url.clone();
                let database =
                    tokio::task::spawn_blocking(move || ScratchDatabase::create(&admin_url))
                        .await??;
                vars.push(("DATABASE_URL".into(), database.url.clone()));
                vars.push(("REDIS_URL".into(), redis_url.clone()));
                vars.push(("REDIS_KEY_PREFIX".into(), database.name.clone()));
                Some(database)
            }
            None => None,
        };
        vars.extend(self.env);
        let config = Config::from_lookup(|key| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        })?;
        let app = Application::build(config).await?;
        let addr = app.local_addr()?;
        let capabilities = app.state().capabilities.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Ok(TestHost {
            addr,
            client: reqwest::Client::new(),
            capabilities,
            capturing,
            stop: Some(stop),
            serving: Some(serving),
            database,
            _scratch: scratch,
        })
    }
}

/// A Plinth host serving the plugins under test on `127.0.0.1:<port>`; stops when dropped.
#[derive(Debug)]
pub struct TestHost {
    addr: SocketAddr,
    client: reqwest::Client,
    capabilities: Arc<Capabilities>,
    capturing: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Dropped after the host: its connections are gone by then.
    database: Option<ScratchDatabase>,
    _scratch: tempfile::TempDir,
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        // `database` drops next, with FORCE: pools still closing cannot hold it.
        let _ = self.database.take();
    }
}

/// A database of its own on a PostgreSQL server, for one test host.
#[derive(Debug)]
struct ScratchDatabase {
    name: String,
    /// The server's URL with the scratch database.
    url: String,
    /// The server's URL as given (its database runs CREATE and DROP).
    admin_url: String,
}

impl ScratchDatabase {
    fn create(admin_url: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("plinth_harness_{}_{nanos}", std::process::id());
        let mut url = reqwest::Url::parse(admin_url)
            .with_context(|| format!("{admin_url} is not a PostgreSQL URL"))?;
        url.set_path(&format!("/{name}"));
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            name,
            url: url.to_string(),
            admin_url: admin_url.to_owned(),
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, statement: &str) -> anyhow::Result<()> {
    let output = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", statement])
        .output()
        .context("cannot run psql (the PostgreSQL client) to make a scratch database")?;
    anyhow::ensure!(
        output.status.success(),
        "psql {statement}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl TestHost {
    /// Builds the plugin in `source` (a crate or project directory with `plugin.toml`) and
    /// serves it on SQLite and the in-process store.
    pub async fn start(source: impl AsRef<Path>) -> anyhow::Result<Self> {
        Self::builder().plugin(source).start().await
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request to build on (headers, body, token), sent with [`TestRequest::send`].
    pub fn request(&self, method: Method, path: &str) -> TestRequest<'_> {
        TestRequest {
            host: self,
            inner: self.client.request(method, self.url(path)),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<TestResponse> {
        self.request(Method::GET, path).send().await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<TestResponse> {
        self.request(Method::POST, path).json(body).send().await
    }

    /// An access token for `user_id`, as `POST /auth/login` would issue it.
    pub async fn access_token(&self, user_id: &str) -> anyhow::Result<String> {
        let issued = self
            .capabilities
            .tokens
            .issue(user_id, TokenKind::Access)
            .await
            .map_err(|err| anyhow::anyhow!("cannot issue a token: {err:?}"))?;
        Ok(issued.token)
    }

    /// Runs `statement` (`$1`, `$2`, … for `params`) in `data_set`, as a plugin granted it
    /// would, and returns the rows as JSON objects (column → value; timestamps as RFC 3339
    /// text, blobs as arrays of bytes). Statements that return no rows give an empty list.
    pub async fn sql(
        &self,
        data_set: &str,
        statement: &str,
        params: Vec<Value>,
    ) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let db = self
            .capabilities
            .sql
            .existing(data_set)
            .await
            .with_context(|| format!("no plugin of this host uses the data set `{data_set}`"))?;
        let rows = db
            .query(statement, params, false)
            .await
            .map_err(|err| anyhow::anyhow!("{statement}: {err:?}"))?;
        Ok(rows
            .rows
            .into_iter()
            .map(|row| {
                rows.columns
                    .iter()
                    .cloned()
                    .zip(row.into_iter().map(json_of))
                    .collect()
            })
            .collect())
    }

    /// Whether [`TestResponse::logs`] is filled: false when the test process installed a
    /// `tracing` subscriber of its own before the first host started.
    pub fn captures_logs(&self) -> bool {
        self.capturing
    }
}

/// A request being built; [`TestRequest::send`] sends it.
#[derive(Debug)]
pub struct TestRequest<'a> {
    host: &'a TestHost,
    inner: reqwest::RequestBuilder,
}

impl TestRequest<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.inner = self.inner.header(name, value);
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.inner = self.inner.bearer_auth(token);
        self
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.inner = self.inner.json(body);
        self
    }

    /// A form body (`application/x-www-form-urlencoded`), as OAuth2 password logins send.
    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        self.inner = self.inner.form(fields);
        self
    }

    pub fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.inner = self.inner.body(body);
        self
    }

    pub async fn send(self) -> anyhow::Result<TestResponse> {
        let response = self.inner.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let logs = if self.host.capturing {
            logs::take(&request_id)
        } else {
            Vec::new()
        };
        Ok(TestResponse {
            status,
            headers,
            body,
            request_id,
            logs,
        })
    }
}

/// A response, read whole, with what the plugin logged while producing it.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The host's `X-Request-Id` for this request.
    pub request_id: String,
    /// The plugin's log lines (its `log` calls, stdout and stderr) for this request.
    pub logs: Vec<LogLine>,
}

impl TestResponse {
    /// The body as JSON; an error quoting the body when it is not.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the body is not JSON (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `code` of an error body (docs/API.md's `{"detail": ..., "code": ...}`).
    pub fn error_code(&self) -> Option<String> {
        let body = self.json().ok()?;
        body.get("code")?.as_str().map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

fn json_of(value: Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => i.into(),
        Value::Real(r) => r.into(),
        Value::Text(t) | Value::Timestamp(t) => t.into(),
        Value::Boolean(b) => b.into(),
        Value::Blob(bytes) => bytes.into(),
    }
}
