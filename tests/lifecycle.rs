//! Start-up refuses bad plugin directories with the file named; shutdown is graceful.

use std::time::{Duration, Instant};

use plinth_tests::{PluginsDir, TestHost};

#[tokio::test]
async fn the_chosen_port_is_logged() {
    let plugins = PluginsDir::new();
    let host = TestHost::start(&plugins);
    // TestHost found the address in the "listening" line; it must really serve there.
    assert_ne!(host.addr.port(), 0);
    assert_eq!(host.get("/health").await.status(), 200);
}

#[test]
fn an_unknown_manifest_key_refuses_start_naming_file_and_key() {
    let plugins = PluginsDir::with(&["hello"]);
    let manifest = plugins.path().join("hello/plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, format!("{text}\n[limits]\nmemroy_mb = 8\n")).expect("write");
    // (The [limits] table appears twice now; make it an unknown key instead.)
    std::fs::write(
        &manifest,
        text.replace("memory_mb = 16", "memory_mb = 16\nmemroy_mb = 8"),
    )
    .expect("write");
    let (status, output) = TestHost::builder().start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(output.contains(&manifest.display().to_string()), "{output}");
    assert!(output.contains("memroy_mb"), "{output}");
}

#[test]
fn a_malformed_manifest_refuses_start_naming_the_file() {
    let plugins = PluginsDir::new();
    let manifest = plugins.write_manifest("broken", "name = \"broken\"\nversion = [");
    let (status, output) = TestHost::builder().start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(output.contains(&manifest.display().to_string()), "{output}");
}

#[test]
fn a_missing_component_refuses_start_naming_it() {
    let plugins = PluginsDir::new();
    plugins.write_manifest(
        "ghost",
        "name = \"ghost\"\nversion = \"1\"\ncomponent = \"ghost.wasm\"\n",
    );
    let (status, output) = TestHost::builder().start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(output.contains("ghost.wasm"), "{output}");
}

#[test]
fn a_route_conflict_refuses_start_naming_both_manifests() {
    let plugins = PluginsDir::with(&["hello"]);
    // A second copy of hello under another name claims the same routes.
    let copy = plugins.deploy_as("hello", "hello-copy", |m| {
        m.replace("name = \"hello\"", "name = \"hello-copy\"")
    });
    let (status, output) = TestHost::builder().start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(output.contains("route conflict"), "{output}");
    assert!(
        output.contains(
            &plugins
                .path()
                .join("hello/plugin.toml")
                .display()
                .to_string()
        ),
        "{output}"
    );
    assert!(
        output.contains(&copy.join("plugin.toml").display().to_string()),
        "{output}"
    );
}

#[test]
fn overlapping_patterns_refuse_start() {
    let plugins = PluginsDir::with(&["hello"]);
    // `/hello/{who}` cannot be told apart from hello's `/hello/{name}`.
    plugins.deploy_as("trap", "trap", |m| {
        m.replace("path = \"/trap\"\n", "path = \"/hello/{who}\"\n")
    });
    let (status, output) = TestHost::builder().start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(output.contains("route conflict"), "{output}");
    assert!(output.contains("trap/plugin.toml"), "{output}");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let plugins = PluginsDir::new();
    plugins.deploy_as("spin", "spin", |m| {
        m.replace("timeout_ms = 300", "timeout_ms = 5000")
    });
    let mut host = TestHost::start(&plugins);

    let client = host.client.clone();
    let url = host.url("/spin/sleep/1200");
    let in_flight = tokio::spawn(async move {
        let response = client.get(url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    host.terminate();

    // New connections are refused soon after the signal...
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = reqwest::Client::new()
        .get(host.url("/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "a new request was accepted after SIGTERM");

    // ...while the in-flight one completes normally.
    let (status, body) = in_flight.await.expect("join").expect("in-flight request");
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["slept_ms"], 1200);

    let exit = host.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "exit status {exit}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
}
