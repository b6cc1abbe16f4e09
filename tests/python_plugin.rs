//! A plugin written in Python (`plugins/python/visits`, built by componentize-py against
//! wit/'s `plugin-kv` world) serves under the host like any other: its routes, its
//! key-value namespace (the in-process store, and Redis), its log lines, its description
//! in `/openapi.json`, and `plinth check`.

use plinth_tests::{Backend, PluginsDir, TestHost, on_both_backends, plinth_bin};
use reqwest::Method;

on_both_backends!(counts_visits_in_its_key_value_namespace);

async fn counts_visits_in_its_key_value_namespace(backend: Backend) {
    let plugins = PluginsDir::with(&["visits", "kvprobe"]);
    let host = TestHost::builder().backend(&backend).start(&plugins);

    let first = host.call(Method::POST, "/py/visits/ana", None, None).await;
    first.expect(200, None);
    assert_eq!(first.body, serde_json::json!({"name": "ana", "visits": 1}));
    assert_eq!(
        first.headers["content-type"],
        "application/json; charset=utf-8"
    );
    host.call(Method::POST, "/py/visits/ana", None, None)
        .await
        .expect(200, None);
    let read = host.call(Method::GET, "/py/visits/ana", None, None).await;
    assert_eq!(read.body, serde_json::json!({"name": "ana", "visits": 2}));
    let other = host.call(Method::GET, "/py/visits/bob", None, None).await;
    assert_eq!(other.body, serde_json::json!({"name": "bob", "visits": 0}));

    // Its keys are its own: another plugin reading the same key name finds nothing.
    assert_eq!(host.get("/kvprobe/visits:ana").await.status(), 404);

    // What it logs is the host's log line, under the request and the plugin.
    let line = host.wait_for_log(|l| l["message"] == "visit 2 of ana");
    assert_eq!(line["target"], "plinth::guest", "{line}");
    assert_eq!(line["plugin"], "visits", "{line}");

    // Described like any plugin.
    let document: serde_json::Value = host
        .get("/openapi.json")
        .await
        .json()
        .await
        .expect("the document");
    assert_eq!(
        document["paths"]["/py/visits/{name}"]["post"]["operationId"],
        "count_visit"
    );
}

#[test]
fn plinth_check_accepts_it_and_refuses_it_beyond_its_grants() {
    let plugins = PluginsDir::with(&["visits"]);
    let dir = plugins.path().join("visits");
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
    assert!(text.contains("visits 1.0.0: ok"), "{text}");

    // Without its `kv` grant, its import of `kv` is refused.
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("[capabilities]\nkv = true\n", "")).expect("write");
    let (code, text) = check();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not grant `kv`"), "{text}");
}
