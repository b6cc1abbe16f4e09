//! Requests reach the plugin chosen by the manifests, and the host's own answers (404,
//! 405, 413, request ids) have docs/API.md's shape.

use plinth_tests::{PluginsDir, TestHost, json_body};

fn hello_host() -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["hello"]);
    let host = TestHost::start(&plugins);
    (plugins, host)
}

#[tokio::test]
async fn path_params_reach_the_plugin_decoded() {
    let (_plugins, host) = hello_host();
    let response = host.get("/hello/Ana%20P%C3%A9rez").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body = json_body(response).await;
    assert_eq!(body["name"], "Ana Pérez");
    assert_eq!(body["message"], "Hello, Ana Pérez!");
}

#[tokio::test]
async fn post_body_is_echoed_back() {
    let (_plugins, host) = hello_host();
    let payload = r#"{"list":[1,2,3],"text":"ünïcödé"}"#;
    let response = host
        .client
        .post(host.url("/echo"))
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .expect("POST /echo");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.expect("body"), payload);
}

#[tokio::test]
async fn unknown_path_is_a_json_404() {
    let (_plugins, host) = hello_host();
    for path in ["/nope", "/hello", "/hello/a/b", "/"] {
        let response = host.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        let body = json_body(response).await;
        assert_eq!(body["code"], "NOT_FOUND", "{path}");
        assert!(body["detail"].is_string(), "{path}");
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let (_plugins, host) = hello_host();
    let response = host
        .client
        .delete(host.url("/hello/ana"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    assert_eq!(json_body(response).await["code"], "METHOD_NOT_ALLOWED");

    let response = host.get("/echo").await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

#[tokio::test]
async fn head_is_served_by_the_get_route_without_a_body() {
    let (_plugins, host) = hello_host();
    let response = host
        .client
        .head(host.url("/hello/ana"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let (_plugins, host) = hello_host();
    let too_big = vec![b'x'; 1024 * 1024 + 1];
    let response = host
        .client
        .post(host.url("/echo"))
        .body(too_big)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    assert_eq!(json_body(response).await["code"], "PAYLOAD_TOO_LARGE");

    // Exactly the limit is fine.
    let at_limit = vec![b'x'; 1024 * 1024];
    let response = host
        .client
        .post(host.url("/echo"))
        .body(at_limit)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").len(), 1024 * 1024);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let (_plugins, host) = hello_host();
    // A streamed body has no Content-Length: the limit must hold while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'y'; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_stream(chunks));
    let response = host
        .client
        .post(host.url("/echo"))
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    assert_eq!(json_body(response).await["code"], "PAYLOAD_TOO_LARGE");
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static {
    struct Chunks(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Chunks(chunks.into_iter())
}

#[tokio::test]
async fn health_is_served_by_the_host() {
    let plugins = PluginsDir::new();
    let host = TestHost::start(&plugins);
    let response = host.get("/health").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"status": "ok"})
    );
    let response = host
        .client
        .post(host.url("/health"))
        .send()
        .await
        .expect("POST /health");
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn a_sane_client_request_id_is_echoed_and_logged() {
    let plugins = PluginsDir::with(&["hello"]);
    let host = TestHost::builder()
        .env("RUST_LOG", "info,plinth::guest=debug")
        .start(&plugins);
    let response = host
        .client
        .get(host.url("/hello/ana"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.headers()["x-request-id"], "client-id-42");

    // The access line and the plugin's own log line both carry it.
    let access = host.access_line("client-id-42");
    assert_eq!(access["status"], 200);
    assert_eq!(access["route"], "/hello/{name}");
    assert_eq!(access["plugin"], "hello");
    assert_eq!(access["plugin_version"], "1.0.0");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["client_ip"], "127.0.0.1");
    assert!(access["latency_ms"].is_number());
    let guest = host.wait_for_log(|l| {
        l["target"] == "plinth::guest" && l["span"]["request_id"] == "client-id-42"
    });
    assert_eq!(guest["plugin"], "hello");
    assert_eq!(guest["message"], "greeting ana");
}

#[tokio::test]
async fn a_missing_or_insane_request_id_is_replaced_by_a_unique_one() {
    let (_plugins, host) = hello_host();
    let too_long = "x".repeat(129);
    let mut seen = std::collections::HashSet::new();
    for sent in [
        None,
        Some("has spaces in it"),
        Some(too_long.as_str()),
        Some(""),
    ] {
        let mut request = host.client.get(host.url("/hello/ana"));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.expect("GET");
        let id = plinth_tests::request_id(&response);
        assert!(!id.is_empty() && id.len() <= 128, "{id}");
        assert_ne!(Some(id.as_str()), sent);
        assert!(seen.insert(id), "request ids must be unique");
    }
    // Error responses carry one too.
    let response = host.get("/nope").await;
    assert!(response.headers().contains_key("x-request-id"));
}
