//! Slow, idle and too many clients cannot hold the host's sockets (README "Configuration":
//! `HEADER_READ_TIMEOUT_SECONDS`, `BODY_READ_TIMEOUT_SECONDS`, `IDLE_TIMEOUT_SECONDS`,
//! `MAX_CONNECTIONS`), and a flood of `/ready` probes stays cheap.

use std::time::{Duration, Instant};

use plinth_tests::{Backend, PluginsDir, TestHost, on_both_backends};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the server sent until it closed the connection, or `None` when it was still open
/// after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until `needle` has arrived (panics after `within`).
async fn read_until(stream: &mut TcpStream, needle: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(needle) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            other => panic!(
                "`{needle}` did not arrive ({other:?}); got: {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

fn hello_host(env: &[(&str, &str)]) -> (PluginsDir, TestHost) {
    let plugins = PluginsDir::with(&["hello"]);
    // `/spin` loops until its deadline: a request that runs longer than a second.
    plugins.deploy_as("spin", "spin", |manifest| {
        manifest.replace("timeout_ms = 300", "timeout_ms = 1500")
    });
    let mut builder = TestHost::builder();
    for (key, value) in env {
        builder = builder.env(key, *value);
    }
    let host = builder.start(&plugins);
    (plugins, host)
}

#[tokio::test]
async fn headers_sent_too_slowly_are_cut_off() {
    let (_plugins, host) = hello_host(&[("HEADER_READ_TIMEOUT_SECONDS", "1")]);
    let mut slow = TcpStream::connect(host.addr).await.expect("connect");
    let started = Instant::now();
    // A slow-loris client: the request line and a header, never the blank line.
    slow.write_all(b"GET /hello/x HTTP/1.1\r\nHost: plinth\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.write_all(b"X-Slow: 1\r\n").await.expect("write");
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "the connection was still open after 10 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Prompt clients are served as before.
    assert_eq!(host.get("/hello/x").await.status(), 200);
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408() {
    let (_plugins, host) = hello_host(&[("BODY_READ_TIMEOUT_SECONDS", "1")]);
    let mut slow = TcpStream::connect(host.addr).await.expect("connect");
    slow.write_all(
        b"POST /echo HTTP/1.1\r\nHost: plinth\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"partial\":",
    )
    .await
    .expect("write");
    let started = Instant::now();
    let response = read_until(&mut slow, "REQUEST_TIMEOUT", Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response}"
    );
    assert!(response.contains(r#""detail":"#), "{response}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(host.get("/hello/x").await.status(), 200);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (_plugins, host) = hello_host(&[
        ("IDLE_TIMEOUT_SECONDS", "1"),
        ("HEADER_READ_TIMEOUT_SECONDS", "30"),
    ]);
    // A kept-alive connection after its request...
    let mut kept_alive = TcpStream::connect(host.addr).await.expect("connect");
    kept_alive
        .write_all(b"GET /health HTTP/1.1\r\nHost: plinth\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut kept_alive, "\"ok\"", Duration::from_secs(5)).await;
    // ...and one that never sends a byte.
    let mut silent = TcpStream::connect(host.addr).await.expect("connect");
    let started = Instant::now();
    for (what, stream) in [("kept-alive", &mut kept_alive), ("silent", &mut silent)] {
        assert!(
            read_until_closed(stream, Duration::from_secs(10))
                .await
                .is_some(),
            "the {what} connection was still open after 10 s"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A request that runs longer than the idle limit is not cut short by it.
    let started = Instant::now();
    assert_eq!(host.get("/spin").await.status(), 504);
    assert!(started.elapsed() > Duration::from_secs(1));
}

#[tokio::test]
async fn connections_over_the_cap_get_a_clear_503() {
    let (_plugins, host) = hello_host(&[("MAX_CONNECTIONS", "2")]);
    let first = TcpStream::connect(host.addr).await.expect("connect");
    let _second = TcpStream::connect(host.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let refused = host.get("/hello/x").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.headers().contains_key("x-request-id"));
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("connections"))
    );
    host.wait_for_log(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("MAX_CONNECTIONS"))
    });

    // A place frees up when a connection closes.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = host.get("/hello/x").await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both_backends!(a_flood_of_ready_probes_checks_the_backends_about_once_a_second);

async fn a_flood_of_ready_probes_checks_the_backends_about_once_a_second(backend: Backend) {
    let plugins = PluginsDir::with(&["auth", "users"]);
    let host = TestHost::builder()
        .backend(&backend)
        .env("DATABASE_MAX_CONNECTIONS", "2")
        .env("RUST_LOG", "info,plinth_host::readiness=debug")
        .start(&plugins);
    let (_, tokens) = host.user("prober").await;

    let started = Instant::now();
    let mut probes = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let client = host.client.clone();
        let url = host.url("/ready");
        probes.spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    // The API keeps working during the flood.
    for _ in 0..5 {
        host.get_as("/api/v1/users/me", &tokens.access)
            .await
            .expect(200, None);
    }
    let mut ready = 0;
    while let Some(result) = probes.join_next().await {
        let status = result.expect("probe task").expect("probe request");
        assert_eq!(status, 200);
        ready += 1;
    }
    assert_eq!(ready, 500);

    let elapsed_secs = started.elapsed().as_secs();
    let checks = host
        .json_logs()
        .iter()
        .filter(|l| l["message"] == "readiness checked")
        .count() as u64;
    // One check per second of the flood (and one at each edge), not one per probe.
    assert!(
        (1..=elapsed_secs + 2).contains(&checks),
        "{checks} checks in {elapsed_secs} s"
    );
}
