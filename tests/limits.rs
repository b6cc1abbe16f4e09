//! Limits that protect the host's memory and the accounts' passwords: the in-process store
//! is bounded and forgets expired keys; rate limits key clients sensibly and count failed
//! logins per account (README "Rate limits, CORS and the admin API").

use std::time::Duration;

use plinth_tests::{Backend, PluginsDir, TestHost, json_body, on_both_backends};
use reqwest::Method;
use serde_json::json;

/// `POST /kvprobe/{key}/count`: how many new counters the store took.
async fn count(host: &TestHost, key: &str, times: u64, ttl_ms: u64) -> u64 {
    let response = host
        .client
        .post(host.url(&format!(
            "/kvprobe/{key}/count?times={times}&ttl_ms={ttl_ms}"
        )))
        .send()
        .await
        .expect("POST count");
    assert_eq!(response.status(), 200);
    json_body(response).await["counted"]
        .as_u64()
        .expect("counted")
}

#[tokio::test]
async fn the_in_process_store_is_bounded_and_expired_counters_make_room() {
    let plugins = PluginsDir::with(&["kvprobe"]);
    let host = TestHost::start(&plugins);
    let mebibyte = vec![b'v'; 1024 * 1024];

    // Values without expiry fill it: the store refuses (503) instead of growing.
    let mut stored = 0;
    loop {
        let response = host
            .client
            .request(Method::PUT, host.url(&format!("/kvprobe/big{stored}")))
            .body(mebibyte.clone())
            .send()
            .await
            .expect("PUT");
        if response.status() == 503 {
            break;
        }
        assert_eq!(response.status(), 204);
        stored += 1;
        assert!(stored <= 64, "the store took more than 64 MiB");
    }
    assert!(stored >= 60, "the store took only {stored} MiB");
    // Stored values are kept, not evicted to make room.
    assert_eq!(host.get("/kvprobe/big0").await.status(), 200);

    // What room is left takes a bounded number of counters (rate-limit windows are such
    // counters)...
    let first = count(&host, "window", 100_000, 1_000).await;
    assert!((1..100_000).contains(&first), "{first} counters taken");
    // ...and once they expire they are swept, making room for as many new ones.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let second = count(&host, "later", 100_000, 1_000).await;
    assert!(
        second >= first * 9 / 10,
        "after expiry only {second} of {first} counters fit"
    );
}

fn limited_host(per_minute: &str, env: &[(&str, &str)]) -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["hello", "auth", "users"]);
    let mut builder = TestHost::builder()
        .env("RATE_LIMIT_PER_MINUTE", per_minute)
        .env("AUTH_RATE_LIMIT_PER_MINUTE", "3")
        .with_root();
    for (key, value) in env {
        builder = builder.env(key, *value);
    }
    let host = builder.start(&plugins);
    (plugins, host)
}

async fn get_from(host: &TestHost, url: &str, client: &str) -> u16 {
    host.client
        .get(url)
        .header("x-forwarded-for", client)
        .send()
        .await
        .expect("GET")
        .status()
        .as_u16()
}

#[tokio::test]
async fn ipv6_clients_share_one_budget_per_64() {
    let (_plugins, host) = limited_host("2", &[("TRUSTED_PROXIES", "127.0.0.1")]);
    let url = host.url("/hello/x");
    // Rotating addresses within one /64 buys no new budget...
    assert_eq!(get_from(&host, &url, "2001:db8:1:2::1").await, 200);
    assert_eq!(get_from(&host, &url, "2001:db8:1:2::2").await, 200);
    assert_eq!(get_from(&host, &url, "2001:db8:1:2:ffff::9").await, 429);
    // ...another /64 is another client.
    assert_eq!(get_from(&host, &url, "2001:db8:1:3::1").await, 200);
}

#[tokio::test]
async fn ipv4_mapped_peers_are_matched_against_trusted_proxies_as_ipv4() {
    // Bound to [::], the host sees IPv4 peers as ::ffff:127.0.0.1.
    let (_plugins, host) = limited_host(
        "2",
        &[("BIND_ADDR", "[::]:0"), ("TRUSTED_PROXIES", "127.0.0.1")],
    );
    let url = format!("http://127.0.0.1:{}/hello/x", host.addr.port());
    // The proxy is recognised, so each forwarded client has its own budget.
    for i in 0..3 {
        let client = format!("198.51.100.{i}");
        assert_eq!(get_from(&host, &url, &client).await, 200, "client {i}");
    }
    let line =
        host.wait_for_log(|l| l["target"] == "plinth::access" && l["client_ip"] == "198.51.100.2");
    assert_eq!(line["path"], "/hello/x");
}

#[tokio::test]
async fn changing_the_password_draws_from_the_auth_budget() {
    let (_plugins, host) = limited_host("100", &[]);
    let root = host.root_tokens().await; // the first of three auth requests
    let change = json!({"current_password": "wrong-password", "new_password": "password-new"});
    for _ in 0..2 {
        let reply = host
            .call(
                Method::PUT,
                "/api/v1/users/me/password",
                Some(&root.access),
                Some(change.clone()),
            )
            .await;
        reply.expect(400, Some("INCORRECT_PASSWORD"));
        assert_eq!(reply.headers["ratelimit-limit"], "3");
    }
    host.call(
        Method::PUT,
        "/api/v1/users/me/password",
        Some(&root.access),
        Some(change),
    )
    .await
    .expect(429, Some("RATE_LIMITED"));
    // Other user routes keep the general budget.
    host.get_as("/api/v1/users/me", &root.access)
        .await
        .expect(200, None);
}

on_both_backends!(failed_logins_are_limited_per_account_too);

async fn failed_logins_are_limited_per_account_too(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    host.user("ida").await;
    host.user("joe").await;
    // The per-address limit is off on test hosts: only the per-account count applies.
    for attempt in 1..=10 {
        host.login("ida@example.com", &format!("guess-{attempt}"))
            .await
            .expect(401, Some("INVALID_CREDENTIALS"));
    }
    // Past ten failures, even the right password waits, by email or by username.
    for login in ["ida@example.com", "IDA"] {
        let reply = host.login(login, "password-ida").await;
        reply.expect(429, Some("RATE_LIMITED"));
        let retry_after: u64 = reply.headers["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After seconds");
        assert!((1..=900).contains(&retry_after), "{retry_after}");
    }
    // Another account is not affected.
    host.login("joe@example.com", "password-joe")
        .await
        .expect(200, None);
    // An unknown login is counted the same way, so a 429 tells nothing about accounts.
    for _ in 0..10 {
        host.login("nobody@example.com", "guess")
            .await
            .expect(401, Some("INVALID_CREDENTIALS"));
    }
    host.login("nobody@example.com", "guess")
        .await
        .expect(429, Some("RATE_LIMITED"));
}
