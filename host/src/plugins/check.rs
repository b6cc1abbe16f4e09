//! `plinth check DIR`: what a host would refuse about a plugin directory, found offline.
//!
//! It runs the code a host loads plugins with, short of what needs a backend: the manifest
//! (strict, with its route descriptions and schemas file), the operator policy, the
//! component (compiled by an engine with the host's settings), its imports against its
//! grants, the link, and its routes placed next to the plugins of a `PLUGINS_DIR` (route
//! and operation id conflicts). Not run: the data set's migrations and the smoke call at
//! load, which need the data set's database.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;

use super::manifest::{LocatedManifest, Manifest, RouteSpec};
use super::routes::{RouteOwner, place};
use super::runtime::PluginEngine;
use crate::capabilities::policy::Policy;
use crate::telemetry::metrics::Metrics;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Checked {
    /// `name version`, once the manifest could be read.
    pub plugin: Option<String>,
    pub routes: usize,
    /// Every problem, each naming its file; empty: a host would load it.
    pub problems: Vec<String>,
}

impl RouteOwner for LocatedManifest {
    fn name(&self) -> &str {
        &self.manifest.name
    }
    fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }
    fn routes(&self) -> &[RouteSpec] {
        &self.manifest.routes
    }
}

/// Checks the plugin in `dir` against `policy`, and, with `neighbours` (a `PLUGINS_DIR`),
/// its routes against theirs (a plugin there of the same name is the version this one
/// would replace, and is left out). With `cache_dir` (the hosts' `PLUGIN_CACHE_DIR`), the
/// compiled component is kept there, so a host loading it next compiles nothing.
pub fn check(
    dir: &Path,
    policy: &Policy,
    neighbours: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Checked {
    let mut checked = Checked::default();
    let located = match Manifest::load(dir) {
        Ok(located) => located,
        Err(err) => {
            checked.problems.push(format!("{err:#}"));
            return checked;
        }
    };
    let manifest = &located.manifest;
    let manifest_path = located.manifest_path.display();
    checked.plugin = Some(format!("{} {}", manifest.name, manifest.version));
    checked.routes = manifest.routes.len();

    if let Err(err) = policy.check(&manifest.name, &manifest.capabilities) {
        checked
            .problems
            .push(format!("{manifest_path}: grants: {err:#}"));
    }
    if let Err(problem) = check_component(&located, cache_dir) {
        checked.problems.push(problem);
    }
    if let Some(neighbours) = neighbours {
        match neighbour_manifests(neighbours, dir, &manifest.name) {
            Ok(mut owners) => {
                owners.push(located);
                owners.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
                if let Err(err) = place(&owners) {
                    checked.problems.push(format!("{err:#}"));
                }
            }
            Err(err) => checked.problems.push(format!("{err:#}")),
        }
    }
    checked
}

/// Compiles the component, checks its imports against the grants, and links it.
fn check_component(located: &LocatedManifest, cache_dir: Option<&Path>) -> Result<(), String> {
    let component_path = located.component_path.display();
    let manifest_path = located.manifest_path.display();
    let engine = Metrics::new(false)
        // One component, compiled and linked, never instantiated: a pool of one will do.
        .and_then(|metrics| PluginEngine::new(cache_dir, 1, Arc::new(metrics)))
        .map_err(|err| format!("cannot start a wasm engine: {err:#}"))?;
    let bytes = std::fs::read(&located.component_path)
        .map_err(|err| format!("{component_path}: cannot read component: {err}"))?;
    let component = Component::new(engine.engine(), &bytes)
        .map_err(|err| format!("{component_path}: not a loadable component: {err:#}"))?;
    super::check_imports(&engine, &component, &located.manifest)
        .map_err(|err| format!("{manifest_path}: imports beyond its grants: {err:#}"))?;
    super::link(&engine, &component, &located.manifest)
        .map_err(|err| format!("{component_path}: cannot be linked: {err:#}"))?;
    Ok(())
}

/// The manifests of the plugins in `plugins_dir`, but `dir` itself and any plugin named
/// `name`. One that does not parse is reported: a host would refuse to start with it.
fn neighbour_manifests(
    plugins_dir: &Path,
    dir: &Path,
    name: &str,
) -> anyhow::Result<Vec<LocatedManifest>> {
    let this = std::fs::canonicalize(dir).ok();
    let mut found = Vec::new();
    let entries = std::fs::read_dir(plugins_dir).map_err(|err| {
        anyhow::anyhow!(
            "{}: cannot read the plugins directory: {err}",
            plugins_dir.display()
        )
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join("plugin.toml").is_file() || std::fs::canonicalize(&path).ok() == this {
            continue;
        }
        let other = Manifest::load(&path)?;
        if other.manifest.name != name {
            found.push(other);
        }
    }
    Ok(found)
}

/// `plinth deploy`: copies the plugin in `dir` into `plugins_dir/<name>/` the way a running
/// host expects (each file written under a temporary name and renamed into place, the
/// component, schemas and migrations before the manifest), so a watching host never reads
/// half a file. Returns the directory written; the caller checks the plugin first.
pub fn deploy(dir: &Path, plugins_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let located = Manifest::load(dir)?;
    let manifest = &located.manifest;
    let target = plugins_dir.join(&manifest.name);
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let place = |from: &Path, name: &str| -> anyhow::Result<()> {
        let temporary = target.join(format!(".{name}.deploying"));
        std::fs::copy(from, &temporary)
            .with_context(|| format!("cannot copy {} to {}", from.display(), target.display()))?;
        std::fs::rename(&temporary, target.join(name))
            .with_context(|| format!("cannot move {name} into {}", target.display()))?;
        Ok(())
    };
    place(&located.component_path, &manifest.component)?;
    if let Some(schemas) = &manifest.schemas {
        place(&dir.join(schemas), schemas)?;
    }
    let migrations = dir.join("migrations");
    if migrations.is_dir() {
        let temporary = target.join(".migrations.deploying");
        let _ = std::fs::remove_dir_all(&temporary);
        copy_tree(&migrations, &temporary)?;
        let _ = std::fs::remove_dir_all(target.join("migrations"));
        std::fs::rename(&temporary, target.join("migrations"))
            .with_context(|| format!("cannot move migrations into {}", target.display()))?;
    }
    place(&located.manifest_path, "plugin.toml")?;
    Ok(target)
}

pub(super) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}
