//! Changes in PLUGINS_DIR are applied while the host runs: new directories add plugins,
//! removed ones retire their routes, changed ones are rebuilt — and a broken change leaves
//! the serving version alone.

use std::time::{Duration, Instant};

use plinth_tests::{PluginsDir, TestHost};

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_directories_come_and_go_at_runtime() {
    let plugins = PluginsDir::with(&["hello"]);
    let host = TestHost::start(&plugins);
    assert_eq!(host.get("/trap/ok").await.status(), 404);

    let added_at = Instant::now();
    let trap_dir = plugins.deploy("trap");
    eventually("adding trap", async || {
        host.get("/trap/ok").await.status() == 200
    })
    .await;
    let added_after = added_at.elapsed();
    // Debounce plus one compilation; generous for a loaded CI machine.
    assert!(added_after < Duration::from_secs(5), "took {added_after:?}");

    std::fs::remove_dir_all(&trap_dir).expect("removing trap");
    eventually("removing trap", async || {
        host.get("/trap/ok").await.status() == 404
    })
    .await;
    // The other plugin never stopped serving.
    assert_eq!(host.get("/hello/x").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_plugin_is_rebuilt_and_a_broken_change_is_refused() {
    let plugins = PluginsDir::with(&["hello", "trap"]);
    let host = TestHost::start(&plugins);
    let dir = plugins.path().join("trap");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).expect("manifest");

    // Move the trapping route: the old path is gone (the host's 404), the new one reaches
    // the plugin (which traps there: 500).
    assert_eq!(host.get("/trap").await.status(), 500);
    std::fs::write(
        dir.join("plugin.toml"),
        manifest.replace("path = \"/trap\"\n", "path = \"/trap/boom\"\n"),
    )
    .expect("write");
    eventually("the moved route", async || {
        host.get("/trap").await.status() == 404
    })
    .await;
    assert_eq!(host.get("/trap/boom").await.status(), 500);
    assert_eq!(host.get("/trap/ok").await.status(), 200);

    // Garbage bytes: refused, the current version keeps answering.
    std::fs::write(dir.join("trap.wasm"), b"garbage").expect("write");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(host.get("/trap/ok").await.status(), 200);
    host.wait_for_log(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("change refused"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_real_changes_reload() {
    let plugins = PluginsDir::with(&["hello"]);
    let host = TestHost::start(&plugins);
    let swaps = || {
        host.json_logs()
            .iter()
            .filter(|l| l["message"] == "plugin version swapped in")
            .count()
    };
    let dir = plugins.path().join("hello");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).expect("manifest");

    // One real change: one swap, and loading it (which reads the files) starts no other.
    std::fs::write(
        dir.join("plugin.toml"),
        manifest.replace("version = \"1.0.0\"", "version = \"1.0.1\""),
    )
    .expect("write");
    host.wait_for_log(|l| l["message"] == "plugin version swapped in");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(swaps(), 1, "reloads without a change");

    // Files rewritten with the same bytes: nothing to reload.
    let component = std::fs::read(dir.join("hello.wasm")).expect("component");
    std::fs::write(dir.join("hello.wasm"), component).expect("write");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(swaps(), 1, "an unchanged component was reloaded");
    assert_eq!(host.get("/hello/x").await.status(), 200);
}
