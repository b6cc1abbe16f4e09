//! A plugin can fail only its own request: traps, endless loops, memory bombs, huge and
//! invalid responses are answered 500/504 and the very next requests are served normally;
//! a plugin past its concurrency limit gets fast 503s; a plugin filling tens of MiB per
//! call takes turns on the heavy lanes; one plugin cannot read another's
//! key-value entries; what a guest prints is logged, tagged with plugin and request id, and
//! a guest logging in a loop while the log output stalls loses its own lines, never the
//! host's, and never stalls the host.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plinth_tests::{Backend, PluginsDir, TestHost, json_body, on_both_backends, request_id};
use reqwest::Method;

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

#[tokio::test]
async fn a_flood_of_response_headers_is_500() {
    let (_plugins, host) = hostile_host();
    for _ in 0..3 {
        let response = host.get("/badstatus/headers").await;
        assert_eq!(response.status(), 500);
        assert_eq!(json_body(response).await["code"], "PLUGIN_FAILED");
        assert_healthy(&host).await;
    }
}

#[tokio::test]
async fn a_huge_response_body_is_500_and_a_fitting_one_is_served() {
    let plugins = PluginsDir::with(&["hello", "bigbody"]);
    let host = TestHost::start(&plugins);
    // bigbody's manifest allows 4 MiB responses (and 128 MiB of memory to build them in).
    for _ in 0..3 {
        let response = host.get("/bigbody/64").await;
        assert_eq!(response.status(), 500);
        assert_eq!(json_body(response).await["code"], "PLUGIN_FAILED");
        assert_healthy(&host).await;
    }
    let response = host.get("/bigbody/3").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").len(), 3 * 1024 * 1024);
    host.wait_for_log(|l| {
        l["level"] == "ERROR"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_response_mb"))
    });
}

/// A call that fills tens of MiB holds its worker thread for milliseconds without a chance
/// to yield. Such a plugin is put on the heavy lanes (one fewer than the host's worker
/// threads), so its calls take turns there and never hold every worker, and each hands its
/// worker's queue to another thread before it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_filling_tens_of_mib_takes_turns_on_the_heavy_lanes() {
    let plugins = PluginsDir::with(&["auth", "users", "hello", "bigbody"]);
    let host = Arc::new(TestHost::builder().with_root().start(&plugins));
    let root = host.root_tokens().await;

    // Light calls leave it off the lanes.
    assert_eq!(host.get("/bigbody/1").await.status(), 200);
    let bigbody = host.admin_plugin("bigbody", &root.access).await;
    assert_eq!(bigbody["heavy"]["marked"], false, "{bigbody}");
    assert_eq!(bigbody["heavy"]["holds_threads"], false, "{bigbody}");
    assert_eq!(bigbody["counters"]["heavy_calls"], 0, "{bigbody}");
    let lanes = bigbody["heavy"]["lanes"].as_u64().expect("heavy.lanes");
    assert!(lanes >= 1, "{bigbody}");

    // One call that fills 112 MiB in one go (one `memory.fill`: no yield for milliseconds)
    // puts it there and marks it as holding threads, and the operator is told.
    assert_eq!(host.get("/bigbody/hold/112/0").await.status(), 200);
    let warning = host
        .wait_for_log(|l| l["level"] == "WARN" && l["plugin"] == "bigbody" && l["lanes"] == lanes);
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("heavy lanes")),
        "{warning}"
    );
    let bigbody = host.admin_plugin("bigbody", &root.access).await;
    assert_eq!(bigbody["heavy"]["marked"], true, "{bigbody}");
    assert_eq!(bigbody["heavy"]["holds_threads"], true, "{bigbody}");
    assert_eq!(bigbody["counters"]["heavy_calls"], 1, "{bigbody}");
    host.wait_for_log(|l| {
        l["level"] == "WARN" && l["plugin"] == "bigbody" && l["held_ms"].is_u64()
    });
    // Other plugins are not marked.
    let hello = host.admin_plugin("hello", &root.access).await;
    assert_eq!(hello["heavy"]["marked"], false, "{hello}");

    // One more heavy call than there are lanes: the last waits for a lane to free, so the
    // batch takes at least two calls' time; meanwhile the host and other plugins answer.
    let hold = Duration::from_millis(400);
    let started = Instant::now();
    let calls: Vec<_> = (0..=lanes)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let response = host
                    .get(&format!("/bigbody/hold/64/{}", hold.as_millis()))
                    .await;
                (response.status(), Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_healthy(&host).await;
    assert_eq!(host.get("/hello/lanes").await.status(), 200);
    let mut last_done = started;
    for call in calls {
        let (status, done) = call.await.expect("join");
        assert_eq!(status, 200);
        last_done = last_done.max(done);
    }
    let took = last_done - started;
    assert!(
        took >= 2 * hold,
        "{} heavy calls on {lanes} lane(s) took {took:?}",
        lanes + 1
    );
    let bigbody = host.admin_plugin("bigbody", &root.access).await;
    assert_eq!(bigbody["counters"]["heavy_calls"], lanes + 2, "{bigbody}");
}

/// Every request gets a fresh instance, so nothing one leaves in memory reaches the next,
/// unless its plugin opts into reuse (`limits.reuse_instance_for`): then one instance
/// serves up to that many requests, one after another, and is dropped after a trap.
#[tokio::test]
async fn instances_are_fresh_per_request_unless_a_plugin_opts_into_reuse() {
    let plugins = PluginsDir::with(&["hello", "counter"]);
    plugins.deploy_as("counter", "reused", |manifest| {
        manifest
            .replace("name = \"counter\"", "name = \"reused\"")
            .replace("/counter", "/reused")
            + "\n[limits]\nreuse_instance_for = 3\n"
    });
    let host = TestHost::start(&plugins);
    async fn served(host: &TestHost, path: &str) -> (u64, String) {
        let response = host.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let request_id = request_id(&response);
        let served = json_body(response).await["served"]
            .as_u64()
            .expect("served");
        (served, request_id)
    }

    for _ in 0..3 {
        assert_eq!(served(&host, "/counter").await.0, 1, "a fresh instance");
    }

    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(served(&host, "/reused").await);
    }
    let counts: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, [1, 2, 3, 1, 2], "three requests per instance");
    // What a reused instance prints is tagged with the request that printed it.
    for (n, request_id) in &seen {
        host.wait_for_log(|l| {
            l["plugin"] == "reused"
                && l["message"] == format!("counter: {n}").as_str()
                && l["request_id"] == request_id.as_str()
        });
    }

    // A trap ends the instance: the next request starts afresh.
    assert_eq!(host.get("/reused/trap").await.status(), 500);
    assert_eq!(served(&host, "/reused").await.0, 1);
    assert_healthy(&host).await;
}

#[tokio::test]
async fn guest_output_is_logged_with_plugin_and_request_id() {
    let plugins = PluginsDir::with(&["bigbody"]);
    let host = TestHost::start(&plugins);
    let response = host.get("/bigbody/1").await;
    assert_eq!(response.status(), 200);
    let request_id = request_id(&response);
    for (stream, text) in [
        ("stdout", "bigbody: answering 1 MiB"),
        ("stderr", "bigbody: stderr works too"),
    ] {
        let line = host.wait_for_log(|l| l["message"] == text);
        assert_eq!(line["target"], "plinth::guest", "{line}");
        assert_eq!(line["plugin"], "bigbody", "{line}");
        assert_eq!(line["stream"], stream, "{line}");
        assert_eq!(line["request_id"], request_id.as_str(), "{line}");
    }
}

/// Requests to `/bigbody/chatty/5000`, each logging about 12,000 lines (its log, stdout and
/// stderr budgets of 64 KiB each, in 16-byte lines): far more than the host buffers.
const CHATTY_REQUESTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_logging_in_a_loop_while_stdout_stalls_loses_only_its_own_lines() {
    let plugins = PluginsDir::new();
    plugins.deploy("hello");
    plugins.deploy_as("bigbody", "bigbody", |m| {
        m.replace(
            "max_response_mb = 4",
            "max_response_mb = 4\ntimeout_ms = 10000",
        )
    });
    let host = Arc::new(TestHost::start(&plugins));
    // A log collector that stopped reading: once the pipe is full, writes to stdout block.
    host.pause_stdout();

    // Answered within PROMPTLY, with its request id.
    const PROMPTLY: Duration = Duration::from_secs(2);
    async fn answered(host: &TestHost, path: &str) -> String {
        let started = Instant::now();
        let response = tokio::time::timeout(PROMPTLY, host.get(path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} not answered within {PROMPTLY:?}"));
        assert_eq!(response.status(), 200, "GET {path}");
        let id = plinth_tests::request_id(&response);
        response.bytes().await.expect("body");
        assert!(
            started.elapsed() < PROMPTLY,
            "GET {path}: {:?}",
            started.elapsed()
        );
        id
    }

    // Four clients calling the chatty route in turn...
    let chatty: Vec<_> = (0..4)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..CHATTY_REQUESTS / 4 {
                    let response = host.get("/bigbody/chatty/5000").await;
                    assert_eq!(response.status(), 200);
                    ids.push(plinth_tests::request_id(&response));
                }
                ids
            })
        })
        .collect();
    // ...while the host's own endpoint and a quiet plugin keep answering promptly.
    let mut ids = Vec::new();
    let mut rounds_after = 0;
    while rounds_after < 5 {
        if chatty.iter().all(|task| task.is_finished()) {
            rounds_after += 1;
        }
        ids.push(answered(&host, "/health").await);
        ids.push(answered(&host, "/hello/quiet").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in chatty {
        ids.extend(task.await.expect("chatty client"));
    }

    // The collector reads again: every request's access line is there, and a warning says
    // how many plugin lines were dropped.
    host.resume_stdout();
    let wanted: HashSet<String> = ids.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = host.json_logs();
        let logged: HashSet<String> = logs
            .iter()
            .filter(|l| l["target"] == "plinth::access")
            .filter_map(|l| l["span"]["request_id"].as_str().map(str::to_owned))
            .collect();
        let warning = logs.iter().find(|l| {
            l["target"] == "plinth::log"
                && l["level"] == "WARN"
                && l["message"].as_str().is_some_and(|m| {
                    m.starts_with("dropped ")
                        && m.ends_with(" plugin log lines: the log output is not keeping up")
                })
        });
        let missing: Vec<_> = wanted.difference(&logged).collect();
        if missing.is_empty() && warning.is_some() {
            let dropped = warning.and_then(|w| w["dropped"].as_u64()).unwrap_or(0);
            assert!(dropped > 0, "{warning:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} access lines missing ({missing:?}), drop warning: {warning:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `PLUGIN_INSTANCES`: with a pool of one slot, a call to another plugin queues for the
/// slot (it does not fail) and runs once the call holding it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_instance_slot_calls_take_turns() {
    let plugins = PluginsDir::with(&["hello"]);
    plugins.deploy_as("spin", "spin", |m| {
        m.replace("timeout_ms = 300", "timeout_ms = 5000")
    });
    let host = Arc::new(
        TestHost::builder()
            .env("PLUGIN_INSTANCES", "1")
            .start(&plugins),
    );
    let holder = {
        let host = host.clone();
        tokio::spawn(async move { host.get("/spin/sleep/1000").await.status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let queued = host.get("/hello/slot").await;
    let waited = started.elapsed();
    assert_eq!(queued.status(), 200);
    assert!(
        waited >= Duration::from_millis(700),
        "answered after {waited:?}, while the only slot was held for a second"
    );
    assert_eq!(holder.await.expect("join"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_concurrency_limit_a_plugin_gets_fast_503s() {
    let plugins = PluginsDir::with(&["auth", "users", "hello"]);
    plugins.deploy_as("spin", "spin", |m| {
        m.replace(
            "timeout_ms = 300",
            "timeout_ms = 5000\nmax_concurrency = 1\nmax_queued = 1\nqueue_timeout_ms = 400",
        )
    });
    let host = std::sync::Arc::new(TestHost::builder().with_root().start(&plugins));
    let root = host.root_tokens().await;
    let spawn_get = |path: &'static str| {
        let host = host.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = host.get(path).await;
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let code = json_body(response).await["code"].clone();
            (status, code, retry_after, started.elapsed())
        })
    };

    // One request occupies the only turn; the next waits in the one-place queue.
    let running = spawn_get("/spin/sleep/1500");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = spawn_get("/spin/sleep/1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The queue is full: refused at once, not after the queue timeout.
    let (status, code, retry_after, took) = spawn_get("/spin/sleep/1").await.expect("join");
    assert_eq!((status, code.as_str()), (503, Some("UNAVAILABLE")));
    assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(
        took < Duration::from_millis(300),
        "a full queue took {took:?}"
    );
    // Other plugins are not held up.
    assert_healthy(&host).await;
    // The queued request gave up after its queue timeout, long before the first finished.
    let (status, _, _, took) = queued.await.expect("join");
    assert_eq!(status, 503);
    assert!(
        took >= Duration::from_millis(400),
        "left the queue after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1200),
        "left the queue after {took:?}"
    );
    let (status, ..) = running.await.expect("join");
    assert_eq!(status, 200);

    // A request queued behind a short one gets its turn.
    let short = spawn_get("/spin/sleep/150");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (status, ..) = spawn_get("/spin/sleep/1").await.expect("join");
    assert_eq!(status, 200);
    assert_eq!(short.await.expect("join").0, 200);

    let spin = host.admin_plugin("spin", &root.access).await;
    assert_eq!(spin["counters"]["rejections"], 2, "{spin}");
    assert_eq!(spin["counters"]["requests"], 5, "{spin}");
    assert_eq!(spin["limits"]["max_concurrency"], 1, "{spin}");
}

async fn a_plugin_cannot_read_another_plugins_keys(backend: Backend) {
    let plugins = PluginsDir::with(&["kvprobe"]);
    plugins.deploy_as("kvprobe", "kvspy", |m| {
        m.replace("name = \"kvprobe\"", "name = \"kvspy\"")
            .replace("/kvprobe/", "/kvspy/")
    });
    let host = TestHost::builder().backend(&backend).start(&plugins);
    let put = |path: &str, body: &'static str| {
        host.client
            .request(Method::PUT, host.url(path))
            .body(body)
            .send()
    };
    assert_eq!(
        put("/kvprobe/secret", "kvprobe's")
            .await
            .expect("put")
            .status(),
        204
    );
    // The same key name, asked for by another plugin, is not there...
    assert_eq!(host.get("/kvspy/secret").await.status(), 404);
    // ...nor is it overwritten by that plugin's own entry of the same name.
    assert_eq!(
        put("/kvspy/secret", "kvspy's").await.expect("put").status(),
        204
    );
    let own = host.get("/kvprobe/secret").await;
    assert_eq!(own.status(), 200);
    assert_eq!(own.text().await.expect("body"), "kvprobe's");
    let spy = host.get("/kvspy/secret").await;
    assert_eq!(spy.text().await.expect("body"), "kvspy's");
}

on_both_backends!(a_plugin_cannot_read_another_plugins_keys);

#[tokio::test]
async fn a_plugin_reaches_no_files_environment_or_network() {
    let plugins = PluginsDir::with(&["nosy"]);
    // The host's environment holds JWT_SECRET and DATABASE_URL, its working directory a
    // database, and PostgreSQL and Redis listen locally: none of it is within reach.
    let host = TestHost::start(&plugins);
    let response = host.get("/nosy").await;
    assert_eq!(response.status(), 200);
    let seen = json_body(response).await;
    assert_eq!(seen["file"], false, "{seen}");
    assert_eq!(seen["dir"], false, "{seen}");
    assert_eq!(seen["env"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["tcp"], false, "{seen}");
    assert_eq!(seen["dns"], false, "{seen}");
    // What the world does need still works.
    assert_eq!(seen["clock"], true, "{seen}");
}
