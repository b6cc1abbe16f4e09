//! Hosts sharing a Redis: an admin reload sent to one host is applied by the others, and
//! `GET /admin/fleet` shows which version each host serves and when it last reported.

use std::path::Path;
use std::time::{Duration, Instant};

use plinth_tests::{Backend, PluginsDir, TestHost, built_plugin};

/// Puts the built `source` plugin's manifest and component into `dir`, each by rename.
fn install_files(dir: &Path, source: &str) {
    let source = built_plugin(source);
    for file in ["versioned.wasm", "plugin.toml"] {
        let staging = dir.join(format!(".{file}.staging"));
        std::fs::copy(source.join(file), &staging).expect("staging a file");
        std::fs::rename(&staging, dir.join(file)).expect("renaming a file into place");
    }
}

async fn served_version(host: &TestHost) -> String {
    host.get("/versioned")
        .await
        .text()
        .await
        .unwrap_or_default()
}

/// The version of `versioned` each host reports in `host`'s fleet view, by host id.
async fn fleet_versions(host: &TestHost, token: &str) -> Vec<(String, bool, String)> {
    let view = host.get_as("/admin/fleet", token).await;
    view.expect(200, None);
    view.body["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .map(|h| {
                    let version = h["plugins"]
                        .as_array()
                        .and_then(|ps| ps.iter().find(|p| p["name"] == "versioned"))
                        .and_then(|p| p["version"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    (
                        h["host"].as_str().unwrap_or_default().to_owned(),
                        h["this_host"] == true,
                        version,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_admin_reload_on_one_host_is_applied_by_the_other() {
    let backend = Backend::postgres();
    let plugins = PluginsDir::with(&["auth", "users", "versioned"]);
    // Not watching the directory: only the announcement can make the second host reload.
    let start = |id: &str| {
        TestHost::builder()
            .backend(&backend)
            .with_root()
            .env("WATCH_PLUGINS", "false")
            .env("HOST_ID", id)
            .start(&plugins)
    };
    let a = start("host-a");
    let b = start("host-b");
    assert_eq!(served_version(&a).await, r#"{"version":"v1"}"#);
    assert_eq!(served_version(&b).await, r#"{"version":"v1"}"#);

    install_files(&plugins.path().join("versioned"), "versioned-v2");
    let root = a.root_tokens().await;
    a.admin_reload("versioned", &root.access)
        .await
        .expect(200, None);
    assert_eq!(served_version(&a).await, r#"{"version":"v2"}"#);

    let announced = Instant::now();
    while served_version(&b).await != r#"{"version":"v2"}"# {
        assert!(
            announced.elapsed() < Duration::from_secs(2),
            "the other host still serves v1 two seconds after the reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each host reports within `REPORT_EVERY` (2 s) of a change: both show 2.0.0.
    let expected = vec![
        ("host-a".to_owned(), false, "2.0.0".to_owned()),
        ("host-b".to_owned(), true, "2.0.0".to_owned()),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = fleet_versions(&b, &root.access).await;
        if seen == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fleet view from host-b: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_redis_the_fleet_is_this_host() {
    let plugins = PluginsDir::with(&["auth", "users", "versioned"]);
    let host = TestHost::builder()
        .with_root()
        .env("HOST_ID", "alone")
        .start(&plugins);
    let root = host.root_tokens().await;
    assert_eq!(
        fleet_versions(&host, &root.access).await,
        vec![("alone".to_owned(), true, "1.0.0".to_owned())]
    );
}

#[tokio::test]
async fn a_host_that_refuses_an_announced_version_says_so_in_the_view() {
    let backend = Backend::postgres();
    let (dir_a, dir_b) = (
        PluginsDir::with(&["auth", "users", "versioned"]),
        PluginsDir::with(&["auth", "users", "versioned"]),
    );
    let start = |id: &str, plugins: &PluginsDir| {
        TestHost::builder()
            .backend(&backend)
            .with_root()
            .env("WATCH_PLUGINS", "false")
            .env("HOST_ID", id)
            .start(plugins)
    };
    let a = start("host-a", &dir_a);
    let b = start("host-b", &dir_b);
    install_files(&dir_a.path().join("versioned"), "versioned-v2");
    // Host b was given a broken component.
    std::fs::write(
        dir_b.path().join("versioned/versioned.wasm"),
        b"not a component",
    )
    .expect("writing a broken component");
    let root = a.root_tokens().await;
    a.admin_reload("versioned", &root.access)
        .await
        .expect(200, None);

    let deadline = Instant::now() + Duration::from_secs(5);
    let refusal = loop {
        let view = a.get_as("/admin/fleet", &root.access).await;
        view.expect(200, None);
        let refused = view.body["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["host"] == "host-b"))
            .and_then(|h| h["plugins"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == "versioned"))
            .filter(|p| p["refused"].is_string())
            .cloned();
        if let Some(refused) = refused {
            break refused;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal from host-b: {}",
            view.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refusal["version"], "1.0.0",
        "host-b keeps serving v1: {refusal}"
    );
    assert!(
        refusal["refused"]
            .as_str()
            .is_some_and(|r| r.contains("versioned.wasm")),
        "{refusal}"
    );
    assert_eq!(served_version(&b).await, r#"{"version":"v1"}"#);
    assert_eq!(served_version(&a).await, r#"{"version":"v2"}"#);
}
