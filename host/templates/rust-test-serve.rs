//! The plugin in a real Plinth host, in this test's process (plinth-harness): its
//! component built for wasm32-wasip2 and loaded with this plugin.toml, on SQLite and the
//! in-process store, asked over HTTP.

use plinth_harness::TestHost;

#[tokio::test]
async fn greets_over_http() -> anyhow::Result<()> {
    let host = TestHost::start(env!("CARGO_MANIFEST_DIR")).await?;
    let response = host.get("/{name}/ana").await?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()?["message"], "Hello, ana!");
    // What the plugin logged while answering (plinth_sdk::log), per request.
    assert!(
        response.logs.iter().any(|line| line.message == "greeting ana"),
        "{:?}",
        response.logs
    );
    Ok(())
}

#[tokio::test]
async fn the_host_answers_what_the_manifest_does_not_declare() -> anyhow::Result<()> {
    let host = TestHost::start(env!("CARGO_MANIFEST_DIR")).await?;
    let response = host.get("/{name}").await?;
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code().as_deref(), Some("NOT_FOUND"));
    Ok(())
}
