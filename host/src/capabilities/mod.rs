//! Capabilities: what a plugin may ask of the host, one self-contained unit per WIT
//! interface.
//!
//! Each unit (module) owns
//! - its configuration section and its shared service ([`sql::SqlService`],
//!   [`kv::KvStore`], [`tokens::TokenService`], [`passwords::PasswordService`]);
//! - its per-instance state, which implements the WIT `Host` trait (e.g.
//!   [`sql::SqlInstance`]); a store's data reaches it through [`CapabilityView`], the way
//!   wasmtime's `WasiView` projects WASI's state;
//! - one [`Descriptor`]: its WIT interface name, whether a [`Grants`] set grants it, and
//!   how to link it. The import check at load time and the linker are both derived from
//!   [`descriptors`], so they cannot disagree.
//!
//! The flow: at start-up [`Capabilities::connect`] opens the shared services; when a
//! plugin version is prepared, [`Capabilities::for_plugin`] checks its grants against the
//! operator [`policy`], prepares its data set (migrations included) and returns its
//! [`PluginCapabilities`]; per request, [`PluginCapabilities::instance`] makes the
//! [`InstanceCapabilities`] the store holds.
//!
//! Adding a capability: a module with those three parts, a line in [`descriptors`], a
//! field in each of the three structs below, and its WIT interface. Only these modules
//! touch sqlx, rusqlite, redis, the JWT key or password hashing.

pub mod bootstrap;
pub mod grants;
pub mod kv;
pub mod log;
pub mod outbound_http;
pub mod passwords;
pub mod policy;
pub mod sql;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::Linker;

pub use grants::{Grants, TokenOperation};

use crate::config::Config;
use crate::telemetry::metrics::{HostCalls, Metrics};

/// The host services behind the capability interfaces, shared by every instance.
#[derive(Debug)]
pub struct Capabilities {
    pub sql: sql::SqlService,
    pub kv: kv::KvStore,
    pub tokens: Arc<tokens::TokenService>,
    pub passwords: Arc<passwords::PasswordService>,
    pub policy: policy::Policy,
    /// Prefix of every key the host writes to the key-value store.
    pub key_prefix: String,
    host_calls: HostCalls,
}

impl Capabilities {
    pub async fn connect(config: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
        let policy = policy::Policy::load(
            config.plugins_policy.as_deref(),
            config.app_env == crate::config::AppEnv::Production,
        )?;
        let sql = sql::SqlService::connect(
            &config.sql,
            Some(sql::pool::PoolStatsFamilies::new(metrics)),
        )
        .await?;
        let kv = kv::KvStore::connect(
            config.redis_url.as_ref().map(|url| url.0.as_str()),
            metrics.redis_errors.clone(),
        )
        .await?;
        let tokens = tokens::TokenService::new(
            &config.tokens,
            kv.clone(),
            &config.key_prefix,
            metrics.token_verifications.clone(),
        );
        // Leave a core for serving requests: a login flood must not stall everything else.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let passwords =
            passwords::PasswordService::new(cores.saturating_sub(1).max(1), 256).await?;
        Ok(Self {
            sql,
            kv,
            tokens: Arc::new(tokens),
            passwords: Arc::new(passwords),
            policy,
            key_prefix: config.key_prefix.clone(),
            host_calls: metrics.host_calls(),
        })
    }

    /// Everything plugin `plugin` (in `dir`) may use, prepared off the request path: its
    /// grants are checked against the policy, and its data set is provisioned and migrated
    /// with the plugin's migrations. An error refuses this version of the plugin.
    pub async fn for_plugin(
        &self,
        plugin: &str,
        dir: &Path,
        grants: &Grants,
        timeout: Duration,
    ) -> anyhow::Result<PluginCapabilities> {
        self.policy.check(plugin, grants)?;
        let dialect = self.sql.dialect();
        let migrations = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || sql::migrations::read(&dir, dialect)).await??
        };
        let data_set = match grants.data_set() {
            Some(data_set) => Some(
                self.sql
                    .prepare(data_set, plugin, &migrations, timeout)
                    .await?,
            ),
            None if !migrations.is_empty() => anyhow::bail!(
                "it ships migrations/{dialect}, but its manifest asks for no data set (`sql`)"
            ),
            None => None,
        };
        let plugin_name: Arc<str> = Arc::from(plugin);
        Ok(PluginCapabilities {
            log: log::PluginLog::new(plugin_name.clone()),
            sql: data_set,
            kv: grants
                .kv
                .then(|| kv::PluginKv::new(self.kv.clone(), &self.key_prefix, plugin)),
            tokens: (!grants.tokens.is_empty())
                .then(|| tokens::PluginTokens::new(self.tokens.clone(), grants.tokens.clone())),
            passwords: grants.passwords.then(|| self.passwords.clone()),
            outbound_http: outbound_http::PluginOutbound::new(
                plugin_name.clone(),
                &grants.outbound_http,
            ),
            host_calls: self.host_calls.clone(),
        })
    }
}

/// What one plugin version may use, prepared when it was loaded.
#[derive(Debug)]
pub struct PluginCapabilities {
    log: log::PluginLog,
    sql: Option<Arc<sql::DataSet>>,
    kv: Option<kv::PluginKv>,
    tokens: Option<tokens::PluginTokens>,
    passwords: Option<Arc<passwords::PasswordService>>,
    outbound_http: outbound_http::PluginOutbound,
    host_calls: HostCalls,
}

impl PluginCapabilities {
    /// The data set this plugin's SQL runs in, if it has one.
    pub fn data_set(&self) -> Option<&str> {
        self.sql.as_deref().map(sql::DataSet::name)
    }

    /// The state of one request's instance: cheap (a few reference counts).
    pub fn instance(&self, request_id: Arc<str>) -> InstanceCapabilities {
        InstanceCapabilities {
            log: self.log.instance(request_id),
            sql: sql::SqlInstance::new(self.sql.clone(), self.host_calls.clone()),
            kv: kv::KvInstance::new(self.kv.clone(), self.host_calls.clone()),
            tokens: tokens::TokensInstance::new(self.tokens.clone(), self.host_calls.clone()),
            passwords: passwords::PasswordsInstance::new(
                self.passwords.clone(),
                self.host_calls.clone(),
            ),
            outbound_http: self.outbound_http.instance(),
        }
    }
}

/// One request's capability state, held in its store.
#[derive(Debug)]
pub struct InstanceCapabilities {
    pub log: log::LogInstance,
    pub sql: sql::SqlInstance,
    pub kv: kv::KvInstance,
    pub tokens: tokens::TokensInstance,
    pub passwords: passwords::PasswordsInstance,
    /// The `wasi:http` hooks of a standard component's store (unused by Plinth-world ones).
    pub outbound_http: outbound_http::OutboundInstance,
}

/// Store data that holds an [`InstanceCapabilities`] (the runtime's `InstanceState`).
pub trait CapabilityView: Send + 'static {
    fn capabilities(&mut self) -> &mut InstanceCapabilities;
}

/// One capability interface: its name, when it is granted, how it is linked.
pub struct Descriptor<T: 'static> {
    /// The interface name in `plinth:plugin`, e.g. `sql`.
    pub interface: &'static str,
    pub granted: fn(&Grants) -> bool,
    pub link: fn(&mut Linker<T>) -> wasmtime::Result<()>,
}

impl<T> std::fmt::Debug for Descriptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Descriptor")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

/// Every capability interface the host provides.
pub fn descriptors<T: CapabilityView>() -> [Descriptor<T>; 5] {
    [
        log::descriptor(),
        sql::descriptor(),
        kv::descriptor(),
        tokens::descriptor(),
        passwords::descriptor(),
    ]
}

/// The interfaces `grants` allow a component to import.
pub fn granted_interfaces<T: CapabilityView>(grants: &Grants) -> Vec<&'static str> {
    descriptors::<T>()
        .iter()
        .filter(|d| (d.granted)(grants))
        .map(|d| d.interface)
        .collect()
}

/// Adds the granted interfaces to `linker`; nothing else is linked.
pub fn link_granted<T: CapabilityView>(
    linker: &mut Linker<T>,
    grants: &Grants,
) -> anyhow::Result<()> {
    for descriptor in descriptors::<T>() {
        if (descriptor.granted)(grants) {
            (descriptor.link)(linker)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("linking `{}`", descriptor.interface))?;
        }
    }
    Ok(())
}
