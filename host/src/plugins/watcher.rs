//! Watches `PLUGINS_DIR` and applies changes: a changed manifest or component reloads that
//! plugin, a new directory adds one, a removed directory retires its routes.
//!
//! File events arrive in bursts (a copy is several writes, a deploy several files), so
//! they are collected per plugin directory and applied once the directory has been quiet
//! for [`DEBOUNCE`]. All the work happens in [`Registry::sync_dir`], off the request path.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Registry;

/// How long a plugin directory must be quiet before its change is applied.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts watching; the returned watcher must be kept alive.
pub fn watch(registry: Arc<Registry>) -> anyhow::Result<notify::RecommendedWatcher> {
    let root = registry.plugins_dir().to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let events_root = root.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (the host's own, when it loads a plugin) change nothing; reacting to them
        // would reload every plugin forever.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        for path in &event.paths {
            if let Some(dir) = top_level_dir(&events_root, path) {
                let _ = tx.send(dir);
            }
        }
    })
    .context("starting the PLUGINS_DIR watcher")?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .with_context(|| format!("watching PLUGINS_DIR {}", root.display()))?;

    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut dirs = BTreeSet::from([first]);
            // Collect until the burst is over.
            while let Ok(Some(dir)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                dirs.insert(dir);
            }
            for dir in dirs {
                registry.sync_dir(&dir).await;
            }
        }
    });
    Ok(watcher)
}

/// The plugin directory (first component under `root`) that `path` belongs to; hidden
/// entries and temporary files are ignored.
fn top_level_dir(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let ignored = first.starts_with('.') || path.extension().is_some_and(|e| e == "tmp");
    (!ignored).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_their_plugin_directory() {
        let root = Path::new("/srv/plugins");
        assert_eq!(
            top_level_dir(root, Path::new("/srv/plugins/hello/hello.wasm")).as_deref(),
            Some("hello")
        );
        assert_eq!(
            top_level_dir(root, Path::new("/srv/plugins/new")).as_deref(),
            Some("new")
        );
        assert_eq!(
            top_level_dir(root, Path::new("/srv/plugins/hello/x.wasm.tmp")),
            None
        );
        assert_eq!(top_level_dir(root, Path::new("/srv/plugins/.git/x")), None);
        assert_eq!(top_level_dir(root, Path::new("/elsewhere/x")), None);
    }
}
