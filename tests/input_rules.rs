//! What the API accepts, identically on SQLite and PostgreSQL + Redis (docs/API.md "Users",
//! "Auth", the error table): no control characters in text, JSON bodies only as JSON (415),
//! an empty refresh token is a bad token (401), and logout is idempotent.

use plinth_tests::api::Reply;
use plinth_tests::{Backend, TestHost, on_both_backends};
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    control_characters_are_refused_in_every_text_field,
    a_login_with_control_characters_is_just_a_failed_login,
    an_empty_refresh_token_is_an_invalid_token,
    logout_answers_204_for_any_genuine_refresh_token,
    json_routes_refuse_bodies_not_sent_as_json,
);

const CONTROL_CHARACTERS: [&str; 6] = ["\u{0}", "\u{1}", "\t", "\n", "\u{1f}", "\u{7f}"];

#[track_caller]
fn expect_field_problem(reply: &Reply, field: &str) {
    reply.expect(422, Some("VALIDATION_ERROR"));
    let problems = reply.body["detail"].as_array().expect("detail list");
    assert!(
        problems.iter().any(|p| p["loc"] == json!(["body", field])),
        "{field} not named: {}",
        reply.body
    );
}

async fn send(host: &TestHost, method: Method, path: &str, token: &str, body: Value) -> Reply {
    host.call(method, path, Some(token), Some(body)).await
}

async fn control_characters_are_refused_in_every_text_field(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (ana, tokens) = host.user("ana").await;
    let ana_path = format!("/api/v1/users/{}", ana["id"]);

    for control in CONTROL_CHARACTERS {
        let name = format!("Ana{control}Pérez");
        let reply = host
            .post_json(
                "/api/v1/auth/register",
                json!({"email": "bea@example.com", "username": "bea",
                       "password": "password-bea", "full_name": name}),
            )
            .await;
        expect_field_problem(&reply, "full_name");
        let reply = send(
            &host,
            Method::POST,
            "/api/v1/users",
            &root.access,
            json!({"email": "bea@example.com", "username": "bea",
                   "password": "password-bea", "full_name": name}),
        )
        .await;
        expect_field_problem(&reply, "full_name");
        let reply = send(
            &host,
            Method::PATCH,
            "/api/v1/users/me",
            &tokens.access,
            json!({"full_name": name}),
        )
        .await;
        expect_field_problem(&reply, "full_name");
        let reply = send(
            &host,
            Method::PATCH,
            &ana_path,
            &root.access,
            json!({"full_name": name}),
        )
        .await;
        expect_field_problem(&reply, "full_name");

        // Email (even where trimming would hide it) and password too.
        let reply = host
            .register(&format!("bea@example.com{control}"), "bea", "password-bea")
            .await;
        expect_field_problem(&reply, "email");
        let reply = host
            .register("bea@example.com", "bea", &format!("password{control}bea"))
            .await;
        expect_field_problem(&reply, "password");
    }

    // Nothing was stored along the way.
    let me = host.get_as("/api/v1/users/me", &tokens.access).await;
    me.expect(200, None);
    assert_eq!(me.body["full_name"], Value::Null);
    host.login("bea@example.com", "password-bea")
        .await
        .expect(401, Some("INVALID_CREDENTIALS"));
}

async fn a_login_with_control_characters_is_just_a_failed_login(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    host.user("cai").await;
    for control in CONTROL_CHARACTERS {
        host.login(&format!("cai{control}@example.com"), "password-cai")
            .await
            .expect(401, Some("INVALID_CREDENTIALS"));
        host.login(&format!("cai@example.com{control}"), "password-cai")
            .await
            .expect(401, Some("INVALID_CREDENTIALS"));
        host.post_form(
            "/api/v1/auth/login",
            &[
                ("username", &format!("cai{control}")),
                ("password", "password-cai"),
            ],
        )
        .await
        .expect(401, Some("INVALID_CREDENTIALS"));
    }
    host.login("cai@example.com", "password-cai")
        .await
        .expect(200, None);
}

async fn an_empty_refresh_token_is_an_invalid_token(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    for path in ["/api/v1/auth/refresh", "/api/v1/auth/logout"] {
        let reply = host.post_json(path, json!({"refresh_token": ""})).await;
        reply.expect(401, Some("INVALID_TOKEN"));
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        // Absent is still a validation problem.
        let reply = host.post_json(path, json!({})).await;
        reply.expect(422, Some("VALIDATION_ERROR"));
        assert_eq!(reply.body["detail"][0]["type"], "missing");
    }
}

async fn refresh(host: &TestHost, refresh_token: &str) -> Reply {
    host.post_json(
        "/api/v1/auth/refresh",
        json!({"refresh_token": refresh_token}),
    )
    .await
}

async fn logout(host: &TestHost, refresh_token: &str) -> Reply {
    host.post_json(
        "/api/v1/auth/logout",
        json!({"refresh_token": refresh_token}),
    )
    .await
}

async fn logout_answers_204_for_any_genuine_refresh_token(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    let (_, first) = host.user("dan").await;

    // A retired refresh token (rotated away): 204, and its chain is revoked, newest included.
    let rotated = refresh(&host, &first.refresh).await;
    rotated.expect(200, None);
    let newest = rotated.body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    logout(&host, &first.refresh).await.expect(204, None);
    refresh(&host, &newest)
        .await
        .expect(401, Some("INVALID_TOKEN"));
    // Logging out again, with either token of the dead chain: still 204.
    logout(&host, &first.refresh).await.expect(204, None);
    logout(&host, &newest).await.expect(204, None);

    // A refresh token revoked by a password change: 204 as well.
    let session = host.tokens("dan@example.com", "password-dan").await;
    send(
        &host,
        Method::PUT,
        "/api/v1/users/me/password",
        &session.access,
        json!({"current_password": "password-dan", "new_password": "password-dan-2"}),
    )
    .await
    .expect(204, None);
    refresh(&host, &session.refresh)
        .await
        .expect(401, Some("INVALID_TOKEN"));
    logout(&host, &session.refresh).await.expect(204, None);

    // What is not a genuine token stays 401.
    let mut forged = session.refresh.clone();
    forged.push('x');
    for bad in ["not-a-jwt", forged.as_str(), session.access.as_str()] {
        logout(&host, bad).await.expect(401, Some("INVALID_TOKEN"));
    }
}

/// Sends `body` to `path` with `content_type` (none when `None`).
async fn raw(
    host: &TestHost,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> Reply {
    let mut request = host
        .client
        .request(method, host.url(path))
        .body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn json_routes_refuse_bodies_not_sent_as_json(backend: Backend) {
    let (_plugins, host, root) = TestHost::start_api_with_root(&backend).await;
    let (eve, tokens) = host.user("eve").await;
    let eve_path = format!("/api/v1/users/{}", eve["id"]);
    let register = r#"{"email": "fay@example.com", "username": "fay", "password": "password-fay"}"#;

    // What a cross-site HTML form can send (text/plain, multipart) or no type at all.
    for content_type in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let reply = raw(
            &host,
            Method::POST,
            "/api/v1/auth/register",
            None,
            content_type,
            register,
        )
        .await;
        reply.expect(415, Some("UNSUPPORTED_MEDIA_TYPE"));
        assert!(reply.body["detail"].is_string(), "{}", reply.body);
        let refresh_body = format!(r#"{{"refresh_token": "{}"}}"#, tokens.refresh);
        for path in ["/api/v1/auth/refresh", "/api/v1/auth/logout"] {
            raw(&host, Method::POST, path, None, content_type, &refresh_body)
                .await
                .expect(415, Some("UNSUPPORTED_MEDIA_TYPE"));
        }
        let authenticated = [
            (
                Method::PATCH,
                "/api/v1/users/me",
                &tokens.access,
                r#"{"full_name": "Eve"}"#,
            ),
            (
                Method::PUT,
                "/api/v1/users/me/password",
                &tokens.access,
                r#"{"current_password": "password-eve", "new_password": "password-eve-2"}"#,
            ),
            (Method::POST, "/api/v1/users", &root.access, register),
            (
                Method::PATCH,
                eve_path.as_str(),
                &root.access,
                r#"{"full_name": "Eve"}"#,
            ),
        ];
        for (method, path, token, body) in authenticated {
            raw(&host, method, path, Some(token), content_type, body)
                .await
                .expect(415, Some("UNSUPPORTED_MEDIA_TYPE"));
        }
    }
    // Login alone also takes the OAuth2 form; anything else is 415 there too.
    let form = "username=eve&password=password-eve";
    raw(
        &host,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some("text/plain"),
        form,
    )
    .await
    .expect(415, Some("UNSUPPORTED_MEDIA_TYPE"));
    raw(
        &host,
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some("application/x-www-form-urlencoded"),
        form,
    )
    .await
    .expect(200, None);

    // JSON with parameters, in any case, is JSON.
    raw(
        &host,
        Method::POST,
        "/api/v1/auth/register",
        None,
        Some("Application/JSON; charset=utf-8"),
        register,
    )
    .await
    .expect(201, None);
    // Nothing was changed by the refused requests.
    let me = host.get_as("/api/v1/users/me", &tokens.access).await;
    me.expect(200, None);
    assert_eq!(me.body["full_name"], Value::Null);
    // A request that needs no body needs no content type either.
    raw(
        &host,
        Method::DELETE,
        "/api/v1/users/me",
        Some(&tokens.access),
        None,
        "",
    )
    .await
    .expect(204, None);
}
