//! A plugin can fail only its own request: traps, endless loops, memory bombs and invalid
//! responses are answered 500/504 and the very next requests are served normally.

use std::time::{Duration, Instant};

use plinth_tests::{PluginsDir, TestHost, json_body};

fn hostile_host() -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["hello", "trap", "spin", "membomb", "badstatus"]);
    let host = TestHost::start(&plugins);
    (plugins, host)
}

async fn assert_healthy(host: &TestHost) {
    let response = host.get("/hello/after").await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["name"], "after");
}

#[tokio::test]
async fn a_trap_is_500_and_the_next_requests_succeed() {
    let (_plugins, host) = hostile_host();
    for _ in 0..3 {
        let response = host.get("/trap").await;
        assert_eq!(response.status(), 500);
        let body = json_body(response).await;
        assert_eq!(body["code"], "PLUGIN_FAILED");
        // No trap message, backtrace or path in the body.
        let text = body.to_string();
        assert!(
            !text.contains("panicked") && !text.contains(".wasm"),
            "{text}"
        );

        // The same plugin serves its next request, and so do the others.
        let response = host.get("/trap/ok").await;
        assert_eq!(response.status(), 200);
        assert_healthy(&host).await;
    }
    // The cause is in the log, for the operator.
    host.wait_for_log(|l| {
        l["level"] == "ERROR" && l["error"].as_str().is_some_and(|e| e.contains("trap"))
    });
}

#[tokio::test]
async fn an_endless_loop_is_504_within_its_limit() {
    let (_plugins, host) = hostile_host();
    // spin's manifest sets timeout_ms = 300.
    let started = Instant::now();
    let response = host.get("/spin").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(json_body(response).await["code"], "PLUGIN_TIMEOUT");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    // The limit plus one epoch tick, with room for a loaded CI machine.
    assert!(elapsed < Duration::from_millis(300 + 700), "{elapsed:?}");
    assert_healthy(&host).await;
}

#[tokio::test]
async fn endless_loops_do_not_starve_other_requests() {
    let plugins = PluginsDir::with(&["hello"]);
    plugins.deploy_as("spin", "spin", |m| {
        m.replace("timeout_ms = 300", "timeout_ms = 2000")
    });
    let host = TestHost::start(&plugins);
    // More spinning guests than the host has worker threads. If guests held their thread
    // until their deadline, hello would wait the full 2 s; guests yield at every epoch
    // tick, so it is served long before.
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let client = host.client.clone();
            let url = host.url("/spin");
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_healthy(&host).await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "hello took {:?} while guests spun",
        started.elapsed()
    );
    for spinner in spinners {
        let status = spinner.await.expect("join").expect("request");
        assert_eq!(status, 504);
    }
}

#[tokio::test]
async fn a_memory_bomb_is_500_and_host_memory_stays_bounded() {
    let (_plugins, host) = hostile_host();
    assert_healthy(&host).await;
    let baseline = host.rss_kib();
    for _ in 0..10 {
        let response = host.get("/membomb").await;
        assert_eq!(response.status(), 500);
        assert_eq!(json_body(response).await["code"], "PLUGIN_FAILED");
    }
    assert_healthy(&host).await;
    let grown_mib = host.rss_kib().saturating_sub(baseline) / 1024;
    // Each bomb may reach its 32 MiB limit; ten of them must not accumulate.
    assert!(grown_mib < 64, "host RSS grew by {grown_mib} MiB");
}

#[tokio::test]
async fn an_invalid_status_is_500() {
    let (_plugins, host) = hostile_host();
    let response = host.get("/badstatus").await;
    assert_eq!(response.status(), 500);
    assert_eq!(json_body(response).await["code"], "PLUGIN_FAILED");
    assert_healthy(&host).await;
}
