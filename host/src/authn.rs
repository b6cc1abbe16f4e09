//! Authentication: who is calling, from the bearer token, for the route auth policy
//! (`auth = "required"` / `"optional"`) and the admin API.
//!
//! Its own module so the pipeline and the admin API both depend on it, and not on each
//! other.

use http::HeaderMap;

use crate::bindings::Principal;
use crate::bindings::plinth::plugin::sql::Value as SqlValue;
use crate::bindings::plinth::plugin::tokens::TokenKind;
use crate::capabilities::Capabilities;
use crate::capabilities::tokens::TokenError;
use crate::error::ApiError;
use crate::plugins::manifest::AuthPolicy;

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
}

/// Applies a route's auth policy: a verified bearer access token becomes the principal.
/// `required` answers 401 without one; `optional` ignores a missing or unusable one.
pub async fn authenticate(
    capabilities: &Capabilities,
    policy: AuthPolicy,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    if policy == AuthPolicy::None {
        return Ok(None);
    }
    let verified = match bearer_token(headers) {
        Some(token) => capabilities.tokens.verify(token, TokenKind::Access).await,
        None => Err(TokenError::Invalid),
    };
    match (verified, policy) {
        (Ok(claims), _) => Ok(Some(Principal {
            subject: claims.subject,
            token_id: claims.token_id,
            expires_at: claims.expires_at,
        })),
        (Err(TokenError::Unavailable), _) => Err(ApiError::Unavailable("token state store".into())),
        (Err(_), AuthPolicy::Required) => Err(ApiError::NotAuthenticated),
        (Err(_), _) => Ok(None),
    }
}

/// A valid bearer access token (checked as for any `auth = "required"` route) of an active
/// superuser; 401 / 403 otherwise. The flags are read from the primary of the accounts
/// data set (`accounts`), so a demotion takes effect at once.
pub async fn require_superuser(
    capabilities: &Capabilities,
    accounts: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let principal = authenticate(capabilities, AuthPolicy::Required, headers)
        .await?
        .ok_or(ApiError::NotAuthenticated)?;
    let id: i64 = principal
        .subject
        .parse()
        .map_err(|_| ApiError::NotAuthenticated)?;
    let data_set = capabilities
        .sql
        .existing(accounts)
        .await
        .ok_or_else(|| ApiError::Unavailable(format!("data set `{accounts}`")))?;
    let rows = data_set
        .query(
            "SELECT is_active, is_superuser FROM users WHERE id = $1",
            vec![SqlValue::Integer(id)],
            false,
        )
        .await
        .map_err(|_| ApiError::Unavailable("database".into()))?;
    let flag = |row: &[SqlValue], i: usize| match row.get(i) {
        Some(SqlValue::Boolean(b)) => *b,
        Some(SqlValue::Integer(n)) => *n != 0,
        _ => false,
    };
    match rows.rows.first() {
        Some(row) if flag(row, 0) && flag(row, 1) => Ok(()),
        Some(row) if flag(row, 0) => Err(ApiError::Forbidden),
        _ => Err(ApiError::NotAuthenticated),
    }
}
