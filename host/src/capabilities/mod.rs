//! Capabilities: what a plugin may ask of the host, one module per WIT interface.
//!
//! Each module owns its configuration, its shared state and its WIT `Host` impl:
//! [`log`], [`sql`] (sqlx: SQLite or PostgreSQL), [`kv`] (in-process or Redis), [`tokens`]
//! (JWTs; the key stays here), [`passwords`] (argon2id on a bounded blocking pool). Only
//! these modules touch sqlx, redis or secrets.
//!
//! [`link_granted`] links exactly what a manifest grants; a component importing anything
//! else is refused at load time (see `plugins::LoadedPlugin::load`).

pub mod bootstrap;
pub mod kv;
pub mod log;
pub mod passwords;
pub mod sql;
pub mod tokens;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::plinth::plugin as wit;
use crate::config::Config;
use crate::plugins::manifest::Grants;
use crate::plugins::runtime::InstanceState;

/// The host services behind the capability interfaces, shared by every instance.
#[derive(Debug)]
pub struct Capabilities {
    pub database: sql::Database,
    pub kv: kv::KvStore,
    pub tokens: tokens::TokenService,
    pub passwords: passwords::PasswordService,
    /// Prefix of every key the host writes to the key-value store.
    pub key_prefix: String,
}

impl Capabilities {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let database = sql::Database::connect(&config.sql).await?;
        let kv = kv::KvStore::connect(config.redis_url.as_ref().map(|url| url.0.as_str())).await?;
        let tokens = tokens::TokenService::new(&config.tokens, kv.clone(), &config.key_prefix);
        // Leave a core for serving requests: a login flood must not stall everything else.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let passwords =
            passwords::PasswordService::new(cores.saturating_sub(1).max(1), 256).await?;
        Ok(Self {
            database,
            kv,
            tokens,
            passwords,
            key_prefix: config.key_prefix.clone(),
        })
    }
}

/// The `plinth:plugin` interfaces a manifest's grants allow a component to import.
pub fn granted_interfaces(grants: &Grants) -> Vec<&'static str> {
    let mut interfaces = vec![log::INTERFACE];
    if grants.sql {
        interfaces.push(sql::INTERFACE);
    }
    if grants.kv {
        interfaces.push(kv::INTERFACE);
    }
    if !grants.tokens.is_empty() {
        interfaces.push(tokens::INTERFACE);
    }
    if grants.passwords {
        interfaces.push(passwords::INTERFACE);
    }
    interfaces
}

/// Adds the granted capability interfaces to `linker`; nothing else is linked.
pub fn link_granted(linker: &mut Linker<InstanceState>, grants: &Grants) -> anyhow::Result<()> {
    wit::log::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    if grants.sql {
        wit::sql::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    }
    if grants.kv {
        wit::kv::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    }
    if !grants.tokens.is_empty() {
        wit::tokens::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    }
    if grants.passwords {
        wit::passwords::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    }
    Ok(())
}
