//! `plinth build [DIR]`: a plugin's sources → a plugin directory a host loads.
//!
//! The component is built by the plugin's own toolchain: a Rust crate (`Cargo.toml`) with
//! `cargo build --release --target wasm32-wasip2`, a Python plugin (`app.py`, with the
//! contract in `wit/`) with componentize-py and a JavaScript one (`app.js`) with
//! componentize-js, both against the `plugin-kv` world. The plugin
//! directory is then laid out the way `PLUGINS_DIR` holds it: `plugin.toml`, the component
//! under the name the manifest gives it, the schemas file it names, and the data set's
//! migrations (the plugin's own `migrations/`, else the nearest `migrations/<data set>/`
//! above it, as Plinth's own `auth` and `users` ship the `accounts` data set's).
//!
//! The result is what `plinth check` and `plinth deploy` take, and what the test harness
//! (`plinth-harness`) loads into an in-process host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use super::manifest::Manifest;

/// Builds the plugin whose sources are in `source` and lays it out as
/// `<out_parent>/<name>/` (replacing what was there). `out_parent` defaults to the build's
/// target directory's `plinth/`. Returns the plugin directory.
pub fn build(source: &Path, out_parent: Option<&Path>) -> anyhow::Result<PathBuf> {
    let located = Manifest::load(source)?;
    let manifest = &located.manifest;
    let (component, target_dir) = if source.join("Cargo.toml").is_file() {
        let component = cargo_build(source)?;
        // <target>/wasm32-wasip2/release/<crate>.wasm
        let target_dir = component.ancestors().nth(3).map(Path::to_path_buf);
        (component, target_dir)
    } else if source.join("app.py").is_file() || source.join("app.js").is_file() {
        let scratch = source.join("target");
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let component = if source.join("app.py").is_file() {
            componentize_py(source, &scratch)?
        } else {
            componentize_js(source, &scratch)?
        };
        (component, Some(scratch))
    } else {
        bail!(
            "{}: no Cargo.toml (Rust), app.py (Python) or app.js (JavaScript) to build from; \
             build the component \
             yourself, put it next to plugin.toml as `{}`, and check or deploy that directory",
            source.display(),
            manifest.component
        );
    };

    let out_parent = match (out_parent, target_dir) {
        (Some(parent), _) => parent.to_path_buf(),
        (None, Some(target)) => target.join("plinth"),
        (None, None) => source.join("target/plinth"),
    };
    let out = std::path::absolute(out_parent.join(&manifest.name))?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let copy = |from: &Path, name: &str| -> anyhow::Result<()> {
        std::fs::copy(from, out.join(name))
            .with_context(|| format!("cannot copy {} into {}", from.display(), out.display()))?;
        Ok(())
    };
    copy(&component, &manifest.component)?;
    if let Some(schemas) = &manifest.schemas {
        copy(&source.join(schemas), schemas)?;
    }
    if let Some(migrations) = migrations_of(source, manifest.capabilities.data_set()) {
        super::check::copy_tree(&migrations, &out.join("migrations"))?;
    }
    copy(&located.manifest_path, "plugin.toml")?;
    Ok(out)
}

/// The plugin's own `migrations/`, else the nearest `migrations/<data set>/` in a directory
/// above it (a data set shared by several plugins keeps its migrations in one place).
fn migrations_of(source: &Path, data_set: Option<&str>) -> Option<PathBuf> {
    let own = source.join("migrations");
    if own.is_dir() {
        return Some(own);
    }
    let data_set = data_set?;
    let source = std::path::absolute(source).ok()?;
    source
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("migrations").join(data_set))
        .find(|dir| dir.is_dir())
}

/// `cargo build --release --target wasm32-wasip2` for the crate in `source`; the path of
/// the component cargo reports it built.
fn cargo_build(source: &Path) -> anyhow::Result<PathBuf> {
    let manifest_path = std::path::absolute(source.join("Cargo.toml"))?;
    // Under `cargo test` (the harness), the cargo that runs the test.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest_path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    ensure!(
        output.status.success(),
        "cargo build failed for {} (above); if it says the target may not be installed: \
         rustup target add wasm32-wasip2",
        manifest_path.display()
    );
    let mut component = None;
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let is_this_cdylib = message["reason"] == "compiler-artifact"
            && message["manifest_path"].as_str().map(Path::new) == Some(&manifest_path)
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if is_this_cdylib {
            component = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from);
        }
    }
    component.with_context(|| {
        format!(
            "cargo built no component for {}: a plugin crate has `crate-type = [\"cdylib\"]`",
            manifest_path.display()
        )
    })
}

/// componentize-py (from PATH, or `COMPONENTIZE_PY`) against `wit/`'s `plugin-kv` world.
fn componentize_py(source: &Path, scratch: &Path) -> anyhow::Result<PathBuf> {
    let tool = std::env::var_os("COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into());
    let component = scratch.join("component.wasm");
    let status = Command::new(&tool)
        .arg("-d")
        .arg(source.join("wit"))
        .args(["-w", "plugin-kv", "componentize", "-p"])
        .arg(source)
        .arg("app")
        .arg("-o")
        .arg(&component)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| {
            format!(
                "cannot run {}: pip install componentize-py==0.25.1 (or set COMPONENTIZE_PY)",
                tool.to_string_lossy()
            )
        })?;
    ensure!(
        status.success(),
        "componentize-py failed for {} (above)",
        source.display()
    );
    Ok(component)
}

/// componentize-js (from PATH, or `COMPONENTIZE_JS`) against `wit/`'s `plugin-kv` world,
/// without the `wasi:http` features a plugin cannot use. Run in the plugin's directory:
/// its WIT loader reads only paths under the working directory.
fn componentize_js(source: &Path, scratch: &Path) -> anyhow::Result<PathBuf> {
    let tool = std::env::var_os("COMPONENTIZE_JS").unwrap_or_else(|| "componentize-js".into());
    let component = std::path::absolute(scratch.join("component.wasm"))?;
    let status = Command::new(&tool)
        .args([
            "app.js",
            "--wit",
            "wit",
            "--world-name",
            "plugin-kv",
            "--disable",
            "http",
            "fetch-event",
            "-o",
        ])
        .arg(&component)
        .current_dir(source)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| {
            format!(
                "cannot run {}: npm install -g @bytecodealliance/componentize-js@0.23.0 \
                 @bytecodealliance/preview2-shim@0.17.4 (or set COMPONENTIZE_JS)",
                tool.to_string_lossy()
            )
        })?;
    ensure!(
        status.success(),
        "componentize-js failed for {} (above)",
        source.display()
    );
    Ok(component)
}
