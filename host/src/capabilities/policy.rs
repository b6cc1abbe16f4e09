//! The operator's policy: the most each plugin may be granted (`PLUGINS_POLICY`).
//!
//! A manifest is written by the plugin's own team, so it cannot be what decides: the
//! grants a plugin holds are what its manifest asks, and a manifest asking for more than
//! the policy allows is refused, naming what and why. The policy is a TOML file outside
//! the plugin directories, read once at start-up:
//!
//! ```toml
//! [default]                  # plugins not listed below
//! own_data_set = true
//! kv = true
//! tokens = ["verify"]
//!
//! [plugins.auth]
//! data_sets = ["accounts"]
//! kv = true
//! tokens = ["issue", "verify", "revoke"]
//! passwords = true
//!
//! [plugins.weather]          # a standard wasi:http component
//! outbound_http = ["api.weather.example"]
//! ```
//!
//! Without `PLUGINS_POLICY` (refused when `APP_ENV=production`) the shipped policy,
//! `deploy/policy.toml`, applies as the development default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::grants::{Grants, TokenOperation, check_data_set_name};

/// The shipped policy, also the development default.
const SHIPPED: &str = include_str!("../../../deploy/policy.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    default: Option<Allowance>,
    #[serde(default)]
    plugins: BTreeMap<String, Allowance>,
    /// Where the policy came from, for messages.
    #[serde(skip)]
    source: String,
}

/// What one plugin (or every unlisted one) may be granted.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    #[serde(default)]
    data_sets: BTreeSet<String>,
    /// A data set named after the plugin, unless a listed plugin's data set has that name.
    #[serde(default)]
    own_data_set: bool,
    #[serde(default)]
    kv: bool,
    #[serde(default)]
    tokens: BTreeSet<TokenOperation>,
    #[serde(default)]
    passwords: bool,
    /// Authorities a standard `wasi:http` component may be granted to send requests to.
    #[serde(default)]
    outbound_http: BTreeSet<String>,
}

impl Policy {
    /// Reads `PLUGINS_POLICY`, or, with none, takes the development default (refused in
    /// production, where the operator must say what plugins may do).
    pub fn load(path: Option<&Path>, production: bool) -> anyhow::Result<Self> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("PLUGINS_POLICY {}: cannot read", path.display()))?;
                Self::parse(&text, format!("PLUGINS_POLICY {}", path.display()))
                    .with_context(|| format!("PLUGINS_POLICY {}: invalid", path.display()))
            }
            None if production => {
                bail!("PLUGINS_POLICY is required when APP_ENV=production (see deploy/policy.toml)")
            }
            None => Self::development_default(),
        }
    }

    pub fn development_default() -> anyhow::Result<Self> {
        Self::parse(
            SHIPPED,
            "the development default policy (deploy/policy.toml)".into(),
        )
    }

    pub fn parse(text: &str, source: String) -> anyhow::Result<Self> {
        let mut policy: Self = toml::from_str(text)?;
        policy.source = source;
        for (plugin, allowance) in &policy.plugins {
            for data_set in &allowance.data_sets {
                check_data_set_name(data_set)
                    .with_context(|| format!("[plugins.{plugin}] data_sets"))?;
            }
        }
        // Compared with grants in the same (lower-case) form.
        let allowances = policy
            .plugins
            .iter_mut()
            .map(|(p, a)| (format!("[plugins.{p}]"), a));
        let default = policy.default.as_mut().map(|a| ("[default]".to_owned(), a));
        for (section, allowance) in allowances.chain(default) {
            allowance.outbound_http =
                super::outbound_http::normalize_authorities(&allowance.outbound_http)
                    .with_context(|| format!("{section} outbound_http"))?;
        }
        if let Some(default) = &policy.default {
            anyhow::ensure!(
                default.data_sets.is_empty(),
                "[default] cannot list data_sets: every unlisted plugin would share them \
                 (use own_data_set)"
            );
        }
        Ok(policy)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// A one-line summary for the start-up log.
    pub fn summary(&self) -> String {
        let listed: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        let default = match &self.default {
            Some(default) => describe(default),
            None => "only `log`".into(),
        };
        format!(
            "listed: {}; every other plugin: {default}",
            listed.join(", ")
        )
    }

    /// Refuses `grants` of plugin `plugin` beyond what the policy allows, naming each excess.
    pub fn check(&self, plugin: &str, grants: &Grants) -> anyhow::Result<()> {
        let empty = Allowance::default();
        let allowance = self
            .plugins
            .get(plugin)
            .or(self.default.as_ref())
            .unwrap_or(&empty);
        let mut refused = Vec::new();
        if let Some(data_set) = grants.data_set() {
            let own =
                allowance.own_data_set && data_set == plugin && !self.is_listed(data_set, plugin);
            if !own && !allowance.data_sets.contains(data_set) {
                refused.push(format!("data set `{data_set}`"));
            }
        }
        if grants.kv && !allowance.kv {
            refused.push("`kv`".into());
        }
        for operation in grants.tokens.difference(&allowance.tokens) {
            refused.push(format!("`tokens` {}", token_name(*operation)));
        }
        if grants.passwords && !allowance.passwords {
            refused.push("`passwords`".into());
        }
        for authority in grants.outbound_http.difference(&allowance.outbound_http) {
            refused.push(format!("`outbound_http` to {authority}"));
        }
        if refused.is_empty() {
            return Ok(());
        }
        bail!(
            "the manifest asks for {}, which {} does not allow plugin `{plugin}` (it allows {})",
            refused.join(", "),
            self.source,
            describe_for(allowance, plugin)
        )
    }

    /// Whether a plugin other than `except` is given `data_set` by name.
    fn is_listed(&self, data_set: &str, except: &str) -> bool {
        self.plugins
            .iter()
            .any(|(name, a)| name != except && a.data_sets.contains(data_set))
    }
}

fn token_name(operation: TokenOperation) -> &'static str {
    match operation {
        TokenOperation::Issue => "issue",
        TokenOperation::Verify => "verify",
        TokenOperation::Revoke => "revoke",
    }
}

fn describe(allowance: &Allowance) -> String {
    describe_for(allowance, "<plugin>")
}

fn describe_for(allowance: &Allowance, plugin: &str) -> String {
    let mut parts = Vec::new();
    if allowance.own_data_set {
        parts.push(format!("its own data set `{plugin}`"));
    }
    for data_set in &allowance.data_sets {
        parts.push(format!("data set `{data_set}`"));
    }
    if allowance.kv {
        parts.push("`kv`".into());
    }
    if !allowance.tokens.is_empty() {
        let ops: Vec<&str> = allowance.tokens.iter().map(|o| token_name(*o)).collect();
        parts.push(format!("`tokens` {}", ops.join("/")));
    }
    if allowance.passwords {
        parts.push("`passwords`".into());
    }
    if !allowance.outbound_http.is_empty() {
        let to: Vec<&str> = allowance.outbound_http.iter().map(String::as_str).collect();
        parts.push(format!("`outbound_http` to {}", to.join(", ")));
    }
    if parts.is_empty() {
        "only `log`".into()
    } else {
        format!("`log`, {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::grants::SqlGrant;

    fn grants(text: &str, plugin: &str) -> Grants {
        let mut grants: Grants = toml::from_str(text).expect("grants");
        grants.resolve(plugin).expect("resolve");
        grants
    }

    #[test]
    fn the_shipped_policy_lets_the_shipped_plugins_load() -> anyhow::Result<()> {
        let policy = Policy::development_default()?;
        let auth = "sql = { data_set = \"accounts\" }\nkv = true\n\
                    tokens = [\"issue\", \"verify\", \"revoke\"]\npasswords = true";
        policy.check("auth", &grants(auth, "auth"))?;
        let users = "sql = { data_set = \"accounts\" }\ntokens = [\"revoke\"]\npasswords = true";
        policy.check("users", &grants(users, "users"))?;
        policy.check("hello", &Grants::default())?;
        // Any other plugin: its own data set, kv, verifying tokens.
        policy.check(
            "notes",
            &grants("sql = true\nkv = true\ntokens = [\"verify\"]", "notes"),
        )?;
        Ok(())
    }

    #[test]
    fn outbound_http_is_compared_whatever_the_case_and_only_plain_authorities_are_allowed()
    -> anyhow::Result<()> {
        let policy = Policy::parse(
            "[plugins.weather]\noutbound_http = [\"Api.Weather.example\"]\n",
            "test".into(),
        )?;
        policy.check(
            "weather",
            &grants("outbound_http = [\"API.weather.EXAMPLE\"]", "weather"),
        )?;
        let refused = policy.check(
            "weather",
            &grants("outbound_http = [\"api.weather.example:8443\"]", "weather"),
        );
        assert!(
            format!("{:#}", refused.expect_err("another port"))
                .contains("`outbound_http` to api.weather.example:8443")
        );
        let bad = Policy::parse(
            "[default]\noutbound_http = [\"https://x.example\"]\n",
            "test".into(),
        );
        assert!(format!("{:#}", bad.expect_err("a URL")).contains("[default] outbound_http"));
        Ok(())
    }

    #[test]
    fn asking_for_more_is_refused_with_the_reason() -> anyhow::Result<()> {
        let policy = Policy::development_default()?;
        for (plugin, text, expected) in [
            (
                "evil",
                "sql = { data_set = \"accounts\" }",
                "data set `accounts`",
            ),
            ("evil", "tokens = [\"issue\"]", "`tokens` issue"),
            ("evil", "passwords = true", "`passwords`"),
            ("hello", "kv = true", "`kv`"),
            ("users", "tokens = [\"issue\"]", "`tokens` issue"),
            // A plugin named like a listed data set does not get it as "its own".
            ("accounts", "sql = true", "data set `accounts`"),
        ] {
            let err = policy.check(plugin, &grants(text, plugin)).expect_err(text);
            let message = format!("{err:#}");
            assert!(message.contains(expected), "{plugin} {text}: {message}");
            assert!(message.contains("development default policy"), "{message}");
        }
        Ok(())
    }

    #[test]
    fn without_a_default_unlisted_plugins_get_only_log() -> anyhow::Result<()> {
        let policy = Policy::parse("[plugins.a]\nkv = true\n", "test".into())?;
        policy.check("a", &grants("kv = true", "a"))?;
        assert!(policy.check("b", &grants("kv = true", "b")).is_err());
        let own = Grants {
            sql: Some(SqlGrant {
                data_set: Some("b".into()),
            }),
            ..Grants::default()
        };
        assert!(policy.check("b", &own).is_err());
        assert!(Policy::parse("[plugins.a]\nnetwork = true\n", "test".into()).is_err());
        assert!(Policy::parse("[default]\ndata_sets = [\"x\"]\n", "test".into()).is_err());
        assert!(Policy::load(None, true).is_err());
        Ok(())
    }
}
