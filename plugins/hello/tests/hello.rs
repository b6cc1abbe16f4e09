//! `hello` in a real host (plinth-harness): its routes as the manifest declares them.

use plinth_harness::{Level, Method, TestHost};

#[tokio::test]
async fn greets_by_name_and_logs_who() -> anyhow::Result<()> {
    let host = TestHost::start(env!("CARGO_MANIFEST_DIR")).await?;
    let response = host.get("/hello/ada%20lovelace").await?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()?,
        serde_json::json!({ "message": "Hello, ada lovelace!", "name": "ada lovelace" })
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    let lines: Vec<String> = response.logs.iter().map(|l| l.message.clone()).collect();
    assert_eq!(lines, ["greeting ada lovelace"]);
    assert_eq!(response.logs[0].plugin, "hello");
    assert_eq!(response.logs[0].level, Level::DEBUG);
    Ok(())
}

#[tokio::test]
async fn echo_answers_the_body_with_its_content_type() -> anyhow::Result<()> {
    let host = TestHost::start(env!("CARGO_MANIFEST_DIR")).await?;
    let response = host
        .request(Method::POST, "/echo")
        .header("content-type", "text/csv")
        .body("a,b\n1,2\n")
        .send()
        .await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/csv"));
    assert_eq!(response.text(), "a,b\n1,2\n");
    assert!(response.logs.is_empty(), "{:?}", response.logs);

    let empty = host.request(Method::POST, "/echo").send().await?;
    assert_eq!(empty.status, 200);
    assert!(empty.body.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_host_answers_what_the_manifest_does_not_declare() -> anyhow::Result<()> {
    let host = TestHost::start(env!("CARGO_MANIFEST_DIR")).await?;
    let wrong_method = host.post_json("/hello/ada", &serde_json::json!({})).await?;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        wrong_method.error_code().as_deref(),
        Some("METHOD_NOT_ALLOWED")
    );
    let unknown = host.get("/hello").await?;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code().as_deref(), Some("NOT_FOUND"));
    Ok(())
}
