//! Standard `wasi:http/incoming-handler` components (`plugins/testing/wasihttp`, built from
//! the `wasip2` crate's bindings alone) served under a `plugin.toml`: routing, the
//! principal headers the host sets and strips, bodies both ways, limits, and outbound
//! requests only where the manifest's grant and the policy allow.

use std::io::Write as _;

use plinth_tests::{Backend, PluginsDir, TestHost, json_body, request_id};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A host with `auth` (for tokens) and the standard component.
async fn start() -> (PluginsDir, TestHost, String) {
    let (plugins, host, root) = TestHost::start_admin(&["auth", "wasihttp"]).await;
    (plugins, host, root.access)
}

#[tokio::test]
async fn the_principal_reaches_it_only_from_the_host() {
    let (_plugins, host, token) = start().await;
    let client = reqwest::Client::new();

    let anonymous = client
        .get(host.url("/std/whoami?x=1"))
        .header("plinth-principal-subject", "1")
        .header("plinth-principal-token-id", "forged")
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), 200);
    let seen = json_body(anonymous).await;
    assert_eq!(seen["method"], "Method::Get");
    assert_eq!(seen["path_with_query"], "/std/whoami?x=1");
    assert_eq!(
        seen["subject"],
        Value::Null,
        "a forged header got through: {seen}"
    );
    assert_eq!(seen["token_id"], Value::Null);

    let signed_in = client
        .get(host.url("/std/whoami"))
        .bearer_auth(&token)
        .header("plinth-principal-subject", "999")
        .send()
        .await
        .expect("GET");
    let seen = json_body(signed_in).await;
    assert_eq!(seen["subject"], "1", "the first superuser's id: {seen}");
    assert!(seen["token_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        seen["expires_at"]
            .as_str()
            .is_some_and(|t| t.parse::<u64>().is_ok())
    );
    assert_eq!(
        seen["has_authorization"], false,
        "the token itself never reaches it"
    );

    let refused = host.get("/std/private").await;
    assert_eq!(refused.status(), 401);
    assert_eq!(json_body(refused).await["code"], "NOT_AUTHENTICATED");
    let allowed = client
        .get(host.url("/std/private"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(allowed.status(), 200);
}

#[tokio::test]
async fn bodies_go_both_ways_within_the_limits() {
    let (_plugins, host, _) = start().await;
    let client = reqwest::Client::new();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = client
        .post(host.url("/std/echo"))
        .header("content-type", "application/x-test")
        .body(bytes.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.headers()["content-type"], "application/x-test");
    let id = request_id(&echoed);
    assert_eq!(echoed.bytes().await.expect("body").as_ref(), &bytes[..]);
    let access = host.access_line(&id);
    assert_eq!(access["plugin"], "wasihttp", "{access}");

    // Streamed in 64 KiB writes, past what the stream buffers at once.
    let big = host.get("/std/big?kib=960").await;
    assert_eq!(big.status(), 200);
    assert_eq!(big.bytes().await.expect("body").len(), 960 * 1024);

    // Past the manifest's max_response_mb (1): the host refuses the answer.
    let too_big = host.get("/std/big?kib=2048").await;
    assert_eq!(too_big.status(), 500);
    assert_eq!(json_body(too_big).await["code"], "PLUGIN_FAILED");

    let silent = host.get("/std/silent").await;
    assert_eq!(silent.status(), 500);
    assert_eq!(json_body(silent).await["code"], "PLUGIN_FAILED");
    host.wait_for_log(|l| {
        l["error"]
            .as_str()
            .is_some_and(|m| m.contains("without setting a response"))
    });

    // Routing is the host's: a path the manifest does not declare never reaches it.
    assert_eq!(host.get("/std/undeclared").await.status(), 404);
}

/// One-shot HTTP server on 127.0.0.1: answers every request `200 pong`.
async fn pong_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn outbound_requests_leave_only_for_granted_authorities() {
    let granted = pong_server().await;
    let other = pong_server().await;
    let mut policy = tempfile::NamedTempFile::new().expect("policy file");
    write!(
        policy,
        "[plugins.wasihttp]\noutbound_http = [\"127.0.0.1:{granted}\"]\n"
    )
    .expect("writing the policy");
    let plugins = PluginsDir::new();
    plugins.deploy_as("wasihttp", "wasihttp", |manifest| {
        format!("{manifest}\n[capabilities]\noutbound_http = [\"127.0.0.1:{granted}\"]\n")
    });
    let host = TestHost::builder()
        .backend(&Backend::sqlite())
        .env("PLUGINS_POLICY", policy.path().display().to_string())
        .start(&plugins);

    let fetched = json_body(
        host.get(&format!("/std/fetch?url=http://127.0.0.1:{granted}/ping"))
            .await,
    )
    .await;
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["body"], "pong");

    let denied = json_body(
        host.get(&format!("/std/fetch?url=http://127.0.0.1:{other}/ping"))
            .await,
    )
    .await;
    assert_eq!(denied["error"], "ErrorCode::HttpRequestDenied", "{denied}");
    host.wait_for_log(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("outbound HTTP refused"))
            && l["plugin"] == "wasihttp"
    });
}

#[tokio::test]
async fn without_a_grant_nothing_leaves_and_a_grant_beyond_the_policy_is_refused() {
    let port = pong_server().await;
    let (_plugins, host, _) = start().await;
    let denied = json_body(
        host.get(&format!("/std/fetch?url=http://127.0.0.1:{port}/"))
            .await,
    )
    .await;
    assert_eq!(denied["error"], "ErrorCode::HttpRequestDenied", "{denied}");

    // The development policy allows no outbound HTTP: a manifest asking is refused.
    let plugins = PluginsDir::new();
    plugins.deploy_as("wasihttp", "wasihttp", |manifest| {
        format!("{manifest}\n[capabilities]\noutbound_http = [\"127.0.0.1:{port}\"]\n")
    });
    let (status, output) = TestHost::builder()
        .backend(&Backend::sqlite())
        .start_expecting_failure(&plugins);
    assert!(!status.success());
    assert!(
        output.contains("`outbound_http` to 127.0.0.1:"),
        "the refusal names the grant: {output}"
    );
}
