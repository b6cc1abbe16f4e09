//! `plinth new`: a project in Rust, Python or JavaScript that, as created and following its README,
//! passes its own test, builds into a component, passes `plinth check`, and serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use plinth_tests::{PluginsDir, TestHost, plinth_bin, repo_root};

fn run(command: &mut Command) -> String {
    let output = command.output().expect("running a command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

fn plinth_new(name: &str, lang: &str, dir: &Path) {
    let text = run(Command::new(plinth_bin())
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(dir));
    assert!(text.contains("README.md"), "{text}");
}

/// `plinth build` in `project` (as its README says), with the workspace's target
/// directory (offline and quick: the checkout's lock file pins what the workspace built);
/// the plugin directory it printed.
fn plinth_build(project: &Path) -> PathBuf {
    let output = Command::new(plinth_bin())
        .arg("build")
        .current_dir(project)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_NET_OFFLINE", "true")
        // scripts/build-plugins.sh installed the pinned componentize-py here.
        .env(
            "COMPONENTIZE_PY",
            target_dir().join("py-venv/bin/componentize-py"),
        )
        // ... and componentize-js here.
        .env(
            "COMPONENTIZE_JS",
            target_dir().join("js-tools/node_modules/.bin/componentize-js"),
        )
        .output()
        .expect("running plinth build");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "plinth build failed:\n{stdout}{stderr}"
    );
    // Its output is the plugin directory (the toolchain's progress goes to stderr).
    let built = PathBuf::from(stdout.trim());
    assert!(built.join("plugin.toml").is_file(), "{stdout}{stderr}");
    built
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// Checks the built plugin directory as a host would, deploys it into a running host's
/// watched `PLUGINS_DIR`, and asks for a greeting once it serves.
async fn check_deploy_and_greet(name: &str, built: &Path) {
    let text = run(Command::new(plinth_bin())
        .arg("check")
        .arg(built)
        .env_remove("PLUGINS_POLICY"));
    assert!(
        text.contains(&format!("{name} 0.1.0: ok (1 routes)")),
        "{text}"
    );

    let plugins = PluginsDir::new();
    let host = TestHost::start(&plugins);
    run(Command::new(plinth_bin())
        .arg("deploy")
        .arg(built)
        .arg("--plugins-dir")
        .arg(plugins.path())
        .env_remove("PLUGINS_POLICY"));
    // The watching host compiles it first: seconds for Rust, tens of seconds for the
    // CPython a Python component carries (on two busy cores).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let response = loop {
        let response = host.get(&format!("/{name}/ana")).await;
        if response.status() != 404 || std::time::Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body, serde_json::json!({"message": "Hello, ana!"}));
    let document: serde_json::Value = host.get("/openapi.json").await.json().await.expect("doc");
    assert_eq!(
        document["paths"][format!("/{name}/{{who}}")]["get"]["operationId"],
        format!("{name}_greet")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_plugin_tests_builds_checks_and_serves() {
    let work = tempfile::tempdir().expect("tempdir");
    let project = work.path().join("greeter_rs");
    plinth_new("greeter_rs", "rust", &project);

    std::fs::copy(repo_root().join("Cargo.lock"), project.join("Cargo.lock")).expect("lock");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Its unit test, and tests/serve.rs: the component in an in-process host (plinth-harness).
    let text = run(Command::new(&cargo)
        .args(["test", "--offline", "--release"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", target_dir()));
    for test in [
        "greets_by_name ... ok",
        "greets_over_http ... ok",
        "the_host_answers_what_the_manifest_does_not_declare ... ok",
    ] {
        assert!(text.contains(test), "{test}: {text}");
    }
    let built = plinth_build(&project);
    check_deploy_and_greet("greeter_rs", &built).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_plugin_tests_builds_checks_and_serves() {
    let work = tempfile::tempdir().expect("tempdir");
    let project = work.path().join("greeter_py");
    plinth_new("greeter_py", "python", &project);

    let text = run(Command::new("python3")
        .arg("test_app.py")
        .current_dir(&project));
    assert!(text.contains("OK"), "{text}");
    let built = plinth_build(&project);
    assert_eq!(built, project.join("target/plinth/greeter_py"));
    check_deploy_and_greet("greeter_py", &built).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_javascript_plugin_tests_builds_checks_and_serves() {
    let work = tempfile::tempdir().expect("tempdir");
    let project = work.path().join("greeter_js");
    plinth_new("greeter_js", "js", &project);

    let text = run(Command::new("node").arg("--test").current_dir(&project));
    assert!(
        text.contains("# pass 1") && text.contains("# fail 0"),
        "{text}"
    );
    let built = plinth_build(&project);
    assert_eq!(built, project.join("target/plinth/greeter_js"));
    check_deploy_and_greet("greeter_js", &built).await;
}

#[test]
fn names_and_existing_directories_are_refused() {
    let work = tempfile::tempdir().expect("tempdir");
    for name in ["Greeter", "1st", "my-plugin", ""] {
        let output = Command::new(plinth_bin())
            .args(["new", name, "--dir"])
            .arg(work.path().join("x"))
            .output()
            .expect("plinth new");
        assert_eq!(output.status.code(), Some(1), "{name}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("a plugin name is"));
    }
    let output = Command::new(plinth_bin())
        .args(["new", "taken", "--dir"])
        .arg(work.path())
        .output()
        .expect("plinth new");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}
