//! Test support: run the real `plinth` binary on port 0 with a private plugin directory.
//!
//! The binary and the plugins are built by `scripts/test.sh` (the README's test command)
//! before the tests run; a missing artifact fails the test with that instruction.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a host may take to load its plugins and bind.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The `plinth` binary built by `scripts/test.sh` (override with `PLINTH_BIN`).
pub fn plinth_bin() -> PathBuf {
    let bin = std::env::var_os("PLINTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/plinth"));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with scripts/test.sh, which builds it",
        bin.display()
    );
    bin
}

/// Where a built plugin's deployable directory is (deployed or test-only).
pub fn built_plugin(name: &str) -> PathBuf {
    for root in ["plugins", "test-plugins"] {
        let dir = target_dir().join(root).join(name);
        if dir.join("plugin.toml").is_file() {
            return dir;
        }
    }
    panic!("plugin `{name}` is not built: run the tests with scripts/test.sh");
}

/// A private `PLUGINS_DIR`, removed when dropped.
#[derive(Debug)]
pub struct PluginsDir {
    dir: tempfile::TempDir,
}

impl PluginsDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("creating a temporary plugins dir"),
        }
    }

    /// A directory holding copies of the named built plugins.
    pub fn with(plugins: &[&str]) -> Self {
        let dir = Self::new();
        for name in plugins {
            dir.deploy(name);
        }
        dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies built plugin `name` in.
    pub fn deploy(&self, name: &str) -> PathBuf {
        self.deploy_as(name, name, |manifest| manifest)
    }

    /// Copies built plugin `name` into sub-directory `dir_name`, rewriting its manifest.
    pub fn deploy_as(
        &self,
        name: &str,
        dir_name: &str,
        edit_manifest: impl Fn(String) -> String,
    ) -> PathBuf {
        let source = built_plugin(name);
        let dest = self.path().join(dir_name);
        std::fs::create_dir_all(&dest).expect("creating plugin dir");
        for entry in std::fs::read_dir(&source).expect("reading built plugin") {
            let entry = entry.expect("dir entry");
            let target = dest.join(entry.file_name());
            if entry.file_name() == "plugin.toml" {
                let manifest = std::fs::read_to_string(entry.path()).expect("reading manifest");
                std::fs::write(&target, edit_manifest(manifest)).expect("writing manifest");
            } else {
                copy_recursively(&entry.path(), &target);
            }
        }
        dest
    }

    /// Writes `plugin.toml` of `dir_name` verbatim (for malformed-manifest tests).
    pub fn write_manifest(&self, dir_name: &str, text: &str) -> PathBuf {
        let dest = self.path().join(dir_name);
        std::fs::create_dir_all(&dest).expect("creating plugin dir");
        let path = dest.join("plugin.toml");
        std::fs::write(&path, text).expect("writing manifest");
        path
    }
}

impl Default for PluginsDir {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies a file, or a directory with everything in it (a plugin's `migrations/`).
pub fn copy_recursively(source: &Path, target: &Path) {
    if source.is_dir() {
        std::fs::create_dir_all(target).expect("creating a directory");
        for entry in std::fs::read_dir(source).expect("reading a directory") {
            let entry = entry.expect("dir entry");
            copy_recursively(&entry.path(), &target.join(entry.file_name()));
        }
    } else {
        std::fs::copy(source, target).expect("copying a plugin file");
    }
}

pub mod api;
pub mod backend;
pub mod otlp;
pub mod proxy;

pub use backend::Backend;

/// How to start a host.
#[derive(Debug)]
pub struct HostBuilder {
    env: Vec<(String, String)>,
    /// Holds the SQLite file (and anything else the host writes) for this host only.
    data_dir: Arc<tempfile::TempDir>,
}

impl HostBuilder {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Creates the first superuser `root@example.com` / `root` (password `root-password`).
    pub fn with_root(self) -> Self {
        self.env("FIRST_SUPERUSER_EMAIL", "root@example.com")
            .env("FIRST_SUPERUSER_USERNAME", "root")
            .env("FIRST_SUPERUSER_PASSWORD", "root-password")
    }

    /// Configures the database and key-value store of `backend`.
    pub fn backend(mut self, backend: &Backend) -> Self {
        self.env.extend(backend.env());
        self
    }

    fn command(&self, plugins: &PluginsDir) -> Command {
        let mut command = Command::new(plinth_bin());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("JWT_SECRET", TEST_JWT_SECRET)
            // Functional tests send many requests from one IP: limits are off unless a
            // test turns them on.
            .env("RATE_LIMIT_PER_MINUTE", "0")
            .env("AUTH_RATE_LIMIT_PER_MINUTE", "0")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/plinth.db", self.data_dir.path().display()),
            )
            .env("PLUGINS_DIR", plugins.path())
            // Shared by every test host: each plugin is compiled once per run, not per host.
            .env("PLUGIN_CACHE_DIR", target_dir().join("test-plugin-cache"))
            .current_dir(self.data_dir.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts the host and waits until it listens.
    pub fn start(self, plugins: &PluginsDir) -> TestHost {
        let mut child = self.command(plugins).spawn().expect("spawning plinth");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = logs.clone();
        let stdout_reading = Arc::new(ReadGate::default());
        let gate = stdout_reading.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                gate.wait_while_paused();
                if let Some(addr) = listening_addr(&line) {
                    let _ = addr_tx.send(addr);
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let err_sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_sink.lock().expect("log lock").push(line);
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(50)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "plinth exited ({status}) before listening:\n{}",
                    logs.lock().expect("log lock").join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "plinth did not start listening in time"
            );
        };
        TestHost {
            child,
            addr,
            logs,
            stdout_reading,
            client: reqwest::Client::new(),
            _data_dir: self.data_dir,
        }
    }

    /// Runs a host that is expected to refuse to start; returns its exit status and output.
    pub fn start_expecting_failure(self, plugins: &PluginsDir) -> (ExitStatus, String) {
        let mut child = self.command(plugins).spawn().expect("spawning plinth");
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for plinth") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("plinth kept running although it should have refused to start");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut output = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = out.read_to_string(&mut output);
        }
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut output);
        }
        (status, output)
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if !value["message"].as_str()?.starts_with("listening") {
        return None;
    }
    value["addr"].as_str()?.parse().ok()
}

/// Whether the test reads the host's stdout (see [`TestHost::pause_stdout`]).
#[derive(Debug, Default)]
struct ReadGate {
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl ReadGate {
    fn set_paused(&self, paused: bool) {
        *self.paused.lock().expect("gate lock") = paused;
        self.resumed.notify_all();
    }

    fn wait_while_paused(&self) {
        let paused = self.paused.lock().expect("gate lock");
        let _resumed = self
            .resumed
            .wait_while(paused, |paused| *paused)
            .expect("gate lock");
    }
}

/// A running `plinth` process, killed when dropped.
#[derive(Debug)]
pub struct TestHost {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    stdout_reading: Arc<ReadGate>,
    pub client: reqwest::Client,
    _data_dir: Arc<tempfile::TempDir>,
}

/// The `JWT_SECRET` test hosts get, so tests can forge tokens with it (and without it).
pub const TEST_JWT_SECRET: &str = "test-secret-for-plinth-black-box-tests-0123456789";

impl TestHost {
    pub fn builder() -> HostBuilder {
        HostBuilder {
            env: Vec::new(),
            data_dir: Arc::new(tempfile::tempdir().expect("creating a data dir")),
        }
    }

    /// A host on SQLite serving `plugins`, with the superuser of
    /// [`HostBuilder::with_root`] logged in and the directory watcher off: only admin
    /// reloads change what it serves.
    pub async fn start_admin(plugins: &[&str]) -> (PluginsDir, Self, api::Tokens) {
        let plugins = PluginsDir::with(plugins);
        let host = Self::builder()
            .backend(&Backend::sqlite())
            .env("WATCH_PLUGINS", "false")
            .with_root()
            .start(&plugins);
        let root = host.root_tokens().await;
        (plugins, host, root)
    }

    /// Like [`start_api`](Self::start_api), with a first superuser `root@example.com`
    /// (password `root-password`), logged in.
    pub async fn start_api_with_root(backend: &Backend) -> (PluginsDir, Self, api::Tokens) {
        let plugins = PluginsDir::with(&["auth", "users"]);
        let host = Self::builder().backend(backend).with_root().start(&plugins);
        let root = host.root_tokens().await;
        (plugins, host, root)
    }

    /// Logs in as the superuser that [`HostBuilder::with_root`] creates.
    pub async fn root_tokens(&self) -> api::Tokens {
        self.tokens("root@example.com", "root-password").await
    }

    /// A host serving the `auth` and `users` plugins on `backend`.
    pub fn start_api(backend: &Backend) -> (PluginsDir, Self) {
        let plugins = PluginsDir::with(&["auth", "users"]);
        let host = Self::builder().backend(backend).start(&plugins);
        (plugins, host)
    }

    /// A host with default configuration serving `plugins`.
    pub fn start(plugins: &PluginsDir) -> Self {
        Self::builder().start(plugins)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET failed")
    }

    /// Every line the host has written so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Stops reading the host's stdout, as a stalled log collector would: the pipe fills
    /// (64 KiB on Linux, plus a line or so already read) and then the host's writes to it
    /// block. [`logs`](Self::logs) stays as it was until [`resume_stdout`](Self::resume_stdout).
    pub fn pause_stdout(&self) {
        self.stdout_reading.set_paused(true);
    }

    /// Reads the host's stdout again, everything it wrote in the meantime included.
    pub fn resume_stdout(&self) {
        self.stdout_reading.set_paused(false);
    }

    /// Log lines parsed as JSON objects.
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `plinth::access` line of the request whose `X-Request-Id` was `request_id`.
    pub fn access_line(&self, request_id: &str) -> serde_json::Value {
        self.wait_for_log(|l| {
            l["target"] == "plinth::access" && l["span"]["request_id"] == request_id
        })
    }

    /// Waits until a log line satisfies `pred` (lines can trail the response slightly).
    pub fn wait_for_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.json_logs().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no matching log line in:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics listener's address (the host must run with `METRICS_ADDR`).
    pub fn metrics_addr(&self) -> SocketAddr {
        let line = self.wait_for_log(|l| l["metrics_addr"].is_string());
        line["metrics_addr"]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .expect("metrics_addr is an address")
    }

    /// One scrape of the metrics listener: content type and body.
    pub async fn scrape(&self) -> (String, String) {
        let response = self
            .client
            .get(format!("http://{}/metrics", self.metrics_addr()))
            .send()
            .await
            .expect("scraping /metrics");
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (content_type, response.text().await.expect("metrics body"))
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Resident memory of the host process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        send_sigterm(self.pid());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for plinth") {
                return status;
            }
            assert!(Instant::now() < deadline, "plinth did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[allow(unsafe_code)]
fn send_sigterm(pid: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill({pid}, SIGTERM) failed");
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `X-Request-Id` a response carries (panics when it has none).
pub fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned()
}

/// The JSON body of a response (panics with the raw body when it is not JSON).
pub async fn json_body(response: reqwest::Response) -> serde_json::Value {
    let text = response.text().await.expect("reading body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text}"))
}
