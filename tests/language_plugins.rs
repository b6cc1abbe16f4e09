//! Plugins written in Python (`plugins/python/visits`, componentize-py) and JavaScript
//! (`plugins/js/visits`, componentize-js), both against wit/'s `plugin-kv` world, serve
//! under the host like any other: their routes, their key-value namespace (the in-process
//! store, and Redis), their log lines, their description in `/openapi.json`, and
//! `plinth check`.

use plinth_tests::{Backend, PluginsDir, TestHost, on_both_backends, plinth_bin};
use reqwest::Method;

/// One of the visit-counter plugins: the same endpoints in two languages.
struct VisitCounter {
    plugin: &'static str,
    prefix: &'static str,
    count_operation: &'static str,
}

const PYTHON: VisitCounter = VisitCounter {
    plugin: "visits",
    prefix: "/py/visits",
    count_operation: "count_visit",
};

const JAVASCRIPT: VisitCounter = VisitCounter {
    plugin: "jsvisits",
    prefix: "/js/visits",
    count_operation: "js_count_visit",
};

on_both_backends!(
    python_counts_visits_in_its_key_value_namespace,
    javascript_counts_visits_in_its_key_value_namespace
);

async fn python_counts_visits_in_its_key_value_namespace(backend: Backend) {
    counts_visits_in_its_key_value_namespace(backend, PYTHON).await;
}

async fn javascript_counts_visits_in_its_key_value_namespace(backend: Backend) {
    counts_visits_in_its_key_value_namespace(backend, JAVASCRIPT).await;
}

async fn counts_visits_in_its_key_value_namespace(backend: Backend, counter: VisitCounter) {
    let plugins = PluginsDir::with(&[counter.plugin, "kvprobe"]);
    let host = TestHost::builder().backend(&backend).start(&plugins);
    let path = |name: &str| format!("{}/{name}", counter.prefix);

    let first = host.call(Method::POST, &path("ana"), None, None).await;
    first.expect(200, None);
    assert_eq!(first.body, serde_json::json!({"name": "ana", "visits": 1}));
    assert_eq!(
        first.headers["content-type"],
        "application/json; charset=utf-8"
    );
    host.call(Method::POST, &path("ana"), None, None)
        .await
        .expect(200, None);
    let read = host.call(Method::GET, &path("ana"), None, None).await;
    assert_eq!(read.body, serde_json::json!({"name": "ana", "visits": 2}));
    let other = host.call(Method::GET, &path("bob"), None, None).await;
    assert_eq!(other.body, serde_json::json!({"name": "bob", "visits": 0}));

    // Its keys are its own: another plugin reading the same key name finds nothing.
    assert_eq!(host.get("/kvprobe/visits:ana").await.status(), 404);

    // What it logs is the host's log line, under the request and the plugin.
    let line = host.wait_for_log(|l| l["message"] == "visit 2 of ana");
    assert_eq!(line["target"], "plinth::guest", "{line}");
    assert_eq!(line["plugin"], counter.plugin, "{line}");

    // Described like any plugin.
    let document: serde_json::Value = host
        .get("/openapi.json")
        .await
        .json()
        .await
        .expect("the document");
    assert_eq!(
        document["paths"][path("{name}")]["post"]["operationId"],
        counter.count_operation
    );
}

#[test]
fn plinth_check_accepts_them_and_refuses_them_beyond_their_grants() {
    for counter in [PYTHON, JAVASCRIPT] {
        let plugins = PluginsDir::with(&[counter.plugin]);
        let dir = plugins.path().join(counter.plugin);
        let check = || {
            let output = std::process::Command::new(plinth_bin())
                .arg("check")
                .arg(&dir)
                .env_remove("PLUGINS_POLICY")
                .output()
                .expect("plinth check");
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        };
        let (code, text) = check();
        assert_eq!(code, Some(0), "{text}");
        assert!(
            text.contains(&format!("{} 1.0.0: ok", counter.plugin)),
            "{text}"
        );

        // Without its `kv` grant, its import of `kv` is refused.
        let manifest = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        std::fs::write(&manifest, text.replace("[capabilities]\nkv = true\n", "")).expect("write");
        let (code, text) = check();
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("does not grant `kv`"), "{text}");
    }
}
