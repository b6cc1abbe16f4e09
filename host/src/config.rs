//! Configuration, read once at start-up from the environment (see docs/API.md, "Configuration").
//!
//! Every variable is parsed here and nowhere else, so a bad value is reported at start-up
//! with the variable named, never later on the request path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::capabilities::bootstrap::FirstSuperuser;
use crate::capabilities::sql::SqlConfig;
use crate::capabilities::tokens::TokenConfig;
use crate::connections::ConnectionLimits;
use crate::middleware::cors::CorsPolicy;

/// Shortest `JWT_SECRET` accepted (docs/API.md).
const MIN_SECRET_BYTES: usize = 32;

/// The largest instance pool: 20,000 slots of about 4 GiB reserve 80 TiB of the 128 TiB a
/// Linux process may map.
const MAX_PLUGIN_INSTANCES: u32 = 20_000;

fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    secret
}

/// `development` relaxes nothing about correctness; `production` refuses insecure defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Everything the host is configured with. Secrets are redacted from `Debug`.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    /// Where the Prometheus exposition is served (`METRICS_ADDR`); `None`: not served, and
    /// requests are not measured.
    pub metrics_addr: Option<SocketAddr>,
    /// Where traces are exported (the standard `OTEL_*` variables); `None`: not traced.
    pub traces: Option<crate::telemetry::traces::OtlpExport>,
    pub app_env: AppEnv,
    pub log_format: LogFormat,
    /// Directory of deployable plugins: one sub-directory per plugin with `plugin.toml`.
    pub plugins_dir: PathBuf,
    /// Whether changes in `plugins_dir` are applied while running (`WATCH_PLUGINS`).
    pub watch_plugins: bool,
    /// Where compiled plugins are kept across restarts (`PLUGIN_CACHE_DIR`); `None`: off.
    pub plugin_cache_dir: Option<PathBuf>,
    /// Plugin instances alive at once across all plugins (`PLUGIN_INSTANCES`): the size of
    /// the instance pool, each slot reserving about 4 GiB of address space.
    pub plugin_instances: u32,
    /// Largest request body accepted before the plugin runs (413 beyond it).
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    pub sql: SqlConfig,
    /// The operator policy file (`PLUGINS_POLICY`); `None`: the development default.
    pub plugins_policy: Option<PathBuf>,
    /// The data set holding the `users` table the admin API and the first superuser use.
    pub accounts_data_set: String,
    /// `None`: the in-process key-value store. (May carry a password.)
    pub redis_url: Option<Redacted<String>>,
    /// Prefix of every key the host writes to the key-value store (several deployments,
    /// or test runs, can share one Redis).
    pub key_prefix: String,
    /// This host's name in the fleet view (`HOST_ID`; default: hostname and process id).
    pub host_id: String,
    pub tokens: TokenConfig,
    pub first_superuser: Option<FirstSuperuser>,
    /// `None`: no cross-origin access.
    pub cors: Option<CorsPolicy>,
    /// Requests per minute per client IP; 0 turns a limit off.
    pub rate_limit_per_minute: u32,
    pub auth_rate_limit_per_minute: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Timeouts and the cap on open connections (slow or idle clients cannot hold sockets).
    pub connections: ConnectionLimits,
    /// Whether `/openapi.json` (`OPENAPI_ENABLED`) and `/docs` (`DOCS_ENABLED`) are served.
    pub docs: crate::openapi::DocsConfig,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());

        let bind_addr = get("BIND_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned())
            .parse()
            .context("BIND_ADDR must be an address like 127.0.0.1:8080")?;
        let metrics_addr = get("METRICS_ADDR")
            .map(|addr| addr.parse())
            .transpose()
            .context("METRICS_ADDR must be an address like 127.0.0.1:9464")?;
        let traces = crate::telemetry::traces::OtlpExport::from_lookup(get)?;
        let app_env = match get("APP_ENV").as_deref() {
            None | Some("development") => AppEnv::Development,
            Some("production") => AppEnv::Production,
            Some(other) => bail!("APP_ENV must be `development` or `production`, not `{other}`"),
        };
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT must be `pretty` or `json`, not `{other}`"),
        };
        let plugins_dir = get("PLUGINS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(default_plugins_dir);
        let plugin_cache_dir = match get("PLUGIN_CACHE_DIR").as_deref() {
            Some("off") => None,
            dir => Some(
                std::path::absolute(dir.unwrap_or("data/plugin-cache"))
                    .context("PLUGIN_CACHE_DIR cannot be made absolute")?,
            ),
        };
        let plugin_instances = parse_or(
            &get,
            "PLUGIN_INSTANCES",
            crate::plugins::runtime::DEFAULT_INSTANCES,
        )?;
        ensure!(
            (1..=MAX_PLUGIN_INSTANCES).contains(&plugin_instances),
            "PLUGIN_INSTANCES must be between 1 and {MAX_PLUGIN_INSTANCES}, not {plugin_instances}"
        );
        let max_body_bytes = parse_or(&get, "MAX_BODY_BYTES", 1024 * 1024)?;
        let shutdown_grace = Duration::from_secs(parse_or(&get, "SHUTDOWN_GRACE_SECONDS", 30)?);

        let database_url =
            get("DATABASE_URL").unwrap_or_else(|| "sqlite://data/plinth.db".to_owned());
        let role_secret = match get("DATABASE_ROLE_SECRET") {
            Some(secret) => {
                ensure!(
                    secret.len() >= MIN_SECRET_BYTES,
                    "DATABASE_ROLE_SECRET must be at least {MIN_SECRET_BYTES} bytes"
                );
                secret.into_bytes()
            }
            None => {
                ensure!(
                    app_env != AppEnv::Production || !database_url.starts_with("postgres"),
                    "DATABASE_ROLE_SECRET is required when APP_ENV=production on PostgreSQL"
                );
                random_secret()
            }
        };
        let sql = SqlConfig {
            url: database_url,
            read_url: get("DATABASE_READ_URL"),
            max_connections: parse_or(
                &get,
                "DATABASE_MAX_CONNECTIONS",
                default_database_connections(),
            )?,
            ephemeral_role_secret: get("DATABASE_ROLE_SECRET").is_none(),
            role_secret,
        };
        let accounts_data_set = get("ACCOUNTS_DATA_SET").unwrap_or_else(|| "accounts".to_owned());
        crate::capabilities::grants::check_data_set_name(&accounts_data_set)
            .context("ACCOUNTS_DATA_SET")?;
        let secret = match get("JWT_SECRET") {
            Some(secret) => {
                ensure!(
                    secret.len() >= MIN_SECRET_BYTES,
                    "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes"
                );
                secret.into_bytes()
            }
            None => {
                ensure!(
                    app_env != AppEnv::Production,
                    "JWT_SECRET is required when APP_ENV=production"
                );
                random_secret()
            }
        };
        let tokens = TokenConfig {
            ephemeral_secret: get("JWT_SECRET").is_none(),
            secret,
            access_ttl: Duration::from_secs(parse_or(&get, "ACCESS_TOKEN_TTL_SECONDS", 1800)?),
            refresh_ttl: Duration::from_secs(parse_or(&get, "REFRESH_TOKEN_TTL_SECONDS", 604_800)?),
            refresh_max_lifetime: Duration::from_secs(parse_or(
                &get,
                "REFRESH_TOKEN_MAX_LIFETIME",
                2_592_000,
            )?),
        };
        ensure!(
            !tokens.access_ttl.is_zero()
                && !tokens.refresh_ttl.is_zero()
                && !tokens.refresh_max_lifetime.is_zero(),
            "token lifetimes must be positive"
        );
        let first_superuser = match (
            get("FIRST_SUPERUSER_EMAIL"),
            get("FIRST_SUPERUSER_USERNAME"),
            get("FIRST_SUPERUSER_PASSWORD"),
        ) {
            (None, None, None) => None,
            (Some(email), Some(username), Some(password)) => {
                ensure!(
                    (8..=128).contains(&password.chars().count()),
                    "FIRST_SUPERUSER_PASSWORD must be 8 to 128 characters"
                );
                Some(FirstSuperuser {
                    email,
                    username,
                    password,
                })
            }
            _ => bail!(
                "FIRST_SUPERUSER_EMAIL, FIRST_SUPERUSER_USERNAME and FIRST_SUPERUSER_PASSWORD \
                 must be set together"
            ),
        };

        let cors = CorsPolicy::from_config(
            get("CORS_ALLOWED_ORIGINS").as_deref(),
            parse_or(&get, "CORS_ALLOW_CREDENTIALS", false)?,
            parse_or(&get, "CORS_MAX_AGE_SECONDS", 600)?,
        )?;
        let trusted_proxies = get("TRUSTED_PROXIES")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.parse::<ipnet::IpNet>()
                            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .with_context(|| {
                                format!("TRUSTED_PROXIES: `{p}` is not an IP address or CIDR")
                            })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();

        // Connection limits: every timeout positive, so none can be switched off by mistake.
        let seconds = |key: &str, default: u64| -> anyhow::Result<Duration> {
            let value = parse_or(&get, key, default)?;
            ensure!(value > 0, "{key} must be at least 1 second");
            Ok(Duration::from_secs(value))
        };
        let connections = ConnectionLimits {
            header_read_timeout: seconds("HEADER_READ_TIMEOUT_SECONDS", 10)?,
            body_read_timeout: seconds("BODY_READ_TIMEOUT_SECONDS", 30)?,
            idle_timeout: seconds("IDLE_TIMEOUT_SECONDS", 60)?,
            max_connections: parse_or(&get, "MAX_CONNECTIONS", 1024)?,
        };
        ensure!(
            connections.max_connections > 0,
            "MAX_CONNECTIONS must be at least 1"
        );

        let docs = crate::openapi::DocsConfig {
            openapi: parse_or(&get, "OPENAPI_ENABLED", true)?,
            ui: parse_or(&get, "DOCS_ENABLED", true)?,
        };
        ensure!(
            docs.openapi || !docs.ui,
            "DOCS_ENABLED=true needs OPENAPI_ENABLED=true: /docs shows /openapi.json"
        );

        Ok(Self {
            bind_addr,
            metrics_addr,
            app_env,
            log_format,
            traces,
            plugins_dir,
            watch_plugins: parse_or(&get, "WATCH_PLUGINS", true)?,
            plugin_cache_dir,
            plugin_instances,
            max_body_bytes,
            shutdown_grace,
            sql,
            plugins_policy: get("PLUGINS_POLICY").map(PathBuf::from),
            accounts_data_set,
            redis_url: get("REDIS_URL").map(Redacted),
            key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "plinth".to_owned()),
            host_id: get("HOST_ID").unwrap_or_else(default_host_id),
            tokens,
            first_superuser,
            cors,
            rate_limit_per_minute: parse_or(&get, "RATE_LIMIT_PER_MINUTE", 60)?,
            auth_rate_limit_per_minute: parse_or(&get, "AUTH_RATE_LIMIT_PER_MINUTE", 10)?,
            trusted_proxies,
            connections,
            docs,
        })
    }
}

/// A value kept out of `Debug` output (URLs with passwords, secrets).
#[derive(Clone)]
pub struct Redacted<T>(pub T);

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Connections per data set pool unless `DATABASE_MAX_CONNECTIONS` says: twice the cores,
/// between 4 and 16. More statements in flight than the cores can drive only queue inside
/// the database and lengthen the tail: on 2 cores, `users/me` at 64 client connections
/// measured p99 8.5 ms with 4 PostgreSQL connections against 11–13 ms with 16 (the same
/// throughput), and on SQLite 18.1k against 15.8k requests/s (BENCHMARKS.md).
fn default_database_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .clamp(4, 16)
}

fn parse_or<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match get(key) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .with_context(|| format!("{key} has an invalid value `{raw}`")),
    }
}

/// The plugins this repository builds: `target/plugins` next to the `target/<profile>/plinth`
/// binary, so `target/release/plinth` finds them from any working directory. Falls back to
/// `./target/plugins` when the binary lives elsewhere.
/// The machine's hostname and this process's id: unique among hosts sharing a Redis.
fn default_host_id() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{hostname}-{}", std::process::id())
}

fn default_plugins_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("plugins")))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("target/plugins"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_a_missing_secret() {
        let err = config(&[("APP_ENV", "production")]).expect_err("no secret");
        assert!(format!("{err:#}").contains("JWT_SECRET"));
        let secret = "s".repeat(32);
        assert!(config(&[("APP_ENV", "production"), ("JWT_SECRET", &secret)]).is_ok());
    }

    #[test]
    fn debug_output_never_shows_secrets() -> anyhow::Result<()> {
        let secret = "super-secret-value-that-is-long-enough";
        let config = config(&[
            ("JWT_SECRET", secret),
            ("DATABASE_URL", "postgres://app:hunter2@db/app"),
            ("REDIS_URL", "redis://:redispass@cache:6379"),
            ("FIRST_SUPERUSER_EMAIL", "root@example.com"),
            ("FIRST_SUPERUSER_USERNAME", "root"),
            ("FIRST_SUPERUSER_PASSWORD", "pa55word-root"),
        ])?;
        let shown = format!("{config:?}");
        for hidden in [secret, "hunter2", "redispass", "pa55word-root"] {
            assert!(!shown.contains(hidden), "{shown}");
        }
        Ok(())
    }

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::from_lookup(|key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn defaults_match_api_md() -> anyhow::Result<()> {
        let config = config(&[])?;
        assert_eq!(config.bind_addr, "127.0.0.1:8080".parse()?);
        assert_eq!(config.app_env, AppEnv::Development);
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.plugin_instances, 1_000);
        Ok(())
    }

    #[test]
    fn the_instance_pool_is_sized_within_bounds() -> anyhow::Result<()> {
        assert_eq!(config(&[("PLUGIN_INSTANCES", "8")])?.plugin_instances, 8);
        for refused in ["0", "20001", "-1", "many"] {
            let err = config(&[("PLUGIN_INSTANCES", refused)]).expect_err(refused);
            assert!(format!("{err:#}").contains("PLUGIN_INSTANCES"), "{err:#}");
        }
        Ok(())
    }

    #[test]
    fn database_pools_default_to_twice_the_cores_within_4_to_16() -> anyhow::Result<()> {
        let cores = std::thread::available_parallelism()?.get();
        let expected = u32::try_from(2 * cores)?.clamp(4, 16);
        assert_eq!(config(&[])?.sql.max_connections, expected);
        let chosen = config(&[("DATABASE_MAX_CONNECTIONS", "40")])?;
        assert_eq!(chosen.sql.max_connections, 40);
        Ok(())
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (key, value) in [
            ("BIND_ADDR", "nowhere"),
            ("APP_ENV", "staging"),
            ("LOG_FORMAT", "xml"),
            ("MAX_BODY_BYTES", "-1"),
            ("JWT_SECRET", "too-short"),
            ("ACCESS_TOKEN_TTL_SECONDS", "soon"),
            ("REFRESH_TOKEN_MAX_LIFETIME", "forever"),
            ("FIRST_SUPERUSER_EMAIL", "root@example.com"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("CORS_ALLOWED_ORIGINS", "example.com"),
            ("RATE_LIMIT_PER_MINUTE", "lots"),
            ("HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("BODY_READ_TIMEOUT_SECONDS", "soon"),
            ("MAX_CONNECTIONS", "0"),
        ] {
            let err = config(&[(key, value)]).expect_err(key);
            assert!(
                format!("{err:#}").contains(key),
                "{err:#} should name {key}"
            );
        }
    }
}
