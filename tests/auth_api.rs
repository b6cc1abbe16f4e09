//! docs/API.md "Auth": every row with its success and each listed error, on SQLite and on
//! PostgreSQL + Redis.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use plinth_tests::api::jwt_parts;
use plinth_tests::{Backend, TEST_JWT_SECRET, TestHost, on_both_backends};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    register_creates_a_user_without_secrets,
    register_lists_every_validation_problem,
    register_rejects_taken_email_and_username_case_insensitively,
    ten_parallel_registrations_of_one_email_give_one_user,
    login_with_json_or_oauth2_form_returns_a_token_pair,
    login_failures_look_the_same,
    refresh_rotates_and_reuse_revokes_the_chain,
    a_token_presented_again_right_after_its_rotation_is_reuse,
    token_types_are_not_interchangeable,
    logout_revokes_the_chain_and_the_access_token,
    forged_and_expired_tokens_are_refused,
    concurrent_refreshes_with_one_token_leave_no_live_chain_behind,
    logout_racing_refresh_leaves_the_chain_dead,
    a_chain_cannot_be_refreshed_past_its_max_lifetime,
);

async fn register_creates_a_user_without_secrets(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let reply = host
        .post_json(
            "/api/v1/auth/register",
            json!({"email": "  Ana@Example.COM ", "username": "Ana_P", "password": "pässwörd-1",
                   "full_name": "Ana Pérez"}),
        )
        .await;
    reply.expect(201, None);
    let user = &reply.body;
    assert!(user["id"].is_i64());
    assert_eq!(user["email"], "ana@example.com");
    assert_eq!(user["username"], "Ana_P");
    assert_eq!(user["full_name"], "Ana Pérez");
    assert_eq!(user["is_active"], true);
    assert_eq!(user["is_superuser"], false);
    assert_eq!(user["updated_at"], Value::Null);
    let created = user["created_at"].as_str().expect("created_at");
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    let keys: Vec<&String> = user.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 8, "{keys:?}");
    assert!(!user.to_string().contains("password") && !user.to_string().contains("argon2"));
    // The password works, so it was stored (as a hash) untruncated.
    host.login("ana@example.com", "pässwörd-1")
        .await
        .expect(200, None);
    host.login("ana@example.com", "pässwörd-")
        .await
        .expect(401, None);
}

async fn register_lists_every_validation_problem(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let reply = host
        .post_json(
            "/api/v1/auth/register",
            json!({"email": "not-an-email", "username": "a!", "password": "short", "admin": true}),
        )
        .await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    let locs: Vec<String> = reply.body["detail"]
        .as_array()
        .expect("detail list")
        .iter()
        .map(|issue| {
            assert!(
                issue["msg"].is_string() && issue["type"].is_string(),
                "{issue}"
            );
            issue["loc"][1].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    for field in ["email", "username", "password", "admin"] {
        assert!(
            locs.contains(&field.to_owned()),
            "{field} missing from {locs:?}"
        );
    }

    // Missing fields, wrong types, bad JSON, a non-object, too long values.
    let reply = host
        .post_json("/api/v1/auth/register", json!({"email": 5}))
        .await;
    reply.expect(422, Some("VALIDATION_ERROR"));
    assert_eq!(reply.body["detail"].as_array().map(Vec::len), Some(3));
    let raw = host
        .client
        .post(host.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_eq!(raw.status(), 422);
    host.post_json("/api/v1/auth/register", json!([1, 2]))
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    let long_password = "p".repeat(129);
    host.register("long@example.com", "long", &long_password)
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    let longest = "p".repeat(128);
    host.register("long@example.com", "long", &longest)
        .await
        .expect(201, None);
    host.register("u@example.com", &"u".repeat(51), "password1")
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    // Nothing was created by the failures.
    host.login("not-an-email", "short").await.expect(401, None);
}

async fn register_rejects_taken_email_and_username_case_insensitively(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    host.register("bob@example.com", "Bob", "password1")
        .await
        .expect(201, None);
    host.register("BOB@example.com", "other", "password1")
        .await
        .expect(409, Some("EMAIL_TAKEN"));
    host.register("new@example.com", "bOB", "password1")
        .await
        .expect(409, Some("USERNAME_TAKEN"));
}

async fn ten_parallel_registrations_of_one_email_give_one_user(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let host = std::sync::Arc::new(host);
    let attempts: Vec<_> = (0..10)
        .map(|i| {
            let host = host.clone();
            tokio::spawn(async move {
                host.register("race@example.com", &format!("racer{i}"), "password1")
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        let reply = attempt.await.expect("join");
        match reply.status {
            201 => created += 1,
            409 => assert_eq!(reply.code(), "EMAIL_TAKEN"),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(created, 1);
}

async fn login_with_json_or_oauth2_form_returns_a_token_pair(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let user = host
        .register("cyd@example.com", "cyd", "password1")
        .await
        .body;

    let reply = host.login("CYD@example.com", "password1").await;
    reply.expect(200, None);
    assert_eq!(reply.body["token_type"], "bearer");
    assert_eq!(reply.body["expires_in"], 1800);
    let (header, claims) = jwt_parts(reply.body["access_token"].as_str().expect("access"));
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], user["id"].to_string());
    assert_eq!(claims["type"], "access");
    for claim in ["iat", "nbf", "exp", "jti", "iss", "aud"] {
        assert!(!claims[claim].is_null(), "{claim} missing: {claims}");
    }
    assert_eq!(
        claims["exp"].as_u64().unwrap_or_default() - claims["iat"].as_u64().unwrap_or_default(),
        1800
    );
    let (_, refresh) = jwt_parts(reply.body["refresh_token"].as_str().expect("refresh"));
    assert_eq!(refresh["type"], "refresh");
    assert_eq!(
        refresh["exp"].as_u64().unwrap_or_default() - refresh["iat"].as_u64().unwrap_or_default(),
        604_800
    );

    // OAuth2 password flow: form-encoded, `username` may be the email or the username.
    for login in ["cyd@example.com", "cyd", "CYD"] {
        let reply = host
            .post_form(
                "/api/v1/auth/login",
                &[
                    ("grant_type", "password"),
                    ("username", login),
                    ("password", "password1"),
                ],
            )
            .await;
        reply.expect(200, None);
        assert!(reply.body["access_token"].is_string());
    }
    host.post_form("/api/v1/auth/login", &[("username", "cyd")])
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    host.post_json("/api/v1/auth/login", json!({"email": "cyd@example.com"}))
        .await
        .expect(422, Some("VALIDATION_ERROR"));
}

async fn login_failures_look_the_same(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (dee, _) = host.user("dee").await;
    host.call(
        Method::PATCH,
        &format!("/api/v1/users/{}", dee["id"]),
        Some(&root.access),
        Some(json!({"is_active": false})),
    )
    .await
    .expect(200, None);
    host.user("eve").await;

    let unknown = host.login("nobody@example.com", "password-eve").await;
    let wrong = host.login("eve@example.com", "password-dee").await;
    let inactive = host.login("dee@example.com", "password-dee").await;
    for reply in [&unknown, &wrong, &inactive] {
        reply.expect(401, Some("INVALID_CREDENTIALS"));
    }
    assert_eq!(unknown.body, wrong.body);
    assert_eq!(unknown.body, inactive.body);

    // About the same time: an unknown account still pays for one argon2 verification.
    let time = |login: &'static str, password: &'static str| {
        let host = &host;
        async move {
            let started = std::time::Instant::now();
            for _ in 0..3 {
                host.login(login, password).await;
            }
            started.elapsed()
        }
    };
    let unknown_time = time("nobody@example.com", "password-eve").await;
    let wrong_time = time("eve@example.com", "password-dee").await;
    let ratio = unknown_time.as_secs_f64() / wrong_time.as_secs_f64();
    assert!(
        (0.33..3.0).contains(&ratio),
        "unknown {unknown_time:?} vs wrong password {wrong_time:?}"
    );
}

async fn refresh_rotates_and_reuse_revokes_the_chain(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, first) = host.user("fay").await;

    let second = host
        .post_json(
            "/api/v1/auth/refresh",
            json!({"refresh_token": first.refresh}),
        )
        .await;
    second.expect(200, None);
    let second_refresh = second.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(second_refresh, first.refresh);
    let second_access = second.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    host.get_as("/api/v1/users/me", &second_access)
        .await
        .expect(200, None);

    let third = host
        .post_json(
            "/api/v1/auth/refresh",
            json!({"refresh_token": second_refresh}),
        )
        .await;
    third.expect(200, None);
    let newest = third.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();

    // Presenting a retired token again is reuse: 401, and the whole chain dies.
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": first.refresh}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
    host.post_json("/api/v1/auth/refresh", json!({"refresh_token": newest}))
        .await
        .expect(401, Some("INVALID_TOKEN"));

    // Another login starts a new, independent chain.
    let fresh = host.tokens("fay@example.com", "password-fay").await;
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": fresh.refresh}),
    )
    .await
    .expect(200, None);
    host.post_json("/api/v1/auth/refresh", json!({"refresh_token": "garbage"}))
        .await
        .expect(401, Some("INVALID_TOKEN"));
    host.post_json("/api/v1/auth/refresh", json!({}))
        .await
        .expect(422, Some("VALIDATION_ERROR"));
}

/// The rotation's answer arrived, so presenting the token it retired again, at once, is
/// reuse (the record kept for retrying a rotation whose answer was lost is gone).
async fn a_token_presented_again_right_after_its_rotation_is_reuse(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, first) = host.user("gil").await;
    let second = refresh(&host, &first.refresh).await;
    second.expect(200, None);
    refresh(&host, &first.refresh)
        .await
        .expect(401, Some("INVALID_TOKEN"));
    refresh(&host, &refresh_token_of(&second))
        .await
        .expect(401, Some("INVALID_TOKEN"));
}

async fn token_types_are_not_interchangeable(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, tokens) = host.user("gus").await;
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": tokens.access}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
    let reply = host.get_as("/api/v1/users/me", &tokens.refresh).await;
    reply.expect(401, Some("NOT_AUTHENTICATED"));
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
}

async fn logout_revokes_the_chain_and_the_access_token(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, tokens) = host.user("hal").await;
    let other = host.tokens("hal@example.com", "password-hal").await;

    let reply = host
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            Some(&tokens.access),
            Some(json!({"refresh_token": tokens.refresh})),
        )
        .await;
    reply.expect(204, None);
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": tokens.refresh}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
    host.get_as("/api/v1/users/me", &tokens.access)
        .await
        .expect(401, Some("NOT_AUTHENTICATED"));
    // The other session is untouched.
    host.get_as("/api/v1/users/me", &other.access)
        .await
        .expect(200, None);
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": other.refresh}),
    )
    .await
    .expect(200, None);
    // Logging out without a bearer token works too; a bad refresh token is 401.
    host.post_json("/api/v1/auth/logout", json!({"refresh_token": "nope"}))
        .await
        .expect(401, Some("INVALID_TOKEN"));
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing")
}

async fn forged_and_expired_tokens_are_refused(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (user, tokens) = host.user("ida").await;
    let (_, good) = jwt_parts(&tokens.access);
    assert_eq!(good["sub"], user["id"].to_string());
    host.get_as("/api/v1/users/me", &sign(&good, TEST_JWT_SECRET))
        .await
        .expect(200, None);

    let now = good["iat"].as_u64().unwrap_or_default();
    let mut expired = good.clone();
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_type = good.clone();
    wrong_type["type"] = json!("refresh");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now + 3600);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(good.to_string());
    let alg_none = format!("{header}.{payload}.");

    for (what, token) in [
        ("alg none", alg_none),
        (
            "wrong key",
            sign(&good, "another-secret-another-secret-another-secret"),
        ),
        ("expired", sign(&expired, TEST_JWT_SECRET)),
        ("wrong type", sign(&wrong_type, TEST_JWT_SECRET)),
        ("wrong audience", sign(&wrong_aud, TEST_JWT_SECRET)),
        ("not yet valid", sign(&not_yet, TEST_JWT_SECRET)),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let reply = host.get_as("/api/v1/users/me", &token).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert_eq!(reply.code(), "NOT_AUTHENTICATED", "{what}");
        assert_eq!(reply.headers["www-authenticate"], "Bearer", "{what}");
    }
    // No token, and a non-bearer scheme.
    let reply = host.call(Method::GET, "/api/v1/users/me", None, None).await;
    reply.expect(401, Some("NOT_AUTHENTICATED"));
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    let basic = host
        .client
        .get(host.url("/api/v1/users/me"))
        .basic_auth("ida", Some("password-ida"))
        .send()
        .await
        .expect("GET");
    assert_eq!(basic.status(), 401);
}

async fn refresh(host: &TestHost, refresh_token: &str) -> plinth_tests::api::Reply {
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": refresh_token}),
    )
    .await
}

fn refresh_token_of(reply: &plinth_tests::api::Reply) -> String {
    reply.body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

/// Races are probabilistic: enough rounds that the old unconditional rotation lost one.
const RACE_ROUNDS: usize = 15;

async fn concurrent_refreshes_with_one_token_leave_no_live_chain_behind(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, _) = host.user("ivy").await;
    for round in 0..RACE_ROUNDS {
        let tokens = host.tokens("ivy@example.com", "password-ivy").await;
        let (a, b) = tokio::join!(
            refresh(&host, &tokens.refresh),
            refresh(&host, &tokens.refresh)
        );
        let winners: Vec<&plinth_tests::api::Reply> =
            [&a, &b].into_iter().filter(|r| r.status == 200).collect();
        assert!(
            winners.len() <= 1,
            "round {round}: one token gave two pairs ({}, {})",
            a.body,
            b.body
        );
        for reply in [&a, &b] {
            assert!(
                reply.status == 200 || (reply.status == 401 && reply.code() == "INVALID_TOKEN"),
                "round {round}: {} {}",
                reply.status,
                reply.body
            );
        }
        let reuse_seen = a.status == 401 || b.status == 401;
        if let (Some(winner), true) = (winners.first(), reuse_seen) {
            refresh(&host, &refresh_token_of(winner))
                .await
                .expect(401, Some("INVALID_TOKEN"));
        }
    }
}

/// Waits `delay` with finer grain than tokio's millisecond timer.
async fn pause(delay: std::time::Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < delay {
        tokio::task::yield_now().await;
    }
}

async fn logout_racing_refresh_leaves_the_chain_dead(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, _) = host.user("jay").await;
    for round in 0..2 * RACE_ROUNDS {
        let tokens = host.tokens("jay@example.com", "password-jay").await;
        // Which one wins depends on timing: shift the logout from well before to well
        // after the refresh, so that some rounds land in the middle of the rotation.
        let offset = 100 * (round as i64 - RACE_ROUNDS as i64);
        let early = std::time::Duration::from_micros(offset.unsigned_abs());
        let (refreshed, logged_out) = tokio::join!(
            async {
                if offset < 0 {
                    pause(early).await;
                }
                refresh(&host, &tokens.refresh).await
            },
            async {
                if offset > 0 {
                    pause(early).await;
                }
                host.post_json(
                    "/api/v1/auth/logout",
                    json!({"refresh_token": tokens.refresh}),
                )
                .await
            }
        );
        logged_out.expect(204, None);
        // Whichever came first, logging out with a chain's token ends that chain.
        if refreshed.status == 200 {
            let reply = refresh(&host, &refresh_token_of(&refreshed)).await;
            assert_eq!(
                (reply.status, reply.code()),
                (401, "INVALID_TOKEN"),
                "round {round}: the refreshed chain survived its logout"
            );
        } else {
            refreshed.expect(401, Some("INVALID_TOKEN"));
        }
    }
}

async fn a_chain_cannot_be_refreshed_past_its_max_lifetime(backend: Backend) {
    let plugins = plinth_tests::PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env("REFRESH_TOKEN_MAX_LIFETIME", "3")
        .start(&plugins);
    let (_, tokens) = host.user("kim").await;
    let (_, first_claims) = jwt_parts(&tokens.refresh);
    let chain_start = first_claims["iat"].as_u64().expect("iat");
    assert!(first_claims["exp"].as_u64().expect("exp") <= chain_start + 3);

    let renewed = refresh(&host, &tokens.refresh).await;
    renewed.expect(200, None);
    let newest = refresh_token_of(&renewed);
    let (_, claims) = jwt_parts(&newest);
    assert!(
        claims["exp"].as_u64().expect("exp") <= chain_start + 3,
        "a renewed token outlives its chain: {claims}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    refresh(&host, &newest)
        .await
        .expect(401, Some("INVALID_TOKEN"));
    // A new login starts a new chain.
    let fresh = host.tokens("kim@example.com", "password-kim").await;
    refresh(&host, &fresh.refresh).await.expect(200, None);
}
