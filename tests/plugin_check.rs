//! `plinth check DIR`: a plugin directory checked offline, as a host would load it, every
//! problem printed and the exit code saying whether a host would take it.

use std::path::Path;
use std::process::Command;

use plinth_tests::{PluginsDir, TestHost, plinth_bin};

/// Runs `plinth check` with `args`; the exit code and what it printed.
fn check(args: &[&Path]) -> (Option<i32>, String) {
    let output = Command::new(plinth_bin())
        .arg("check")
        .args(args)
        .env_remove("PLUGINS_POLICY")
        .output()
        .expect("running plinth check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn a_plugin_a_host_would_load_passes() {
    let deployed = PluginsDir::with(&["auth", "users", "hello"]);
    for name in ["auth", "users", "hello"] {
        let dir = deployed.path().join(name);
        let (code, text) = check(&[&dir, Path::new("--plugins-dir"), deployed.path()]);
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains(&format!("{name} 1.0.0: ok")), "{text}");
    }
}

#[test]
fn every_problem_is_named_and_the_exit_code_says_so() {
    let deployed = PluginsDir::with(&["auth", "users", "hello"]);
    let candidates = PluginsDir::new();
    // A second greeter: a route `hello` already serves, and auth's component (which imports
    // capabilities its manifest does not grant).
    let dir = candidates.deploy_as("hello", "greeter", |manifest| {
        manifest
            .replace("name = \"hello\"", "name = \"greeter\"")
            .replace("operation_id = \"echo\"", "operation_id = \"greeter_echo\"")
            .replace("/echo", "/greeter/echo")
    });
    std::fs::copy(
        deployed.path().join("auth/auth.wasm"),
        dir.join("hello.wasm"),
    )
    .expect("copy");

    let (code, text) = check(&[&dir, Path::new("--plugins-dir"), deployed.path()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("greeter 1.0.0: 2 problem(s)"), "{text}");
    assert!(
        text.contains("does not grant `sql`"),
        "the ungranted import: {text}"
    );
    assert!(
        text.contains("route conflict: GET /hello/{name} is claimed by plugin `greeter`")
            && text.contains("and plugin `hello`"),
        "the conflict: {text}"
    );
    // Alone, its routes conflict with nothing.
    let (code, text) = check(&[&dir]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("1 problem(s)"), "{text}");

    // A broken description stops at the manifest, with the reason.
    let broken = candidates.deploy_as("hello", "broken", |manifest| {
        manifest.replace("params.name = {", "params.nom = {")
    });
    let (code, text) = check(&[&broken]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no `{nom}` segment"), "{text}");
}

#[test]
fn grants_are_checked_against_the_policy_given() {
    let deployed = PluginsDir::with(&["auth"]);
    let policy = deployed.path().join("strict-policy.toml");
    std::fs::write(&policy, "[default]\nkv = false\ntokens = []\n").expect("write policy");
    let (code, text) = check(&[
        &deployed.path().join("auth"),
        Path::new("--policy"),
        &policy,
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("grants"), "{text}");

    let (code, text) = check(&[Path::new("/nonexistent/plugin")]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot read"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_checks_then_copies_into_a_running_hosts_directory() {
    let deployed = PluginsDir::new();
    let host = plinth_tests::TestHost::start(&deployed);
    assert_eq!(host.get("/hello/ana").await.status(), 404);
    let built = plinth_tests::built_plugin("hello");
    let deploy = |dir: &Path| {
        Command::new(plinth_bin())
            .arg("deploy")
            .arg(dir)
            .arg("--plugins-dir")
            .arg(deployed.path())
            .env_remove("PLUGINS_POLICY")
            .output()
            .expect("running plinth deploy")
    };

    // A plugin a host would refuse is not copied at all.
    let candidates = PluginsDir::new();
    let broken = candidates.deploy_as("hello", "broken", |manifest| {
        manifest.replace("params.name = {", "params.nom = {")
    });
    let output = deploy(&broken);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no `{nom}` segment"));
    assert!(
        std::fs::read_dir(deployed.path())
            .expect("dir")
            .next()
            .is_none()
    );

    // A good one lands whole, and the watching host serves it.
    let output = deploy(&built);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("copied into"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while host.get("/hello/ana").await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not served after deploy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let names: Vec<String> = std::fs::read_dir(deployed.path().join("hello"))
        .expect("deployed dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(!names.iter().any(|n| n.contains("deploying")), "{names:?}");
}

#[tokio::test]
async fn a_check_with_the_hosts_cache_leaves_the_host_nothing_to_compile() {
    let cache = tempfile::tempdir().expect("cache dir");
    let plugins = PluginsDir::with(&["hello"]);
    let dir = plugins.path().join("hello");
    let (code, text) = check(&[&dir, Path::new("--cache-dir"), cache.path()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        std::fs::read_dir(cache.path()).expect("cache").count() > 0,
        "the check kept nothing"
    );

    let host = TestHost::builder()
        .env("PLUGIN_CACHE_DIR", cache.path().display().to_string())
        .start(&plugins);
    let ready = host.wait_for_log(|l| l["message"] == "plugins ready");
    assert_eq!(ready["from_cache"], 1, "{ready}");
    assert_eq!(ready["compiled"], 0, "{ready}");
    assert_eq!(host.get("/hello/ana").await.status(), 200);
}
