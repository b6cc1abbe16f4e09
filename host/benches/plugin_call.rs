//! One plugin call without HTTP or wrk noise: a fresh store, instantiation of the `hello`
//! component, `handle`, and dropping the store — what every request to a plugin costs the
//! host (see BENCHMARKS.md).
//!
//! ```text
//! bash scripts/build-plugins.sh            # the components (target/plugins/hello)
//! cargo bench -p plinth-host --bench plugin_call
//! BENCH_PLUGIN_DIR=/some/hello cargo bench -p plinth-host --bench plugin_call  # another build
//! # instructions per part of a call (BENCHMARKS.md, sixth round): a pool valgrind can map
//! PLUGIN_INSTANCES=8 valgrind --tool=callgrind target/release/deps/plugin_call-<hash> \
//!     --bench --profile-time 3
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use plinth_host::bindings::Request;
use plinth_host::capabilities::Capabilities;
use plinth_host::plugins::LoadedPlugin;
use plinth_host::plugins::runtime::PluginEngine;

fn hello_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BENCH_PLUGIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("plugins/hello")
}

fn request() -> Request {
    Request {
        method: "GET".into(),
        path: "/hello/bench".into(),
        query: String::new(),
        headers: vec![
            ("host".into(), "127.0.0.1".into()),
            ("user-agent".into(), "bench".into()),
            ("accept".into(), "*/*".into()),
        ],
        body: Vec::new(),
        route: "/hello/{name}".into(),
        params: vec![("name".into(), "bench".into())],
        request_id: "00000000-0000-0000-0000-000000000000".into(),
        principal: None,
    }
}

fn plugin_call(c: &mut Criterion) {
    let dir = hello_dir();
    assert!(
        dir.join("plugin.toml").is_file(),
        "{} not found: run `bash scripts/build-plugins.sh` first",
        dir.display()
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let data = tempfile::tempdir().expect("temporary directory");
    let database = format!("sqlite://{}/bench.db", data.path().display());
    let plugin = runtime.block_on(async {
        let config = plinth_host::Config::from_lookup(|key| match key {
            "JWT_SECRET" => Some("bench-secret-bench-secret-bench-secret-0123".into()),
            "DATABASE_URL" => Some(database.clone()),
            // e.g. a small pool under valgrind, which cannot reserve the default's 4 TiB
            "PLUGIN_INSTANCES" => std::env::var(key).ok(),
            _ => None,
        })
        .expect("configuration");
        let metrics =
            Arc::new(plinth_host::telemetry::metrics::Metrics::new(false).expect("metrics"));
        let capabilities = Arc::new(
            Capabilities::connect(&config, &metrics)
                .await
                .expect("capabilities"),
        );
        let engine = PluginEngine::new(None, config.plugin_instances, metrics).expect("engine");
        LoadedPlugin::load(&engine, &capabilities, &dir, None)
            .await
            .expect("loading hello")
    });
    let request = request();
    c.bench_function("hello: instantiate + handle + drop", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = plugin
                .component
                .call(&request)
                .await
                .expect("hello answers");
            assert_eq!(response.status, 200);
            response
        });
    });
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
