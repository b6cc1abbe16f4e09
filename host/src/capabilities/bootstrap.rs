//! Start-up data: the first superuser (`FIRST_SUPERUSER_*`), created when absent in the
//! accounts data set (the one the `auth` and `users` plugins share, `ACCOUNTS_DATA_SET`),
//! once their migrations have made its `users` table.

use chrono::Utc;

use super::Capabilities;
use super::sql::format_timestamp;
use crate::bindings::plinth::plugin::sql::{Error as SqlError, Value};

/// The first superuser's credentials from the environment.
#[derive(Clone)]
pub struct FirstSuperuser {
    pub email: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for FirstSuperuser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstSuperuser")
            .field("email", &self.email)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Creates the superuser unless a user with that email exists. Racing instances are fine:
/// the unique index lets exactly one insert win.
pub async fn ensure_first_superuser(
    capabilities: &Capabilities,
    accounts: &str,
    user: &FirstSuperuser,
) -> anyhow::Result<()> {
    let email = user.email.trim().to_lowercase();
    let Some(db) = capabilities.sql.existing(accounts).await else {
        tracing::warn!(
            data_set = accounts,
            "no plugin uses the accounts data set: the first superuser was not created"
        );
        return Ok(());
    };
    let existing = db
        .query(
            "SELECT id FROM users WHERE lower(email) = $1",
            vec![Value::Text(email.clone())],
            false,
        )
        .await
        .map_err(|e| anyhow::anyhow!("looking up the first superuser: {e:?}"))?;
    if !existing.rows.is_empty() {
        return Ok(());
    }
    let hash = capabilities
        .passwords
        .hash(user.password.clone())
        .await
        .map_err(|e| anyhow::anyhow!("hashing the first superuser's password: {e:?}"))?;
    let inserted = db
        .execute(
            "INSERT INTO users (email, username, hashed_password, full_name, is_active, \
             is_superuser, created_at) VALUES ($1, $2, $3, NULL, $4, $5, $6)",
            vec![
                Value::Text(email.clone()),
                Value::Text(user.username.clone()),
                Value::Text(hash),
                Value::Boolean(true),
                Value::Boolean(true),
                Value::Timestamp(format_timestamp(Utc::now())),
            ],
        )
        .await;
    match inserted {
        Ok(_) => {
            tracing::info!(%email, "first superuser created");
            Ok(())
        }
        // Another instance created it first, or the username is taken by someone else.
        Err(SqlError::UniqueViolation(index)) => {
            if index.contains("username") {
                tracing::warn!(
                    username = %user.username,
                    "FIRST_SUPERUSER_USERNAME is taken by another user; no superuser created"
                );
            }
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("creating the first superuser: {e:?}")),
    }
}
