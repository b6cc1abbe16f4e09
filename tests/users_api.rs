//! docs/API.md "Users": every row with its success and each listed error, on SQLite and on
//! PostgreSQL + Redis; plus start-up data and a database outage.

use plinth_tests::{Backend, PluginsDir, TestHost, on_both_backends};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    first_superuser_is_created_once,
    me_can_be_read_updated_and_deleted,
    patch_me_validates_and_detects_conflicts,
    password_change_checks_and_revokes_sessions,
    superuser_lists_users_in_pages,
    superuser_creates_users,
    reading_a_user_is_403_before_404_for_non_superusers,
    superuser_updates_and_deactivates_users,
    superuser_deletes_users_but_not_themself,
    no_change_leaves_no_active_superuser,
    two_superusers_demoting_each_other_at_once_leave_one,
    deactivated_or_deleted_users_tokens_stop_working_on_every_route,
    revocation_does_not_depend_on_the_issuing_hosts_clock,
);

async fn patch(host: &TestHost, path: &str, token: &str, body: Value) -> plinth_tests::api::Reply {
    host.call(Method::PATCH, path, Some(token), Some(body))
        .await
}

async fn delete(host: &TestHost, path: &str, token: &str) -> plinth_tests::api::Reply {
    host.call(Method::DELETE, path, Some(token), None).await
}

async fn first_superuser_is_created_once(backend: Backend) {
    let (plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let me = host.get_as("/api/v1/users/me", &root.access).await;
    me.expect(200, None);
    assert_eq!(me.body["is_superuser"], true);
    assert_eq!(me.body["username"], "root");
    drop(host);
    // A second start with the same variables finds the user and creates nothing.
    let again = TestHost::builder()
        .backend(&backend)
        .with_root()
        .start(&plugins);
    if let Backend::Postgres { .. } = backend {
        let root = again.root_tokens().await;
        let list = again.get_as("/api/v1/users/", &root.access).await;
        list.expect(200, None);
        assert_eq!(list.body["total"], 1);
    }
}

async fn me_can_be_read_updated_and_deleted(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (user, tokens) = host.user("joy").await;
    let me = host.get_as("/api/v1/users/me", &tokens.access).await;
    me.expect(200, None);
    assert_eq!(me.body, user);

    let updated = patch(
        &host,
        "/api/v1/users/me",
        &tokens.access,
        json!({"full_name": "Jo March", "email": "JO.MARCH@example.com", "username": "jo.m"}),
    )
    .await;
    updated.expect(200, None);
    assert_eq!(updated.body["full_name"], "Jo March");
    assert_eq!(updated.body["email"], "jo.march@example.com");
    assert_eq!(updated.body["username"], "jo.m");
    assert!(
        updated.body["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(updated.body["created_at"], user["created_at"]);
    // full_name can be cleared.
    let cleared = patch(
        &host,
        "/api/v1/users/me",
        &tokens.access,
        json!({"full_name": null}),
    )
    .await;
    cleared.expect(200, None);
    assert_eq!(cleared.body["full_name"], Value::Null);

    delete(&host, "/api/v1/users/me", &tokens.access)
        .await
        .expect(204, None);
    // A deleted user's tokens stop working at once.
    host.get_as("/api/v1/users/me", &tokens.access)
        .await
        .expect(401, Some("NOT_AUTHENTICATED"));
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": tokens.refresh}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
    host.login("jo.march@example.com", "password-joy")
        .await
        .expect(401, None);
}

async fn patch_me_validates_and_detects_conflicts(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    host.user("kay").await;
    let (_, tokens) = host.user("lou").await;
    for body in [
        json!({"is_superuser": true}),
        json!({"password": "new-password"}),
        json!({"email": "nope"}),
        json!({"username": "x"}),
        json!({"email": null}),
    ] {
        patch(&host, "/api/v1/users/me", &tokens.access, body.clone())
            .await
            .expect(422, Some("VALIDATION_ERROR"));
    }
    patch(
        &host,
        "/api/v1/users/me",
        &tokens.access,
        json!({"email": "KAY@example.com"}),
    )
    .await
    .expect(409, Some("EMAIL_TAKEN"));
    patch(
        &host,
        "/api/v1/users/me",
        &tokens.access,
        json!({"username": "KAY"}),
    )
    .await
    .expect(409, Some("USERNAME_TAKEN"));
    // Nothing changed.
    let me = host.get_as("/api/v1/users/me", &tokens.access).await;
    assert_eq!(me.body["email"], "lou@example.com");
    assert_eq!(me.body["is_superuser"], false);
}

async fn password_change_checks_and_revokes_sessions(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, tokens) = host.user("max").await;
    let second = host.tokens("max@example.com", "password-max").await;
    let put = |body: Value| {
        let host = &host;
        let token = tokens.access.clone();
        async move {
            host.call(
                Method::PUT,
                "/api/v1/users/me/password",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    put(json!({"current_password": "wrong-password", "new_password": "brand-new-1"}))
        .await
        .expect(400, Some("INCORRECT_PASSWORD"));
    put(json!({"current_password": "password-max", "new_password": "short"}))
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    put(json!({"current_password": "password-max", "new_password": "password-max"}))
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    put(json!({"current_password": "password-max"}))
        .await
        .expect(422, Some("VALIDATION_ERROR"));
    let reply =
        put(json!({"current_password": "password-max", "new_password": "brand-new-1"})).await;
    reply.expect(204, None);
    assert_eq!(reply.body, Value::Null);

    // Every refresh chain of the user is revoked; the new password works, the old does not.
    for refresh in [&tokens.refresh, &second.refresh] {
        host.post_json("/api/v1/auth/refresh", json!({"refresh_token": refresh}))
            .await
            .expect(401, Some("INVALID_TOKEN"));
    }
    host.login("max@example.com", "password-max")
        .await
        .expect(401, None);
    let fresh = host.tokens("max@example.com", "brand-new-1").await;
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": fresh.refresh}),
    )
    .await
    .expect(200, None);
}

async fn superuser_lists_users_in_pages(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (_, normal) = host.user("ned").await;
    for name in ["ola", "pia", "quin"] {
        host.register(&format!("{name}@example.com"), name, "password1")
            .await
            .expect(201, None);
    }
    let all = host.get_as("/api/v1/users/", &root.access).await;
    all.expect(200, None);
    assert_eq!(all.body["total"], 5);
    assert_eq!(all.body["offset"], 0);
    assert_eq!(all.body["limit"], 50);
    let ids: Vec<i64> = all.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| u["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ordered by id: {ids:?}"
    );
    assert!(!all.body.to_string().contains("hashed_password"));

    let page = host
        .get_as("/api/v1/users?offset=1&limit=2", &root.access)
        .await;
    page.expect(200, None);
    assert_eq!(page.body["total"], 5);
    assert_eq!(page.body["offset"], 1);
    assert_eq!(page.body["limit"], 2);
    let page_ids: Vec<i64> = page.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| u["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(page_ids, ids[1..3]);

    for query in ["limit=0", "limit=101", "offset=-1", "limit=abc"] {
        host.get_as(&format!("/api/v1/users/?{query}"), &root.access)
            .await
            .expect(422, Some("VALIDATION_ERROR"));
    }
    host.get_as("/api/v1/users/?limit=100", &root.access)
        .await
        .expect(200, None);
    host.get_as("/api/v1/users/", &normal.access)
        .await
        .expect(403, Some("FORBIDDEN"));
}

async fn superuser_creates_users(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (_, normal) = host.user("rae").await;
    let body = json!({"email": "Sam@Example.com", "username": "sam", "password": "password1",
                      "full_name": "Sam", "is_superuser": true, "is_active": true});
    host.call(
        Method::POST,
        "/api/v1/users/",
        Some(&normal.access),
        Some(body.clone()),
    )
    .await
    .expect(403, Some("FORBIDDEN"));
    let created = host
        .call(
            Method::POST,
            "/api/v1/users/",
            Some(&root.access),
            Some(body.clone()),
        )
        .await;
    created.expect(201, None);
    assert_eq!(created.body["email"], "sam@example.com");
    assert_eq!(created.body["is_superuser"], true);
    host.call(
        Method::POST,
        "/api/v1/users/",
        Some(&root.access),
        Some(body),
    )
    .await
    .expect(409, Some("EMAIL_TAKEN"));
    host.call(
        Method::POST,
        "/api/v1/users",
        Some(&root.access),
        Some(json!({"email": "t@example.com", "username": "t"})),
    )
    .await
    .expect(422, Some("VALIDATION_ERROR"));
    // Defaults: active, not a superuser; the new user can log in.
    let plain = host
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&root.access),
            Some(json!({"email": "uma@example.com", "username": "uma", "password": "password1"})),
        )
        .await;
    plain.expect(201, None);
    assert_eq!(plain.body["is_active"], true);
    assert_eq!(plain.body["is_superuser"], false);
    host.login("uma", "password1").await.expect(200, None);
}

async fn reading_a_user_is_403_before_404_for_non_superusers(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (vic, vic_tokens) = host.user("vic").await;
    let (wes, _) = host.user("wes").await;
    let own = host
        .get_as(&format!("/api/v1/users/{}", vic["id"]), &vic_tokens.access)
        .await;
    own.expect(200, None);
    assert_eq!(own.body, vic);
    host.get_as(&format!("/api/v1/users/{}", wes["id"]), &vic_tokens.access)
        .await
        .expect(403, Some("FORBIDDEN"));
    host.get_as("/api/v1/users/999999", &vic_tokens.access)
        .await
        .expect(403, Some("FORBIDDEN"));
    host.get_as("/api/v1/users/999999", &root.access)
        .await
        .expect(404, Some("NOT_FOUND"));
    host.get_as(&format!("/api/v1/users/{}", wes["id"]), &root.access)
        .await
        .expect(200, None);
    host.get_as("/api/v1/users/abc", &root.access)
        .await
        .expect(422, Some("VALIDATION_ERROR"));
}

async fn superuser_updates_and_deactivates_users(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (xia, xia_tokens) = host.user("xia").await;
    let (_, yul_tokens) = host.user("yul").await;
    let path = format!("/api/v1/users/{}", xia["id"]);
    patch(&host, &path, &yul_tokens.access, json!({"full_name": "X"}))
        .await
        .expect(403, Some("FORBIDDEN"));
    patch(
        &host,
        "/api/v1/users/999999",
        &root.access,
        json!({"full_name": "X"}),
    )
    .await
    .expect(404, Some("NOT_FOUND"));
    patch(&host, &path, &root.access, json!({"username": "yul"}))
        .await
        .expect(409, Some("USERNAME_TAKEN"));
    patch(&host, &path, &root.access, json!({"colour": "red"}))
        .await
        .expect(422, Some("VALIDATION_ERROR"));

    let updated = patch(
        &host,
        &path,
        &root.access,
        json!({"full_name": "Xia Li", "is_superuser": true, "password": "reset-password"}),
    )
    .await;
    updated.expect(200, None);
    assert_eq!(updated.body["full_name"], "Xia Li");
    assert_eq!(updated.body["is_superuser"], true);
    assert!(updated.body["updated_at"].is_string());
    host.login("xia", "reset-password").await.expect(200, None);

    // Deactivation: the user's existing tokens answer 401 on the next request.
    let fresh = host.tokens("xia", "reset-password").await;
    patch(&host, &path, &root.access, json!({"is_active": false}))
        .await
        .expect(200, None);
    for token in [&xia_tokens.access, &fresh.access] {
        host.get_as("/api/v1/users/me", token)
            .await
            .expect(401, Some("NOT_AUTHENTICATED"));
    }
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": fresh.refresh}),
    )
    .await
    .expect(401, Some("INVALID_TOKEN"));
}

async fn superuser_deletes_users_but_not_themself(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (zed, zed_tokens) = host.user("zed").await;
    let (abe, abe_tokens) = host.user("abe").await;
    let root_id = host.get_as("/api/v1/users/me", &root.access).await.body["id"].clone();

    delete(
        &host,
        &format!("/api/v1/users/{}", abe["id"]),
        &zed_tokens.access,
    )
    .await
    .expect(403, Some("FORBIDDEN"));
    delete(&host, &format!("/api/v1/users/{root_id}"), &root.access)
        .await
        .expect(403, Some("FORBIDDEN"));
    delete(&host, "/api/v1/users/me", &root.access)
        .await
        .expect(403, Some("FORBIDDEN"));
    delete(&host, "/api/v1/users/999999", &root.access)
        .await
        .expect(404, Some("NOT_FOUND"));
    delete(&host, &format!("/api/v1/users/{}", zed["id"]), &root.access)
        .await
        .expect(204, None);
    host.get_as("/api/v1/users/me", &zed_tokens.access)
        .await
        .expect(401, Some("NOT_AUTHENTICATED"));
    host.get_as(&format!("/api/v1/users/{}", zed["id"]), &root.access)
        .await
        .expect(404, Some("NOT_FOUND"));
    host.get_as("/api/v1/users/me", &abe_tokens.access)
        .await
        .expect(200, None);
}

async fn no_change_leaves_no_active_superuser(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let root_id = host.get_as("/api/v1/users/me", &root.access).await.body["id"].clone();
    let me = format!("/api/v1/users/{root_id}");
    // The only active superuser can neither demote nor deactivate themself.
    for change in [json!({"is_superuser": false}), json!({"is_active": false})] {
        patch(&host, &me, &root.access, change.clone())
            .await
            .expect(409, Some("LAST_SUPERUSER"));
    }
    host.get_as("/api/v1/users/me", &root.access)
        .await
        .expect(200, None);

    // With a second superuser, one may go; then the other is the last again.
    let (bea, _) = host.user("bea").await;
    let bea_path = format!("/api/v1/users/{}", bea["id"]);
    patch(
        &host,
        &bea_path,
        &root.access,
        json!({"is_superuser": true}),
    )
    .await
    .expect(200, None);
    let bea_tokens = host.tokens("bea@example.com", "password-bea").await;
    patch(
        &host,
        &me,
        &bea_tokens.access,
        json!({"is_superuser": false}),
    )
    .await
    .expect(200, None);
    patch(
        &host,
        &bea_path,
        &bea_tokens.access,
        json!({"is_active": false}),
    )
    .await
    .expect(409, Some("LAST_SUPERUSER"));
    // Deleting a superuser is checked the same way: root (now a plain user) is deleted,
    // and bea still cannot be.
    delete(&host, &me, &bea_tokens.access)
        .await
        .expect(204, None);
    let list = host.get_as("/api/v1/users", &bea_tokens.access).await;
    list.expect(200, None);
    assert_eq!(list.body["total"], 1, "{}", list.body);
    assert_eq!(list.body["items"][0]["is_superuser"], true);
}

async fn two_superusers_demoting_each_other_at_once_leave_one(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let root_path = format!(
        "/api/v1/users/{}",
        host.get_as("/api/v1/users/me", &root.access).await.body["id"]
    );
    let (bea, _) = host.user("bea").await;
    let bea_path = format!("/api/v1/users/{}", bea["id"]);
    let bea_tokens = host.tokens("bea@example.com", "password-bea").await;
    patch(
        &host,
        &bea_path,
        &root.access,
        json!({"is_superuser": true}),
    )
    .await
    .expect(200, None);
    for round in 0..5 {
        let demote = json!({"is_superuser": false});
        let (by_root, by_bea) = tokio::join!(
            patch(&host, &bea_path, &root.access, demote.clone()),
            patch(&host, &root_path, &bea_tokens.access, demote.clone()),
        );
        let statuses = [by_root.status, by_bea.status];
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {statuses:?} {} {}",
            by_root.body,
            by_bea.body
        );
        // Restore: the one still a superuser promotes the other.
        let (winner, loser_path) = if by_root.status == 200 {
            (&root, &bea_path)
        } else {
            (&bea_tokens, &root_path)
        };
        let list = host.get_as("/api/v1/users", &winner.access).await;
        let superusers = list.body["items"]
            .as_array()
            .map(|items| items.iter().filter(|u| u["is_superuser"] == true).count());
        assert_eq!(superusers, Some(1), "round {round}: {}", list.body);
        patch(
            &host,
            loser_path,
            &winner.access,
            json!({"is_superuser": true}),
        )
        .await
        .expect(200, None);
    }
}

async fn deactivated_or_deleted_users_tokens_stop_working_on_every_route(backend: Backend) {
    // `hello` behind `auth = "required"`: a plugin that knows nothing of accounts, so
    // only the host's verification stands between a stale token and the route.
    let plugins = PluginsDir::with(&["auth", "users"]);
    plugins.deploy_as("hello", "hello", |m| {
        m.replace(
            "path = \"/hello/{name}\"",
            "path = \"/hello/{name}\"\nauth = \"required\"",
        )
    });
    let host = TestHost::builder()
        .backend(&backend)
        .with_root()
        .start(&plugins);
    let root = host.root_tokens().await;
    let (ann, ann_tokens) = host.user("ann").await;
    let (bob, bob_tokens) = host.user("bob").await;
    for tokens in [&ann_tokens, &bob_tokens] {
        host.get_as("/hello/x", &tokens.access)
            .await
            .expect(200, None);
    }
    patch(
        &host,
        &format!("/api/v1/users/{}", ann["id"]),
        &root.access,
        json!({"is_active": false}),
    )
    .await
    .expect(200, None);
    delete(&host, &format!("/api/v1/users/{}", bob["id"]), &root.access)
        .await
        .expect(204, None);
    for tokens in [&ann_tokens, &bob_tokens] {
        host.get_as("/hello/x", &tokens.access)
            .await
            .expect(401, Some("NOT_AUTHENTICATED"));
    }
    // Reactivated, ann logs in again and is served.
    patch(
        &host,
        &format!("/api/v1/users/{}", ann["id"]),
        &root.access,
        json!({"is_active": true}),
    )
    .await
    .expect(200, None);
    let fresh = host.tokens("ann@example.com", "password-ann").await;
    host.get_as("/hello/x", &fresh.access)
        .await
        .expect(200, None);
}

/// What decides access is read from the primary: with a read replica that lags (here,
/// an empty database standing in for one that has not caught up), login, the current
/// user and a demotion still take effect at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_decided_by_the_primary_not_the_replica() {
    let backend = Backend::postgres();
    let replica = Backend::postgres();
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env(
            "DATABASE_READ_URL",
            replica.database_url().expect("a PostgreSQL URL"),
        )
        .with_root()
        .start(&plugins);
    let root = host.root_tokens().await;
    let (cat, cat_tokens) = host.user("cat").await;
    host.get_as("/api/v1/users/me", &cat_tokens.access)
        .await
        .expect(200, None);
    let cat_path = format!("/api/v1/users/{}", cat["id"]);
    patch(
        &host,
        &cat_path,
        &root.access,
        json!({"is_superuser": true}),
    )
    .await
    .expect(200, None);
    // Promoted on the primary: allowed at once.
    host.get_as(&format!("/api/v1/users/{}", cat["id"]), &cat_tokens.access)
        .await
        .expect(200, None);
    patch(
        &host,
        &cat_path,
        &root.access,
        json!({"is_superuser": false}),
    )
    .await
    .expect(200, None);
    let root_path = format!(
        "/api/v1/users/{}",
        host.get_as("/api/v1/users/me", &root.access).await.body["id"]
    );
    // Demoted on the primary: refused at once.
    host.get_as(&root_path, &cat_tokens.access)
        .await
        .expect(403, Some("FORBIDDEN"));
}

/// An access token as a host whose clock runs a minute ahead would issue it: its `jti`
/// (a UUIDv7) carries that host's time. Signed with the test key, like any host's.
fn token_from_a_clock_ahead(subject: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let ahead_ms = (now + 60) * 1000;
    let jti = format!(
        "{:08x}-{:04x}-7abc-8def-0123456789ab",
        ahead_ms >> 16,
        ahead_ms & 0xffff
    );
    let claims = json!({
        "sub": subject, "iat": now, "nbf": now, "exp": now + 600, "jti": jti,
        "iss": "plinth", "aud": "plinth-api", "type": "access",
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(plinth_tests::TEST_JWT_SECRET.as_bytes()),
    )
    .expect("signing")
}

async fn revocation_does_not_depend_on_the_issuing_hosts_clock(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (dan, _) = host.user("dan").await;
    let dan_path = format!("/api/v1/users/{}", dan["id"]);
    let ahead = token_from_a_clock_ahead(&dan["id"].to_string());
    host.get_as("/api/v1/users/me", &ahead)
        .await
        .expect(200, None);
    // Deactivating revokes every access token of dan; reactivating leaves them revoked.
    for active in [false, true] {
        patch(&host, &dan_path, &root.access, json!({"is_active": active}))
            .await
            .expect(200, None);
    }
    // A token from a host whose clock ran ahead is revoked too (a revocation compared
    // with issue times would have let it live for the minute of skew).
    host.get_as("/api/v1/users/me", &ahead)
        .await
        .expect(401, Some("NOT_AUTHENTICATED"));
    let fresh = host.tokens("dan@example.com", "password-dan").await;
    host.get_as("/api/v1/users/me", &fresh.access)
        .await
        .expect(200, None);
}
