//! `plinth new`: a project in Rust or Python that, as created and following its README,
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

/// Lays out `plugin.toml` and the component as a deployable directory, checks it as a
/// host would, and asks a host serving it for a greeting.
async fn deploy_and_greet(name: &str, project: &Path, component: &Path) {
    let plugins = PluginsDir::new();
    let dir = plugins.path().join(name);
    std::fs::create_dir_all(&dir).expect("plugin dir");
    std::fs::copy(project.join("plugin.toml"), dir.join("plugin.toml")).expect("manifest");
    std::fs::copy(component, dir.join(format!("{name}.wasm"))).expect("component");

    let text = run(Command::new(plinth_bin())
        .arg("check")
        .arg(&dir)
        .env_remove("PLUGINS_POLICY"));
    assert!(
        text.contains(&format!("{name} 0.1.0: ok (1 routes)")),
        "{text}"
    );

    let host = TestHost::start(&plugins);
    let response = host.get(&format!("/{name}/ana")).await;
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

    // Offline and quick: the checkout's lock file pins what the workspace already built,
    // and the shared target directory holds it.
    std::fs::copy(repo_root().join("Cargo.lock"), project.join("Cargo.lock")).expect("lock");
    let target: PathBuf = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let text = run(Command::new(&cargo)
        .args(["test", "--offline", "--release"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target));
    assert!(text.contains("greets_by_name ... ok"), "{text}");
    run(Command::new(&cargo)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target));

    let component = target.join("wasm32-wasip2/release/plinth_plugin_greeter_rs.wasm");
    deploy_and_greet("greeter_rs", &project, &component).await;
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
    // scripts/build-plugins.sh installed the pinned componentize-py here.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let component = work.path().join("greeter_py.wasm");
    run(Command::new(target.join("py-venv/bin/componentize-py"))
        .args(["-d", "wit", "-w", "plugin-kv", "componentize", "app", "-o"])
        .arg(&component)
        .current_dir(&project)
        .env("PYTHONDONTWRITEBYTECODE", "1"));
    deploy_and_greet("greeter_py", &project, &component).await;
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
