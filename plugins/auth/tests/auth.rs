//! `auth` in a real host (plinth-harness, SQLite): what its responses say and what it
//! leaves in the accounts data set and the log.

use plinth_harness::{TestHost, TestResponse, Value};
use serde_json::json;

async fn host() -> anyhow::Result<TestHost> {
    TestHost::start(env!("CARGO_MANIFEST_DIR")).await
}

async fn register(host: &TestHost, email: &str, password: &str) -> anyhow::Result<TestResponse> {
    host.post_json(
        "/api/v1/auth/register",
        &json!({ "email": email, "username": "ana", "password": password }),
    )
    .await
}

#[tokio::test]
async fn register_stores_an_argon2id_hash_and_the_normalised_email() -> anyhow::Result<()> {
    let host = host().await?;
    let response = register(&host, "  Ana@Example.COM ", "pässwörd-1").await?;
    assert_eq!(response.status, 201, "{}", response.text());
    assert!(!response.text().contains("argon2"), "{}", response.text());

    let rows = host
        .sql(
            "accounts",
            "SELECT email, hashed_password, is_superuser FROM users",
            vec![],
        )
        .await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["email"], "ana@example.com");
    assert_eq!(rows[0]["is_superuser"], false);
    let hash = rows[0]["hashed_password"].as_str().unwrap_or_default();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains("pässwörd"));
    Ok(())
}

#[tokio::test]
async fn a_failed_login_says_only_invalid_credentials() -> anyhow::Result<()> {
    let host = host().await?;
    register(&host, "ana@example.com", "pässwörd-1").await?;
    let refused = host
        .post_json(
            "/api/v1/auth/login",
            &json!({ "email": "ana@example.com", "password": "wrong-guess" }),
        )
        .await?;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code().as_deref(), Some("INVALID_CREDENTIALS"));
    assert!(
        refused
            .logs
            .iter()
            .all(|l| !l.message.contains("wrong-guess"))
    );

    let unknown = host
        .post_json(
            "/api/v1/auth/login",
            &json!({ "email": "bob@example.com", "password": "wrong-guess" }),
        )
        .await?;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.json()?,
        refused.json()?,
        "an unknown email looks the same"
    );
    Ok(())
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_chain_and_says_so_in_the_log() -> anyhow::Result<()> {
    let host = host().await?;
    register(&host, "ana@example.com", "pässwörd-1").await?;
    let login = host
        .request(plinth_harness::Method::POST, "/api/v1/auth/login")
        .form(&[("username", "ana@example.com"), ("password", "pässwörd-1")])
        .send()
        .await?;
    assert_eq!(login.status, 200, "{}", login.text());
    let first = login.json()?["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let refresh = |token: String| {
        let host = &host;
        async move {
            host.post_json("/api/v1/auth/refresh", &json!({ "refresh_token": token }))
                .await
        }
    };
    let rotated = refresh(first.clone()).await?;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let second = rotated.json()?["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(first, second);

    let reuse = refresh(first).await?;
    assert_eq!(reuse.status, 401);
    assert_eq!(reuse.error_code().as_deref(), Some("INVALID_TOKEN"));
    assert!(
        reuse
            .logs
            .iter()
            .any(|l| l.level == plinth_harness::Level::WARN && l.message.contains("reuse")),
        "{:?}",
        reuse.logs
    );
    // The whole chain is gone: the token the reuse did not name is refused too.
    let after = refresh(second).await?;
    assert_eq!(after.status, 401);
    Ok(())
}

#[tokio::test]
async fn a_stored_hash_the_host_refuses_is_a_failed_login_and_a_warning() -> anyhow::Result<()> {
    let host = host().await?;
    register(&host, "ana@example.com", "pässwörd-1").await?;
    host.sql(
        "accounts",
        "UPDATE users SET hashed_password = $1",
        vec![Value::Text("$plain$not-a-hash".into())],
    )
    .await?;
    let login = host
        .post_json(
            "/api/v1/auth/login",
            &json!({ "email": "ana@example.com", "password": "pässwörd-1" }),
        )
        .await?;
    assert_eq!(login.status, 401, "{}", login.text());
    assert!(
        login
            .logs
            .iter()
            .any(|l| l.message.contains("hash was refused")),
        "{:?}",
        login.logs
    );
    Ok(())
}
