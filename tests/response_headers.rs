//! Headers on responses (docs/API.md "Headers on every response", "Cross-cutting behaviour"):
//! `X-Content-Type-Options` everywhere, `Cache-Control: no-store` where tokens travel, and
//! CORS headers only from the host's policy, never from a plugin.

use plinth_tests::{Backend, PluginsDir, TestHost, on_both_backends};
use reqwest::Method;

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn every_response_says_nosniff() {
    let plugins = PluginsDir::with(&["hello", "trap"]);
    let host = TestHost::builder()
        .env("CORS_ALLOWED_ORIGINS", APP)
        .start(&plugins);
    let preflight = host
        .client
        .request(Method::OPTIONS, host.url("/hello/x"))
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("OPTIONS");
    let mut responses = vec![("preflight".to_owned(), preflight)];
    // Host endpoints, a plugin's success, a plugin's failure, the host's own errors.
    for path in ["/health", "/ready", "/hello/x", "/trap", "/nope"] {
        responses.push((path.to_owned(), host.get(path).await));
    }
    let wrong_method = host
        .client
        .delete(host.url("/hello/x"))
        .send()
        .await
        .expect("DELETE");
    responses.push(("405".to_owned(), wrong_method));
    for (what, response) in responses {
        assert_eq!(
            response
                .headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{what} ({}): {:?}",
            response.status(),
            response.headers()
        );
    }
}

#[tokio::test]
async fn a_plugin_cannot_set_cors_headers() {
    let plugins = PluginsDir::with(&["nosy"]);
    // No CORS configured: nothing cross-origin may be allowed, whatever the plugin says.
    let host = TestHost::start(&plugins);
    let response = host
        .client
        .get(host.url("/nosy/cors"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    assert!(
        !response
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{:?}",
        response.headers()
    );

    // CORS configured: the operator's policy is what the client sees, not the plugin's.
    let host = TestHost::builder()
        .env("CORS_ALLOWED_ORIGINS", APP)
        .start(&plugins);
    let response = host
        .client
        .get(host.url("/nosy/cors"))
        .header("origin", APP)
        .send()
        .await
        .expect("GET");
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], APP);
    assert_eq!(
        headers
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert!(
        !headers.contains_key("access-control-allow-credentials"),
        "{headers:?}"
    );
    assert_ne!(headers["access-control-expose-headers"], "*");
}

on_both_backends!(responses_carrying_tokens_are_not_stored);

async fn responses_carrying_tokens_are_not_stored(backend: Backend) {
    let (_plugins, host) = TestHost::start_api(&backend);
    host.user("kim").await;
    let login = host.login("kim@example.com", "password-kim").await;
    login.expect(200, None);
    assert_eq!(login.headers["cache-control"], "no-store");
    let form = host
        .post_form(
            "/api/v1/auth/login",
            &[("username", "kim"), ("password", "password-kim")],
        )
        .await;
    form.expect(200, None);
    assert_eq!(form.headers["cache-control"], "no-store");
    let refresh_token = login.body["refresh_token"].as_str().expect("refresh_token");
    let refreshed = host
        .post_json(
            "/api/v1/auth/refresh",
            serde_json::json!({"refresh_token": refresh_token}),
        )
        .await;
    refreshed.expect(200, None);
    assert_eq!(refreshed.headers["cache-control"], "no-store");
    assert_eq!(refreshed.headers["x-content-type-options"], "nosniff");
}
