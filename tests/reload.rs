//! Rolling a plugin forward and back under full load: no request fails, every answer comes
//! from one of the two versions, and a new version is served within a second of the swap.
//! A broken version is refused while the serving one keeps answering.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plinth_tests::{PluginsDir, TestHost, built_plugin};

const CLIENT_LOOPS: usize = 8;
const LOAD_DURATION: Duration = Duration::from_secs(15);
const SWAPS: u32 = 20;
/// How soon after a swap new requests must see the new version.
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);

/// Which build answered, from `GET /versioned`'s body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn built_dir(self) -> std::path::PathBuf {
        built_plugin(match self {
            Self::V1 => "versioned",
            Self::V2 => "versioned-v2",
        })
    }

    fn other(self) -> Self {
        match self {
            Self::V1 => Self::V2,
            Self::V2 => Self::V1,
        }
    }
}

/// What one client loop saw.
#[derive(Debug, Default)]
struct Tally {
    v1: u32,
    v2: u32,
    /// Anything that was not a 200 with a v1 or v2 body: status and body.
    bad: Vec<(u16, String)>,
}

async fn which_version(client: &reqwest::Client, url: &str) -> Result<Version, (u16, String)> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| (0, err.to_string()))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    match (status, body.as_str()) {
        (200, r#"{"version":"v1"}"#) => Ok(Version::V1),
        (200, r#"{"version":"v2"}"#) => Ok(Version::V2),
        _ => Err((status, body)),
    }
}

/// Puts `version`'s manifest and component into `dir`, each by rename (never half-written).
fn install_files(dir: &Path, version: Version) {
    let source = version.built_dir();
    for file in ["versioned.wasm", "plugin.toml"] {
        let staging = dir.join(format!(".{file}.staging"));
        std::fs::copy(source.join(file), &staging).expect("staging a file");
        std::fs::rename(&staging, dir.join(file)).expect("renaming a file into place");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_versions_under_load_fails_no_request() {
    let plugins = PluginsDir::with(&["auth", "users", "versioned"]);
    let host = Arc::new(TestHost::builder().with_root().start(&plugins));
    let root = host.root_tokens().await;
    let dir = plugins.path().join("versioned");
    let url = host.url("/versioned");
    assert_eq!(
        which_version(&host.client, &url).await,
        Ok(Version::V1),
        "before any swap"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..CLIENT_LOOPS)
        .map(|_| {
            let (client, url, stop) = (reqwest::Client::new(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match which_version(&client, &url).await {
                        Ok(Version::V1) => tally.v1 += 1,
                        Ok(Version::V2) => tally.v2 += 1,
                        Err(bad) => tally.bad.push(bad),
                    }
                }
                tally
            })
        })
        .collect();

    let started = Instant::now();
    let interval = LOAD_DURATION / SWAPS;
    let mut serving = Version::V1;
    let mut slowest_swap = Duration::ZERO;
    for swap in 0..SWAPS {
        let next = serving.other();
        let swapped_at = Instant::now();
        install_files(&dir, next);
        // Half the swaps are left to the directory watcher, half are asked of the admin
        // API (whose answer means the new version is already installed).
        if swap % 2 == 1 {
            host.admin_reload("versioned", &root.access)
                .await
                .expect(200, None);
        }
        // From the first request that sees the new version on, none may see the old one.
        loop {
            match which_version(&host.client, &url).await {
                Ok(seen) if seen == next => break,
                Ok(_) => {}
                Err(bad) => panic!("swap {swap}: a probe failed: {bad:?}"),
            }
            assert!(
                swapped_at.elapsed() < VISIBLE_WITHIN,
                "swap {swap} to {next:?} was not visible within {VISIBLE_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest_swap = slowest_swap.max(swapped_at.elapsed());
        for _ in 0..5 {
            assert_eq!(
                which_version(&host.client, &url).await,
                Ok(next),
                "swap {swap}: the old version answered after the new one"
            );
        }
        serving = next;
        tokio::time::sleep_until((started + interval * (swap + 1)).into()).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = Tally::default();
    for handle in loops {
        let tally = handle.await.expect("client loop");
        total.v1 += tally.v1;
        total.v2 += tally.v2;
        total.bad.extend(tally.bad);
    }
    assert!(
        total.bad.is_empty(),
        "{} of {} requests failed or had a foreign body, e.g. {:?}",
        total.bad.len(),
        total.v1 + total.v2 + total.bad.len() as u32,
        total.bad.first()
    );
    // Both versions really served under load (not only the probes).
    assert!(
        total.v1 > 100 && total.v2 > 100,
        "v1 {} / v2 {}",
        total.v1,
        total.v2
    );
    let swaps_logged = host
        .json_logs()
        .iter()
        .filter(|l| l["message"] == "plugin version swapped in" && l["plugin"] == "versioned")
        .count();
    assert!(
        swaps_logged >= SWAPS as usize,
        "{swaps_logged} swaps logged"
    );
    eprintln!(
        "{} requests (v1 {}, v2 {}), {SWAPS} swaps, slowest swap visible after {slowest_swap:?}",
        total.v1 + total.v2,
        total.v1,
        total.v2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_v3_is_refused_and_v2_keeps_serving() {
    let plugins = PluginsDir::with(&["auth", "users", "hello", "versioned"]);
    let host = TestHost::builder().with_root().start(&plugins);
    let root = host.root_tokens().await;
    let dir = plugins.path().join("versioned");
    let url = host.url("/versioned");
    install_files(&dir, Version::V2);
    host.admin_reload("versioned", &root.access)
        .await
        .expect(200, None);
    assert_eq!(which_version(&host.client, &url).await, Ok(Version::V2));
    let v2_manifest = std::fs::read_to_string(dir.join("plugin.toml")).expect("manifest");
    let v2_component = std::fs::read(dir.join("versioned.wasm")).expect("component");

    let kvprobe = std::fs::read(built_plugin("kvprobe").join("kvprobe.wasm")).expect("kvprobe");
    let conflicting = format!(
        "{}\n[[route]]\nmethod = \"GET\"\npath = \"/hello/{{name}}\"\n",
        v2_manifest.replace("2.0.0", "3.0.0")
    );
    let broken: [(&str, &[u8], &str, &str); 3] = [
        (
            "garbage bytes",
            b"\0asm garbage",
            &v2_manifest,
            "not a loadable component",
        ),
        (
            "an ungranted import",
            &kvprobe,
            &v2_manifest,
            "does not grant `kv`",
        ),
        (
            "a route conflict",
            &v2_component,
            &conflicting,
            "route conflict",
        ),
    ];
    for (what, component, manifest, reason) in broken {
        std::fs::write(dir.join("versioned.wasm"), component).expect("write component");
        std::fs::write(dir.join("plugin.toml"), manifest).expect("write manifest");
        // The admin call answers 422 with the reason...
        let reply = host.admin_reload("versioned", &root.access).await;
        reply.expect(422, Some("VALIDATION_ERROR"));
        assert!(
            reply.body.to_string().contains(reason),
            "{what}: {}",
            reply.body
        );
        // ...the watcher, seeing the same files, refuses them too (and says so)...
        tokio::time::sleep(Duration::from_millis(600)).await;
        // ...v2 answers throughout, and the admin list shows why v3 is not serving.
        for _ in 0..10 {
            assert_eq!(
                which_version(&host.client, &url).await,
                Ok(Version::V2),
                "{what}"
            );
        }
        let entry = host.admin_plugin("versioned", &root.access).await;
        assert_eq!(entry["version"], "2.0.0", "{what}");
        assert!(
            entry["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(reason)),
            "{what}: {entry}"
        );
        assert_eq!(host.get("/hello/x").await.status(), 200, "{what}");
    }
    let refusals = host
        .json_logs()
        .iter()
        .filter(|l| {
            l["plugin"] == "versioned"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("change refused"))
        })
        .count();
    // Each broken version was refused by the admin call and again by the watcher.
    assert!(refusals >= 6, "{refusals} refusals logged");
}
