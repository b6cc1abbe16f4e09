//! A backend that goes away answers 503 with the backend named, never takes the host down,
//! and service resumes by itself when it is back. The outage is a cuttable TCP proxy in
//! front of the shared local services, which are never stopped.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use plinth_tests::proxy::CuttableProxy;
use plinth_tests::{Backend, PluginsDir, TestHost};

fn resolve(addr: &str) -> std::net::SocketAddr {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("resolvable address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_the_backends_in_use() {
    let (_plugins, host) = TestHost::start_api(&Backend::sqlite());
    let ready = host.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["kv"], "in-process");

    let backend = Backend::postgres();
    let (_plugins, host) = TestHost::start_api(&backend);
    let body: serde_json::Value = host.get("/ready").await.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["kv"], "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_and_service_resumes() {
    let backend = Backend::postgres();
    let direct = backend.database_url().expect("postgres url");
    let proxy = CuttableProxy::start(resolve("127.0.0.1:5432")).await;
    let via_proxy = direct.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(
        via_proxy, direct,
        "the test database URL must go through the proxy"
    );

    let plugins = PluginsDir::with(&["auth", "users", "hello"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env("DATABASE_URL", via_proxy)
        .start(&plugins);
    let (_, tokens) = host.user("ola").await;
    host.get_as("/api/v1/users/me", &tokens.access)
        .await
        .expect(200, None);

    proxy.cut();
    let down = host.get_as("/api/v1/users/me", &tokens.access).await;
    down.expect(503, Some("UNAVAILABLE"));
    let text = down.body.to_string();
    assert!(
        !text.contains("5432") && !text.contains("postgres://"),
        "{text}"
    );
    let ready = host.get("/ready").await;
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(ready["code"], "UNAVAILABLE");
    assert!(
        ready["detail"]
            .as_str()
            .is_some_and(|d| d.contains("database")),
        "{ready}"
    );
    // The host itself is fine: liveness and plugins without a database still answer.
    assert_eq!(host.get("/health").await.status(), 200);
    assert_eq!(host.get("/hello/x").await.status(), 200);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = host.get_as("/api/v1/users/me", &tokens.access).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `/ready` reuses its answer for a second: it follows within about that.
    while host.get("/ready").await.status() != 200 {
        assert!(Instant::now() < deadline, "/ready did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_503_on_authenticated_routes_and_recovers() {
    let backend = Backend::postgres();
    let proxy = CuttableProxy::start(resolve("127.0.0.1:6379")).await;
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env("REDIS_URL", format!("redis://{}", proxy.addr))
        .start(&plugins);
    let (_, tokens) = host.user("pam").await;
    host.get_as("/api/v1/users/me", &tokens.access)
        .await
        .expect(200, None);

    proxy.cut();
    // Token state cannot be checked: refuse rather than accept a possibly revoked token.
    host.get_as("/api/v1/users/me", &tokens.access)
        .await
        .expect(503, Some("UNAVAILABLE"));
    assert_eq!(host.get("/ready").await.status(), 503);
    assert_eq!(host.get("/health").await.status(), 200);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.get_as("/api/v1/users/me", &tokens.access).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "service did not resume after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A refresh that fails on the way (here: the database is gone) must not retire the token:
/// the client's retry once the database is back is no reuse. Only PostgreSQL can be cut
/// from outside; SQLite has no such transient failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_failing_on_the_way_can_be_retried() {
    let backend = Backend::postgres();
    let direct = backend.database_url().expect("postgres url");
    let proxy = CuttableProxy::start(resolve("127.0.0.1:5432")).await;
    let via_proxy = direct.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env("DATABASE_URL", via_proxy)
        .start(&plugins);
    let (_, tokens) = host.user("rue").await;
    let body = serde_json::json!({"refresh_token": tokens.refresh});

    proxy.cut();
    host.post_json("/api/v1/auth/refresh", body.clone())
        .await
        .expect(503, Some("UNAVAILABLE"));
    proxy.restore();
    let retried = refresh_until_answered(&host, &body).await;
    retried.expect(200, None);
    let newest = retried.body["refresh_token"].as_str().expect("refresh");
    host.post_json(
        "/api/v1/auth/refresh",
        serde_json::json!({"refresh_token": newest}),
    )
    .await
    .expect(200, None);
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The auth plugin's only `EVAL` is the compare-and-swap that rotates a refresh chain
/// (host/src/capabilities/kv.rs): a proxy swallowing replies after it gives a rotation
/// that Redis committed but whose answer the host never received.
const COMPARE_AND_SWAP: &[u8] = b"EVAL";

/// A host on `backend` (PostgreSQL) whose Redis is behind `proxy`, and one user's tokens.
async fn host_with_redis_behind(
    backend: &Backend,
    proxy: &CuttableProxy,
    name: &str,
) -> (PluginsDir, TestHost, plinth_tests::api::Tokens) {
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(backend)
        .env("REDIS_URL", format!("redis://{}", proxy.addr))
        .start(&plugins);
    let (_, tokens) = host.user(name).await;
    (plugins, host, tokens)
}

/// Posts `body` to `path` until the answer is not 503 (a backend connection may take a
/// moment to come back), for at most 20 s.
async fn post_until_answered(
    host: &TestHost,
    path: &str,
    body: &serde_json::Value,
) -> plinth_tests::api::Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = host.post_json(path, body.clone()).await;
        if reply.status != 503 || Instant::now() >= deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn refresh_until_answered(
    host: &TestHost,
    body: &serde_json::Value,
) -> plinth_tests::api::Reply {
    post_until_answered(host, "/api/v1/auth/refresh", body).await
}

/// A refresh with `body` whose rotation Redis commits but whose reply never reaches the
/// host: the client is answered 503.
async fn lose_a_rotation(host: &TestHost, proxy: &CuttableProxy, body: &serde_json::Value) {
    proxy.swallow_replies_after(COMPARE_AND_SWAP);
    host.post_json("/api/v1/auth/refresh", body.clone())
        .await
        .expect(503, Some("UNAVAILABLE"));
    proxy.stop_swallowing();
}

/// Redis ran a refresh's rotation but its reply was lost, so the host answered 503: the
/// client's retry with the same token is no reuse. It gets the pair the rotation
/// committed (not a new one), that pair works, and the original token presented once more
/// after that is reuse as always. Also shows that the host gives up a Redis connection
/// whose reply is overdue: the proxy keeps swallowing that connection's replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_redis_reply_was_lost_can_be_retried() {
    let backend = Backend::postgres();
    let proxy = CuttableProxy::start(resolve("127.0.0.1:6379")).await;
    let (_plugins, host, tokens) = host_with_redis_behind(&backend, &proxy, "tia").await;
    let original = serde_json::json!({"refresh_token": tokens.refresh});

    lose_a_rotation(&host, &proxy, &original).await;

    let retried_at = unix_secs();
    let retried = refresh_until_answered(&host, &original).await;
    retried.expect(200, None);
    assert_eq!(
        retried.headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let access = retried.body["access_token"].as_str().expect("access");
    let redelivered = retried.body["refresh_token"].as_str().expect("refresh");
    // The lost answer's pair, issued before the lost attempt waited out the host's 2 s
    // Redis timeout, hence before the retry: no new pair was issued for it.
    let issued_at = plinth_tests::api::jwt_parts(redelivered).1["iat"]
        .as_u64()
        .expect("iat");
    assert!(
        issued_at < retried_at,
        "a new pair (iat {issued_at}, retry at {retried_at})"
    );
    host.get_as("/api/v1/users/me", access)
        .await
        .expect(200, None);

    // The redelivered refresh token is the chain's newest: it rotates.
    let next = host
        .post_json(
            "/api/v1/auth/refresh",
            serde_json::json!({"refresh_token": redelivered}),
        )
        .await;
    next.expect(200, None);
    let newest = next.body["refresh_token"].as_str().expect("refresh");

    // The original token again, now that its pair was delivered: reuse, the chain dies.
    host.post_json("/api/v1/auth/refresh", original)
        .await
        .expect(401, Some("INVALID_TOKEN"));
    host.post_json(
        "/api/v1/auth/refresh",
        serde_json::json!({"refresh_token": newest}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
}

/// The pair of a lost rotation is delivered once: presenting the original token again
/// after the retry got it is reuse, and kills the redelivered pair's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_is_redelivered_once() {
    let backend = Backend::postgres();
    let proxy = CuttableProxy::start(resolve("127.0.0.1:6379")).await;
    let (_plugins, host, tokens) = host_with_redis_behind(&backend, &proxy, "uma").await;
    let original = serde_json::json!({"refresh_token": tokens.refresh});

    lose_a_rotation(&host, &proxy, &original).await;
    let retried = refresh_until_answered(&host, &original).await;
    retried.expect(200, None);
    let redelivered = retried.body["refresh_token"].as_str().expect("refresh");

    host.post_json("/api/v1/auth/refresh", original)
        .await
        .expect(401, Some("INVALID_TOKEN"));
    host.post_json(
        "/api/v1/auth/refresh",
        serde_json::json!({"refresh_token": redelivered}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
}

/// A logout between the lost rotation and the retry ends the chain: the retry gets
/// nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_is_not_redelivered_after_logout() {
    let backend = Backend::postgres();
    let proxy = CuttableProxy::start(resolve("127.0.0.1:6379")).await;
    let (_plugins, host, tokens) = host_with_redis_behind(&backend, &proxy, "val").await;
    let original = serde_json::json!({"refresh_token": tokens.refresh});

    lose_a_rotation(&host, &proxy, &original).await;

    let logged_out = post_until_answered(&host, "/api/v1/auth/logout", &original).await;
    logged_out.expect(204, None);
    refresh_until_answered(&host, &original)
        .await
        .expect(401, Some("INVALID_TOKEN"));
}
