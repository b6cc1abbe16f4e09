//! Cross-cutting behaviour on every route (docs/API.md "Headers on every response",
//! "Cross-cutting behaviour"): CORS, rate limiting, access logs.

use std::net::ToSocketAddrs;
use std::time::Duration;

use plinth_tests::proxy::CuttableProxy;
use plinth_tests::{Backend, PluginsDir, TestHost};
use reqwest::Method;
use serde_json::json;

const APP: &str = "https://app.example.com";

fn cors_host(extra: &[(&str, &str)]) -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["hello", "trap"]);
    let mut builder = TestHost::builder().env(
        "CORS_ALLOWED_ORIGINS",
        format!("{APP}, http://localhost:3000"),
    );
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    let host = builder.start(&plugins);
    (plugins, host)
}

async fn preflight(host: &TestHost, path: &str, origin: &str) -> reqwest::Response {
    host.client
        .request(Method::OPTIONS, host.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .expect("OPTIONS")
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_by_the_host() {
    let (_plugins, host) = cors_host(&[]);
    // `/trap` would answer 500 if the preflight reached its plugin.
    let response = preflight(&host, "/trap", APP).await;
    assert_eq!(response.status(), 204);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .is_ok_and(|m| m.contains("POST"))
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .is_ok_and(|m| m.contains("authorization") && m.contains("content-type"))
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    assert!(!h.contains_key("access-control-allow-credentials"));
    assert!(h.contains_key("x-request-id"));
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_allow_headers() {
    let (_plugins, host) = cors_host(&[]);
    let response = preflight(&host, "/hello/x", "https://evil.example.net").await;
    assert!(
        !response
            .headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-allow")),
        "{:?}",
        response.headers()
    );
    let actual = host
        .client
        .get(host.url("/hello/x"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .expect("GET");
    assert_eq!(actual.status(), 200);
    assert!(!actual.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn an_allowed_origin_is_reflected_on_actual_responses() {
    let (_plugins, host) = cors_host(&[]);
    for path in ["/hello/x", "/nope"] {
        let response = host
            .client
            .get(host.url(path))
            .header("origin", "http://localhost:3000")
            .send()
            .await
            .expect("GET");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "http://localhost:3000"
        );
        assert!(
            response.headers()["vary"]
                .to_str()
                .is_ok_and(|v| v.contains("Origin"))
        );
        assert!(
            response.headers()["access-control-expose-headers"]
                .to_str()
                .is_ok_and(|v| v.contains("x-request-id"))
        );
    }
}

#[tokio::test]
async fn credentials_reflect_the_origin_never_a_star() {
    let (_plugins, host) = cors_host(&[("CORS_ALLOW_CREDENTIALS", "true")]);
    let response = preflight(&host, "/echo", APP).await;
    assert_eq!(response.headers()["access-control-allow-origin"], APP);
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );

    // `*` with credentials is refused at start-up, with a clear message.
    let (status, output) = TestHost::builder()
        .env("CORS_ALLOWED_ORIGINS", "*")
        .env("CORS_ALLOW_CREDENTIALS", "true")
        .start_expecting_failure(&PluginsDir::new());
    assert!(!status.success());
    assert!(output.contains("CORS_ALLOW_CREDENTIALS"), "{output}");

    // `*` alone is allowed, without credentials.
    let plugins = PluginsDir::with(&["hello"]);
    let any = TestHost::builder()
        .env("CORS_ALLOWED_ORIGINS", "*")
        .start(&plugins);
    let response = preflight(&any, "/echo", "https://anyone.example").await;
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-credentials")
    );
}

fn limited_host(per_minute: &str, extra: &[(&str, &str)]) -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["hello", "auth", "users"]);
    let mut builder = TestHost::builder()
        .env("RATE_LIMIT_PER_MINUTE", per_minute)
        .env("AUTH_RATE_LIMIT_PER_MINUTE", "3")
        .env("CORS_ALLOWED_ORIGINS", APP);
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    let host = builder.start(&plugins);
    (plugins, host)
}

fn header_u64(response: &reqwest::Response, name: &str) -> u64 {
    response.headers()[name]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number"))
}

#[tokio::test]
async fn the_limit_is_counted_exactly_with_headers_on_every_response() {
    let (_plugins, host) = limited_host("5", &[]);
    // Successes and errors (unknown paths included) draw from the same budget.
    let paths = ["/hello/a", "/nope", "/hello/b", "/echo", "/hello/c"];
    for (i, path) in paths.iter().enumerate() {
        let response = host.get(path).await;
        assert_ne!(response.status(), 429, "request {} refused", i + 1);
        assert_eq!(header_u64(&response, "ratelimit-limit"), 5);
        assert_eq!(header_u64(&response, "ratelimit-remaining"), 4 - i as u64);
        assert!(header_u64(&response, "ratelimit-reset") <= 60);
    }
    // Health probes and preflights are not counted and carry no limit headers.
    let health = host.get("/health").await;
    assert_eq!(health.status(), 200);
    assert!(!health.headers().contains_key("ratelimit-limit"));
    assert_eq!(preflight(&host, "/hello/x", APP).await.status(), 204);

    let refused = host.get("/hello/d").await;
    assert_eq!(refused.status(), 429);
    // The refusal is logged (and measured) under the route it was refused for.
    let id = plinth_tests::request_id(&refused);
    let line = host.access_line(&id);
    assert_eq!(line["route"], "/hello/{name}", "{line}");
    assert_eq!(line["status"], 429);
    assert_eq!(header_u64(&refused, "ratelimit-remaining"), 0);
    assert_eq!(header_u64(&refused, "ratelimit-limit"), 5);
    let retry_after = header_u64(&refused, "retry-after");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "RATE_LIMITED");
    assert_eq!(host.get("/health").await.status(), 200);
}

#[tokio::test]
async fn auth_routes_have_their_own_stricter_budget() {
    let (_plugins, host) = limited_host("100", &[]);
    for _ in 0..3 {
        let reply = host.login("nobody@example.com", "password1").await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers["ratelimit-limit"], "3");
    }
    host.login("nobody@example.com", "password1")
        .await
        .expect(429, Some("RATE_LIMITED"));
    // The general budget is untouched by the auth requests.
    let response = host.get("/hello/x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header_u64(&response, "ratelimit-remaining"), 99);
}

#[tokio::test]
async fn forwarded_for_only_counts_from_trusted_proxies() {
    // The test client is 127.0.0.1: untrusted here, so a spoofed header changes nothing.
    let (_plugins, host) = limited_host("2", &[]);
    for i in 0..3 {
        let response = host
            .client
            .get(host.url("/hello/x"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status() == 429, i == 2, "request {i}");
    }
    // Trusted: each forwarded client has its own budget.
    let (_plugins, host) = limited_host("2", &[("TRUSTED_PROXIES", "127.0.0.1/32")]);
    for i in 0..3 {
        let response = host
            .client
            .get(host.url("/hello/x"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200, "client {i}");
    }
}

/// Hosts reserve counter values from Redis in small batches (see `rate_limit.rs`): across
/// hosts no more than the limit is admitted, a small limit is counted exactly, and a larger
/// one is used up entirely by a client that keeps visiting every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sharing_redis_enforce_one_global_limit() {
    let backend = Backend::postgres();
    let plugins = PluginsDir::with(&["hello"]);
    for (limit, requests) in [(6, 10), (40, 70)] {
        let start = || {
            TestHost::builder()
                .backend(&backend)
                .env("RATE_LIMIT_PER_MINUTE", limit.to_string())
                .env(
                    "REDIS_KEY_PREFIX",
                    format!("plinth-test-rl-{limit}-{}", std::process::id()),
                )
                .start(&plugins)
        };
        let (a, b) = (start(), start());
        let mut statuses = Vec::new();
        for i in 0..requests {
            let host = if i % 2 == 0 { &a } else { &b };
            statuses.push(host.get("/hello/x").await.status().as_u16());
        }
        let allowed = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(
            allowed, limit,
            "two instances together allow the limit: {statuses:?}"
        );
        let first_refused = statuses.iter().position(|s| *s == 429).expect("a 429");
        if limit == 6 {
            assert_eq!(first_refused, limit, "a small limit is exact: {statuses:?}");
        } else {
            assert!(
                first_refused + 16 > limit,
                "first 429 too early: {statuses:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_auth_routes_fail_closed_and_others_limit_locally() {
    let backend = Backend::postgres();
    let proxy = CuttableProxy::start(
        "127.0.0.1:6379"
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("redis addr"),
    )
    .await;
    let plugins = PluginsDir::with(&["hello", "auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env("REDIS_URL", format!("redis://{}", proxy.addr))
        .env("RATE_LIMIT_PER_MINUTE", "4")
        .env("AUTH_RATE_LIMIT_PER_MINUTE", "50")
        .start(&plugins);
    assert_eq!(host.get("/hello/x").await.status(), 200);

    proxy.cut();
    host.login("nobody@example.com", "password1")
        .await
        .expect(503, Some("UNAVAILABLE"));
    // Other routes keep serving, promptly, limited per instance (a local window).
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(host.get("/hello/x").await.status().as_u16());
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(served + limited, 8, "{statuses:?}");
    // Four allowed per local window (five if a minute boundary falls inside the loop).
    assert!((4..=5).contains(&served), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = host.login("nobody@example.com", "password1").await;
        if reply.status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "auth did not recover: {}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn access_lines_have_the_fields_and_never_a_secret() {
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder().start(&plugins);
    let password = "very-secret-password-42";
    host.register("log@example.com", "logger", password)
        .await
        .expect(201, None);
    let tokens = host.tokens("log@example.com", password).await;
    host.get_as("/api/v1/users/me", &tokens.access)
        .await
        .expect(200, None);
    host.call(
        Method::POST,
        "/api/v1/auth/logout",
        Some(&tokens.access),
        Some(json!({"refresh_token": tokens.refresh})),
    )
    .await
    .expect(204, None);

    let line =
        host.wait_for_log(|l| l["target"] == "plinth::access" && l["path"] == "/api/v1/users/me");
    for field in [
        "method",
        "path",
        "route",
        "plugin",
        "plugin_version",
        "status",
        "latency_ms",
        "client_ip",
    ] {
        assert!(!line[field].is_null(), "{field} missing: {line}");
    }
    assert!(line["span"]["request_id"].is_string(), "{line}");
    assert_eq!(line["route"], "/api/v1/users/me");
    assert_eq!(line["plugin"], "users");

    let all = host.logs().join("\n");
    for secret in [
        password,
        &tokens.access,
        &tokens.refresh,
        plinth_tests::TEST_JWT_SECRET,
        "argon2id",
    ] {
        assert!(!all.contains(secret), "a secret reached the log");
    }
    assert!(
        !all.to_lowercase().contains("bearer "),
        "an Authorization value reached the log"
    );
}
