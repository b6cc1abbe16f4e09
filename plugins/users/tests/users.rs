//! `users` in a real host (plinth-harness, SQLite), alone: users are seeded through the
//! accounts data set and signed in with tokens the host mints, as `auth` would.

use plinth_harness::{Method, TestHost, Value};
use serde_json::json;

const ROOT_EMAIL: &str = "root@example.com";

/// `users` with the first superuser the host creates at start-up; its id.
async fn host() -> anyhow::Result<(TestHost, String)> {
    start(TestHost::builder()).await
}

async fn start(builder: plinth_harness::Builder) -> anyhow::Result<(TestHost, String)> {
    let host = builder
        .plugin(env!("CARGO_MANIFEST_DIR"))
        .env("FIRST_SUPERUSER_EMAIL", ROOT_EMAIL)
        .env("FIRST_SUPERUSER_USERNAME", "root")
        .env("FIRST_SUPERUSER_PASSWORD", "root-pa55word")
        .start()
        .await?;
    let root = user_id(&host, ROOT_EMAIL).await?;
    Ok((host, root))
}

/// The same plugin on PostgreSQL and Redis (this machine's; `PLINTH_TEST_POSTGRES_URL`
/// and `PLINTH_TEST_REDIS_URL` name others).
#[tokio::test]
async fn on_postgres_and_redis_a_deactivated_user_is_refused() -> anyhow::Result<()> {
    let postgres = std::env::var("PLINTH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis =
        std::env::var("PLINTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (host, root) = start(TestHost::builder().postgres_and_redis(&postgres, &redis)).await?;
    let token = host.access_token(&root).await?;
    let me = host
        .request(Method::GET, "/api/v1/users/me")
        .bearer(&token)
        .send()
        .await?;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()?["email"], ROOT_EMAIL);
    // The row lives in PostgreSQL: its type is PostgreSQL's.
    let rows = host
        .sql(
            "accounts",
            "SELECT pg_typeof(created_at)::text AS t FROM users",
            vec![],
        )
        .await?;
    assert_eq!(rows[0]["t"], "timestamp with time zone");

    host.sql(
        "accounts",
        "UPDATE users SET is_active = FALSE WHERE email = $1",
        vec![Value::Text(ROOT_EMAIL.into())],
    )
    .await?;
    let refused = host
        .request(Method::GET, "/api/v1/users/me")
        .bearer(&token)
        .send()
        .await?;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.error_code().as_deref(), Some("NOT_AUTHENTICATED"));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    Ok(())
}

async fn user_id(host: &TestHost, email: &str) -> anyhow::Result<String> {
    let rows = host
        .sql(
            "accounts",
            "SELECT id FROM users WHERE email = $1",
            vec![Value::Text(email.into())],
        )
        .await?;
    anyhow::ensure!(rows.len() == 1, "no user {email}");
    Ok(rows[0]["id"].to_string())
}

/// A plain user inserted directly (its hash is never checked by these tests).
async fn plain_user(host: &TestHost, email: &str, username: &str) -> anyhow::Result<String> {
    host.sql(
        "accounts",
        "INSERT INTO users (email, username, hashed_password, is_active, is_superuser, \
         created_at) VALUES ($1, $2, 'unused', TRUE, FALSE, '2026-12-01T00:00:00Z')",
        vec![Value::Text(email.into()), Value::Text(username.into())],
    )
    .await?;
    user_id(host, email).await
}

#[tokio::test]
async fn me_is_the_principals_row_without_its_hash() -> anyhow::Result<()> {
    let (host, root) = host().await?;
    let token = host.access_token(&root).await?;
    let me = host
        .request(Method::GET, "/api/v1/users/me")
        .bearer(&token)
        .send()
        .await?;
    assert_eq!(me.status, 200, "{}", me.text());
    let body = me.json()?;
    assert_eq!(body["email"], ROOT_EMAIL);
    assert_eq!(body["is_superuser"], true);
    assert!(!me.text().contains("argon2") && !me.text().contains("hashed"));

    let anonymous = host.get("/api/v1/users/me").await?;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.error_code().as_deref(), Some("NOT_AUTHENTICATED"));
    Ok(())
}

#[tokio::test]
async fn patching_me_changes_the_row_and_stamps_updated_at() -> anyhow::Result<()> {
    let (host, _) = host().await?;
    let ana = plain_user(&host, "ana@example.com", "ana").await?;
    let token = host.access_token(&ana).await?;
    let patched = host
        .request(Method::PATCH, "/api/v1/users/me")
        .bearer(&token)
        .json(&json!({ "full_name": "Ana Pérez" }))
        .send()
        .await?;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let rows = host
        .sql(
            "accounts",
            "SELECT full_name, updated_at FROM users WHERE email = 'ana@example.com'",
            vec![],
        )
        .await?;
    assert_eq!(rows[0]["full_name"], "Ana Pérez");
    assert!(rows[0]["updated_at"].is_string(), "{:?}", rows[0]);
    Ok(())
}

#[tokio::test]
async fn only_a_superuser_lists_and_creates_users() -> anyhow::Result<()> {
    let (host, root) = host().await?;
    let ana = plain_user(&host, "ana@example.com", "ana").await?;
    let as_ana = host.access_token(&ana).await?;
    let refused = host
        .request(Method::GET, "/api/v1/users")
        .bearer(&as_ana)
        .send()
        .await?;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code().as_deref(), Some("FORBIDDEN"));

    let as_root = host.access_token(&root).await?;
    let created = host
        .request(Method::POST, "/api/v1/users")
        .bearer(&as_root)
        .json(&json!({ "email": "bob@example.com", "username": "bob", "password": "bob-pa55word" }))
        .send()
        .await?;
    assert_eq!(created.status, 201, "{}", created.text());
    let listed = host
        .request(Method::GET, "/api/v1/users")
        .bearer(&as_root)
        .send()
        .await?;
    assert_eq!(listed.status, 200);
    let body = listed.json()?;
    assert_eq!(body["total"], 3, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_token_of_a_deleted_user_is_refused() -> anyhow::Result<()> {
    let (host, _) = host().await?;
    let ana = plain_user(&host, "ana@example.com", "ana").await?;
    let token = host.access_token(&ana).await?;
    host.sql(
        "accounts",
        "DELETE FROM users WHERE email = 'ana@example.com'",
        vec![],
    )
    .await?;
    let me = host
        .request(Method::GET, "/api/v1/users/me")
        .bearer(&token)
        .send()
        .await?;
    assert_eq!(me.status, 401, "{}", me.text());
    assert_eq!(me.error_code().as_deref(), Some("NOT_AUTHENTICATED"));
    assert_eq!(me.header("www-authenticate"), Some("Bearer"));
    Ok(())
}
