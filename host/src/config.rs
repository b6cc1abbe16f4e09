//! Configuration, read once at start-up from the environment (see API.md, "Configuration").
//!
//! Every variable is parsed here and nowhere else, so a bad value is reported at start-up
//! with the variable named, never later on the request path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

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

#[derive(Debug, Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub app_env: AppEnv,
    pub log_format: LogFormat,
    /// Directory of deployable plugins: one sub-directory per plugin with `plugin.toml`.
    pub plugins_dir: PathBuf,
    /// Largest request body accepted before the plugin runs (413 beyond it).
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
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
        let max_body_bytes = parse_or(&get, "MAX_BODY_BYTES", 1024 * 1024)?;
        let shutdown_grace = Duration::from_secs(parse_or(&get, "SHUTDOWN_GRACE_SECONDS", 30)?);

        Ok(Self {
            bind_addr,
            app_env,
            log_format,
            plugins_dir,
            max_body_bytes,
            shutdown_grace,
        })
    }
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
        Ok(())
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (key, value) in [
            ("BIND_ADDR", "nowhere"),
            ("APP_ENV", "staging"),
            ("LOG_FORMAT", "xml"),
            ("MAX_BODY_BYTES", "-1"),
        ] {
            let err = config(&[(key, value)]).expect_err(key);
            assert!(
                format!("{err:#}").contains(key),
                "{err:#} should name {key}"
            );
        }
    }
}
