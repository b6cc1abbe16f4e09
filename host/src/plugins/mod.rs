//! Plugins: manifests, compilation and linking, the route table, and the registry that
//! serves the current table.
//!
//! Loading a plugin is: read `plugin.toml` → check its grants against the operator policy →
//! read the component and hash it → compile → check its imports against its grants → link
//! only the granted capabilities → `instantiate_pre` → prepare its capabilities (its data
//! set, with the plugin's pending migrations applied) → instantiate once (smoke test). All
//! of it happens off the request path; the request path only ever instantiates a ready
//! [`runtime::ReadyComponent`].

pub mod build;
pub mod check;
pub mod description;
pub mod guest_output;
pub mod manifest;
pub mod routes;
pub mod runtime;
pub mod wasi_http;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};

use crate::bindings::PluginPre;
use crate::capabilities::{self, Capabilities};
use manifest::{LocatedManifest, Manifest};
use routes::RouteTable;
use runtime::{Entry, InstanceState, PluginEngine, ReadyComponent};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The WIT package whose interfaces are capabilities (and whose `handler` is the export).
const PLUGIN_PACKAGE: &str = "plinth:plugin/";

/// A plugin ready to serve.
#[derive(Debug)]
pub struct LoadedPlugin {
    pub name: String,
    pub version: String,
    /// SHA-256 of the component bytes, hex.
    pub content_hash: String,
    /// SHA-256 of `plugin.toml` as read, hex: with `content_hash`, tells whether the
    /// files on disk are still this version.
    manifest_hash: String,
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    /// The plugin's directory, where a reload reads it again.
    pub dir: PathBuf,
    pub loaded_at: SystemTime,
    /// The compiled component, kept so an unchanged component is not compiled again.
    compiled: Component,
    pub component: ReadyComponent,
}

impl LoadedPlugin {
    /// Reads, compiles and links the plugin in `dir`. When `previous` (the version now
    /// serving) has the same component bytes, its compiled code is reused: a change to
    /// the manifest alone costs no compilation.
    pub async fn load(
        engine: &PluginEngine,
        capabilities: &Arc<Capabilities>,
        dir: &Path,
        previous: Option<&LoadedPlugin>,
    ) -> anyhow::Result<Self> {
        let LocatedManifest {
            manifest,
            manifest_hash,
            manifest_path,
            component_path,
        } = Manifest::load(dir)?;
        // Before any work: a manifest asking beyond the operator's policy is refused.
        capabilities
            .policy
            .check(&manifest.name, &manifest.capabilities)
            .with_context(|| format!("{}: grants", manifest_path.display()))?;
        let (bytes, content_hash) = {
            let path = component_path.clone();
            // Reading and hashing megabytes: off the async workers.
            tokio::task::spawn_blocking(move || {
                std::fs::read(&path).map(|bytes| {
                    let hash = hex(&Sha256::digest(&bytes));
                    (bytes, hash)
                })
            })
            .await?
            .with_context(|| format!("{}: cannot read component", component_path.display()))?
        };

        let component = match previous.filter(|p| p.content_hash == content_hash) {
            Some(previous) => previous.compiled.clone(),
            None => {
                // Compiling is CPU-bound (milliseconds to seconds): off the async workers.
                let engine_for_compile = engine.engine().clone();
                tokio::task::spawn_blocking(move || Component::new(&engine_for_compile, &bytes))
                    .await?
                    .map_err(anyhow::Error::from)
                    .with_context(|| {
                        format!("{}: not a loadable component", component_path.display())
                    })?
            }
        };

        check_imports(engine, &component, &manifest)
            .with_context(|| format!("{}: imports beyond its grants", manifest_path.display()))?;

        let entry = link(engine, &component, &manifest)
            .with_context(|| format!("{}: cannot be linked", component_path.display()))?;
        let plugin_capabilities = capabilities
            .for_plugin(
                &manifest.name,
                dir,
                &manifest.capabilities,
                manifest.limits.timeout(),
            )
            .await
            .with_context(|| format!("{}: capabilities", manifest_path.display()))?;

        let counters = runtime::PluginCounters::new(
            engine.metrics(),
            &manifest.name,
            &manifest.version,
            &content_hash,
        );
        let plugin = Self {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            content_hash,
            manifest_hash,
            manifest_path,
            dir: dir.to_path_buf(),
            loaded_at: SystemTime::now(),
            compiled: component,
            component: ReadyComponent {
                admission: runtime::Admission::new(&manifest.limits, counters.queued.clone()),
                counters,
                engine: engine.engine().clone(),
                slots: engine.slots(),
                ticker: engine.ticker(),
                heavy_lanes: engine.heavy_lanes(),
                heavy: runtime::HeavyMark::default(),
                holds_threads: runtime::HeavyMark::default(),
                entry,
                plugin_name: Arc::from(manifest.name.as_str()),
                capabilities: plugin_capabilities,
                memory_bytes: manifest.limits.memory_bytes(),
                timeout: manifest.limits.timeout(),
                max_response_bytes: manifest.limits.max_response_bytes(),
                reuse_for: manifest.limits.reuse_instance_for,
                parked: std::sync::Mutex::default(),
                max_parked: engine.max_parked(),
            },
            manifest,
        };
        plugin
            .component
            .smoke_test()
            .await
            .with_context(|| format!("{}: smoke test", plugin.manifest_path.display()))?;
        Ok(plugin)
    }

    /// Whether `dir` still holds exactly this version's manifest and component (a touch,
    /// or an event for a file the plugin does not use, changes nothing).
    fn matches_disk(&self) -> bool {
        let Ok(located) = Manifest::load(&self.dir) else {
            return false;
        };
        located.manifest_hash == self.manifest_hash
            && std::fs::read(&located.component_path)
                .is_ok_and(|bytes| hex(&Sha256::digest(&bytes)) == self.content_hash)
    }
}

/// Refuses a component that imports a capability its manifest does not grant, naming it.
/// WASI imports are linked for every plugin with an empty context (no files, network or
/// environment), so they need no grant.
/// Links `component` with WASI and the capabilities `manifest` grants, nothing else.
/// A standard `wasi:http` component (one exporting `wasi:http/incoming-handler`) also gets
/// `wasi:http` ([`wasi_http`]); a Plinth one must export `plinth:plugin/handler`.
fn link(
    engine: &PluginEngine,
    component: &Component,
    manifest: &Manifest,
) -> anyhow::Result<Entry> {
    let mut linker = Linker::<InstanceState>::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capabilities::link_granted(&mut linker, &manifest.capabilities)?;
    if wasi_http::exports_incoming_handler(engine.engine(), component) {
        anyhow::ensure!(
            manifest.limits.reuse_instance_for == 0,
            "`limits.reuse_instance_for` is for Plinth-world plugins; a wasi:http component \
             gets a fresh instance per request"
        );
        wasi_http::link(&mut linker)?;
        let pre = linker.instantiate_pre(component)?;
        return Ok(Entry::WasiHttp(ProxyPre::new(pre)?));
    }
    anyhow::ensure!(
        manifest.capabilities.outbound_http.is_empty(),
        "`outbound_http` is for standard wasi:http components; this one exports \
         plinth:plugin/handler"
    );
    Ok(Entry::Plinth(
        linker.instantiate_pre(component).and_then(PluginPre::new)?,
    ))
}

fn check_imports(
    engine: &PluginEngine,
    component: &Component,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    let granted = capabilities::granted_interfaces::<InstanceState>(&manifest.capabilities);
    for (name, _) in component.component_type().imports(engine.engine()) {
        if name.starts_with("wasi:") {
            continue;
        }
        let interface = name
            .strip_prefix(PLUGIN_PACKAGE)
            .map(|rest| rest.split('@').next().unwrap_or(rest));
        match interface {
            Some("types") => {}
            Some(interface) if granted.contains(&interface) => {}
            Some(interface) => bail!(
                "the component imports `{name}`, but `[capabilities]` does not grant `{interface}`"
            ),
            None => bail!("the component imports `{name}`, which the host does not provide"),
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads every plugin directory under `dir` (each holding a `plugin.toml`) and builds one
/// route table. Any failure is an error naming the plugin's file.
pub async fn load_all(
    engine: &PluginEngine,
    capabilities: &Arc<Capabilities>,
    dir: &Path,
) -> anyhow::Result<RouteTable> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("PLUGINS_DIR {}: cannot read", dir.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    let mut plugins = Vec::new();
    for entry in entries {
        let path = entry.path();
        if !path.is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if !path.join("plugin.toml").is_file() {
            tracing::warn!(dir = %path.display(), "skipping a directory without plugin.toml");
            continue;
        }
        let plugin = LoadedPlugin::load(engine, capabilities, &path, None).await?;
        if let Some(same) = plugins
            .iter()
            .find(|p: &&Arc<LoadedPlugin>| p.name == plugin.name)
        {
            bail!(
                "{} and {} both name a plugin `{}`",
                same.manifest_path.display(),
                plugin.manifest_path.display(),
                plugin.name
            );
        }
        tracing::info!(
            plugin = %plugin.name,
            version = %plugin.version,
            hash = %&plugin.content_hash[..12],
            routes = plugin.manifest.routes.len(),
            "plugin loaded"
        );
        plugins.push(Arc::new(plugin));
    }
    RouteTable::build(plugins)
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no plugin named `{0}`")]
    Unknown(String),
    /// The new version was refused; the old one keeps serving.
    #[error("{0}")]
    Rejected(String),
}

/// The route table currently serving, and how to replace it.
///
/// Readers take a snapshot per request, so a swap never changes the plugin under a request
/// that has already started. A reload prepares the new version completely (manifest,
/// compile, import check, link, route conflicts against the other plugins) before the one
/// atomic swap; a refused version changes nothing that serves.
#[derive(Debug)]
pub struct Registry {
    table: ArcSwap<RouteTable>,
    engine: PluginEngine,
    capabilities: Arc<Capabilities>,
    plugins_dir: PathBuf,
    /// Serialises reloads, so each builds on the table the previous one installed.
    reloading: tokio::sync::Mutex<()>,
    /// Why the last reload of a plugin was refused; cleared by a successful one.
    last_errors: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Registry {
    pub fn new(
        table: RouteTable,
        engine: PluginEngine,
        capabilities: Arc<Capabilities>,
        plugins_dir: PathBuf,
    ) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            engine,
            capabilities,
            plugins_dir,
            reloading: tokio::sync::Mutex::new(()),
            last_errors: std::sync::Mutex::default(),
        }
    }

    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    pub fn last_error(&self, name: &str) -> Option<String> {
        self.last_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn record(&self, name: &str, error: Option<String>) {
        let mut errors = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(error) => errors.insert(name.to_owned(), error),
            None => errors.remove(name),
        };
    }

    /// Builds plugin `name` again from its directory and swaps it in.
    pub async fn reload(&self, name: &str) -> Result<Arc<LoadedPlugin>, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.snapshot();
        let existing = current.plugins().iter().find(|p| p.name == name);
        let dir = match existing {
            Some(plugin) => plugin.dir.clone(),
            None if is_plain_name(name)
                && self.plugins_dir.join(name).join("plugin.toml").is_file() =>
            {
                self.plugins_dir.join(name)
            }
            None => return Err(ReloadError::Unknown(name.to_owned())),
        };
        self.install(&current, &dir, existing, name)
            .await
            .map_err(ReloadError::Rejected)
    }

    /// Brings the plugin in `PLUGINS_DIR/<dir_name>` in line with the disk: a new
    /// directory adds a plugin, a changed one is rebuilt, a removed one retires its routes.
    /// A refused build changes nothing that serves.
    pub async fn sync_dir(&self, dir_name: &str) {
        let _one_at_a_time = self.reloading.lock().await;
        let dir = self.plugins_dir.join(dir_name);
        let current = self.snapshot();
        let existing = current.plugins().iter().find(|p| p.dir == dir);
        if dir.join("plugin.toml").is_file() {
            if let Some(serving) = existing {
                let candidate = serving.clone();
                // Reads and hashes the files: off the async workers.
                let unchanged = tokio::task::spawn_blocking(move || candidate.matches_disk())
                    .await
                    .unwrap_or(false);
                if unchanged {
                    // Back to the serving version's files: a refusal recorded since is moot.
                    self.record(&serving.name, None);
                    tracing::debug!(plugin = %serving.name, "files unchanged; nothing to reload");
                    return;
                }
            }
            let name = existing.map_or(dir_name, |p| p.name.as_str());
            // A refusal is logged and recorded by `install`.
            let _ = self.install(&current, &dir, existing, name).await;
            return;
        }
        let Some(gone) = existing else { return };
        let rest = current
            .plugins()
            .iter()
            .filter(|p| !Arc::ptr_eq(p, gone))
            .cloned()
            .collect();
        match RouteTable::build(rest) {
            Ok(table) => {
                self.table.store(Arc::new(table));
                self.record(&gone.name, None);
                tracing::info!(plugin = %gone.name, "plugin removed");
            }
            Err(err) => tracing::error!(error = %format!("{err:#}"), "removing a plugin"),
        }
    }

    /// Prepares the plugin in `dir` completely (load, name check, route table with every
    /// other plugin) and only then swaps the table. `existing` is the version it replaces;
    /// `name` is what the plugin is known as (for the name check and `last_error`).
    /// Call with `reloading` held.
    async fn install(
        &self,
        current: &RouteTable,
        dir: &Path,
        existing: Option<&Arc<LoadedPlugin>>,
        name: &str,
    ) -> Result<Arc<LoadedPlugin>, String> {
        let prepared = async {
            let plugin = Arc::new(
                LoadedPlugin::load(
                    &self.engine,
                    &self.capabilities,
                    dir,
                    existing.map(|p| &**p),
                )
                .await?,
            );
            if existing.is_some() && plugin.name != name {
                bail!(
                    "{} renames the plugin `{name}` to `{}`",
                    plugin.manifest_path.display(),
                    plugin.name
                );
            }
            let plugins = current
                .plugins()
                .iter()
                .filter(|p| p.dir != dir && p.name != plugin.name)
                .cloned()
                .chain(std::iter::once(plugin.clone()))
                .collect();
            anyhow::Ok((plugin, RouteTable::build(plugins)?))
        };
        match prepared.await {
            Ok((plugin, table)) => {
                self.table.store(Arc::new(table));
                self.record(&plugin.name, None);
                self.engine
                    .metrics()
                    .plugin_reloads
                    .with_label_values(&[plugin.name.as_str(), "swapped"])
                    .inc();
                tracing::info!(
                    plugin = %plugin.name,
                    version = %plugin.version,
                    hash = %&plugin.content_hash[..12],
                    "plugin version swapped in"
                );
                Ok(plugin)
            }
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::warn!(plugin = %name, %reason, "change refused; the current version keeps serving");
                // The admin API names files relative to PLUGINS_DIR: where the host's
                // files live is the operator's business (the log line above has it).
                let shown = reason.replace(&format!("{}/", self.plugins_dir.display()), "");
                self.record(name, Some(shown.clone()));
                self.engine
                    .metrics()
                    .plugin_reloads
                    .with_label_values(&[name, "refused"])
                    .inc();
                Err(shown)
            }
        }
    }

    pub fn plugins_dir(&self) -> &Path {
        &self.plugins_dir
    }
}

/// A plugin name usable as a directory name (no path tricks from the admin API).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
