//! `tokens`: JWTs issued and verified by the host; the signing key never enters a plugin.
//!
//! HS256 only (the algorithm is pinned: `none` and every other algorithm are rejected),
//! claims `sub iat nbf exp jti iss aud type gen`. Revocation state lives in the key-value
//! store (Redis when configured), so every host instance sees it:
//! - `<prefix>:tokens:revoked:<jti>` — one token, until its `exp`;
//! - `<prefix>:tokens:generation:<sub>:<type>` — a counter that revoking every token of
//!   that type of `sub` increments; a token carries the generation it was issued under
//!   (`gen`) and is refused once the counter has moved past it. No clock is compared, so
//!   hosts whose clocks disagree agree on what is revoked. The counter has no expiry (one
//!   that expired would bring its older tokens back).
//!
//! The same verification serves the route auth policy (`auth = "required"`) in the
//! pipeline and plugins holding the `verify` grant.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use wasmtime::component::{HasSelf, Linker};

use super::kv::{KvError, KvStore};
use super::{CapabilityView, Descriptor, TokenOperation};
use crate::bindings::plinth::plugin::tokens::{self as wit, Claims, Error, Issued, TokenKind};
use crate::telemetry::metrics::HostCalls;

pub fn descriptor<T: CapabilityView>() -> Descriptor<T> {
    Descriptor {
        interface: "tokens",
        granted: |grants| !grants.tokens.is_empty(),
        link: |linker: &mut Linker<T>| {
            wit::add_to_linker::<T, HasSelf<TokensInstance>>(linker, |state| {
                &mut state.capabilities().tokens
            })
        },
    }
}

const ISSUER: &str = "plinth";
const AUDIENCE: &str = "plinth-api";

/// Token settings from the environment.
#[derive(Clone)]
pub struct TokenConfig {
    pub secret: Vec<u8>,
    /// True when `JWT_SECRET` was unset and the secret is random for this process.
    pub ephemeral_secret: bool,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// How long a chain of refresh tokens may be renewed, from its first token.
    pub refresh_max_lifetime: Duration,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("secret", &"<redacted>")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("refresh_max_lifetime", &self.refresh_max_lifetime)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JwtClaims {
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    iss: String,
    aud: String,
    #[serde(rename = "type")]
    kind: String,
    /// The subject's revocation generation when issued (absent in tokens from before
    /// generations: 0).
    #[serde(default, rename = "gen")]
    generation: u64,
}

/// Why a token was refused (host side; plugins see the WIT `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token of the wrong type")]
    WrongKind,
    #[error("token revoked")]
    Revoked,
    #[error("token state unavailable")]
    Unavailable,
}

impl From<TokenError> for Error {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Invalid => Error::Invalid,
            TokenError::Expired => Error::Expired,
            TokenError::WrongKind => Error::WrongKind,
            TokenError::Revoked => Error::Revoked,
            TokenError::Unavailable => Error::Unavailable,
        }
    }
}

impl From<KvError> for TokenError {
    fn from(_: KvError) -> Self {
        Self::Unavailable
    }
}

pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
    refresh_max_lifetime: Duration,
    kv: KvStore,
    key_prefix: String,
    /// `plinth_token_verifications_total`, by kind and result.
    verifications: IntCounterVec,
    verified: VerifiedTokens,
}

/// Tokens whose signature and claims were verified, by their exact text. A client sends
/// the same access token with every request, and verifying it (base64, two JSON
/// documents, HMAC) was ~5% of `GET /api/v1/users/me`'s CPU. The same bytes under the
/// same key always prove the same claims, so those are kept; expiry, type and revocation
/// are still checked on every use. (`nbf` was checked when the token was first seen; a
/// wall clock stepping back later does not make it immature again.)
#[derive(Debug, Default)]
struct VerifiedTokens(Mutex<HashMap<Box<str>, Arc<JwtClaims>>>);

/// Verified tokens kept at most (a few MB); past it, the expired ones are dropped, and if
/// that frees nothing, all of them.
const MAX_VERIFIED_TOKENS: usize = 10_000;

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Arc<JwtClaims>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    fn insert(&self, token: &str, claims: Arc<JwtClaims>, now: u64) {
        let mut verified = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= MAX_VERIFIED_TOKENS {
            verified.retain(|_, claims| claims.exp > now);
            if verified.len() >= MAX_VERIFIED_TOKENS {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims);
    }
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Access => "access",
        TokenKind::Refresh => "refresh",
    }
}

fn now_secs() -> u64 {
    chrono::Utc::now()
        .timestamp()
        .try_into()
        .unwrap_or_default()
}

impl TokenService {
    pub fn new(
        config: &TokenConfig,
        kv: KvStore,
        key_prefix: &str,
        verifications: IntCounterVec,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud", "jti"]);
        Self {
            encoding: EncodingKey::from_secret(&config.secret),
            decoding: DecodingKey::from_secret(&config.secret),
            validation,
            access_ttl: config.access_ttl,
            refresh_ttl: config.refresh_ttl,
            refresh_max_lifetime: config.refresh_max_lifetime,
            kv,
            key_prefix: key_prefix.to_owned(),
            verifications,
            verified: VerifiedTokens::default(),
        }
    }

    /// A token of `kind`; a refresh token starts a chain (see [`Self::issue_refresh`]).
    pub async fn issue(&self, subject: &str, kind: TokenKind) -> Result<Issued, TokenError> {
        let generation = self.generation(subject, kind).await?;
        let now = now_secs();
        let lifetime = match kind {
            TokenKind::Access => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl.min(self.refresh_max_lifetime),
        };
        self.sign(subject, kind, now, now + lifetime.as_secs(), generation)
    }

    /// The next refresh token of a chain begun at `chain_started_at`: it never outlives the
    /// chain's absolute lifetime, so an old chain cannot be renewed forever.
    pub async fn issue_refresh(
        &self,
        subject: &str,
        chain_started_at: u64,
    ) -> Result<Issued, TokenError> {
        let generation = self.generation(subject, TokenKind::Refresh).await?;
        let now = now_secs();
        // A start in the future would lengthen the chain: count it as starting now.
        let chain_ends = chain_started_at
            .min(now)
            .saturating_add(self.refresh_max_lifetime.as_secs());
        if chain_ends <= now {
            return Err(TokenError::Expired);
        }
        let expires_at = chain_ends.min(now + self.refresh_ttl.as_secs());
        self.sign(subject, TokenKind::Refresh, now, expires_at, generation)
    }

    /// The subject's current revocation generation of `kind` (0 until first revoked).
    /// Unreadable, it refuses to issue: a token must not predate a revocation it missed.
    async fn generation(&self, subject: &str, kind: TokenKind) -> Result<u64, TokenError> {
        let stored = self.kv.get(&self.generation_key(subject, kind)).await?;
        Ok(parse_generation(stored.as_deref()))
    }

    fn sign(
        &self,
        subject: &str,
        kind: TokenKind,
        now: u64,
        expires_at: u64,
        generation: u64,
    ) -> Result<Issued, TokenError> {
        let claims = JwtClaims {
            sub: subject.to_owned(),
            iat: now,
            nbf: now,
            exp: expires_at,
            jti: uuid::Uuid::now_v7().to_string(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            kind: kind_name(kind).to_owned(),
            generation,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)?;
        Ok(Issued {
            token,
            claims: Claims {
                subject: claims.sub,
                token_id: claims.jti,
                kind,
                issued_at: claims.iat,
                expires_at: claims.exp,
            },
        })
    }

    /// Signature, algorithm, issuer, audience, time claims, type, then revocation.
    pub async fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        let verified = self.check(token, kind).await;
        let result = match &verified {
            Ok(_) => "valid",
            Err(TokenError::Invalid) => "invalid",
            Err(TokenError::Expired) => "expired",
            Err(TokenError::WrongKind) => "wrong_kind",
            Err(TokenError::Revoked) => "revoked",
            Err(TokenError::Unavailable) => "unavailable",
        };
        self.verifications
            .with_label_values(&[kind_name(kind), result])
            .inc();
        verified
    }

    async fn check(&self, token: &str, kind: TokenKind) -> Result<Claims, TokenError> {
        let now = now_secs();
        let claims = match self.verified.get(token) {
            Some(claims) => claims,
            None => {
                let data =
                    jsonwebtoken::decode::<JwtClaims>(token, &self.decoding, &self.validation)
                        .map_err(|err| match err.kind() {
                            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                                TokenError::Expired
                            }
                            _ => TokenError::Invalid,
                        })?;
                let claims = Arc::new(data.claims);
                self.verified.insert(token, claims.clone(), now);
                claims
            }
        };
        // A token just decoded had its `exp` validated (no leeway); a remembered one is
        // checked here, before its type, in the order `decode` reports them.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.kind != kind_name(kind) {
            return Err(TokenError::WrongKind);
        }
        // Both revocation checks in one round trip.
        let revoked_key = self.revoked_key(&claims.jti);
        let generation_key = self.generation_key(&claims.sub, kind);
        let state = self.kv.get_many(&[&revoked_key, &generation_key]).await?;
        if state.first().is_some_and(Option::is_some) {
            return Err(TokenError::Revoked);
        }
        if claims.generation < parse_generation(state.get(1).and_then(Option::as_deref)) {
            return Err(TokenError::Revoked);
        }
        Ok(Claims {
            subject: claims.sub.clone(),
            token_id: claims.jti.clone(),
            kind,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    pub async fn revoke(&self, token_id: &str, expires_at: u64) -> Result<(), TokenError> {
        // No token outlives the longest lifetime: a larger `expires_at` (a plugin bug, or
        // u64::MAX) is kept only that long, never overflowing a clock.
        let longest = self.access_ttl.max(self.refresh_ttl).as_secs() + 1;
        let remaining = expires_at.saturating_sub(now_secs()).clamp(1, longest);
        self.kv
            .set(
                &self.revoked_key(token_id),
                b"1",
                Some(Duration::from_secs(remaining)),
            )
            .await?;
        Ok(())
    }

    /// Revokes every token of `kind` issued to `subject` so far: one atomic increment of
    /// its generation.
    pub async fn revoke_subject(&self, subject: &str, kind: TokenKind) -> Result<(), TokenError> {
        self.kv
            .increment(&self.generation_key(subject, kind), 1, None)
            .await?;
        Ok(())
    }

    fn revoked_key(&self, jti: &str) -> String {
        format!("{}:tokens:revoked:{jti}", self.key_prefix)
    }

    fn generation_key(&self, subject: &str, kind: TokenKind) -> String {
        format!(
            "{}:tokens:generation:{subject}:{}",
            self.key_prefix,
            kind_name(kind)
        )
    }
}

/// A stored generation counter (absent: 0).
fn parse_generation(stored: Option<&[u8]>) -> u64 {
    stored
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The token operations one plugin holds.
#[derive(Debug, Clone)]
pub struct PluginTokens {
    service: Arc<TokenService>,
    operations: Arc<BTreeSet<TokenOperation>>,
}

impl PluginTokens {
    pub fn new(service: Arc<TokenService>, operations: BTreeSet<TokenOperation>) -> Self {
        Self {
            service,
            operations: Arc::new(operations),
        }
    }
}

/// A request's view of `tokens`: the service, and which operations the plugin holds.
#[derive(Debug)]
pub struct TokensInstance {
    tokens: Option<PluginTokens>,
    calls: HostCalls,
}

impl TokensInstance {
    pub fn new(tokens: Option<PluginTokens>, calls: HostCalls) -> Self {
        Self { tokens, calls }
    }

    /// The service, if the plugin holds `operation`.
    fn may(&self, operation: TokenOperation) -> Option<&TokenService> {
        self.tokens
            .as_ref()
            .filter(|t| t.operations.contains(&operation))
            .map(|t| &*t.service)
    }
}

impl wit::Host for TokensInstance {
    async fn issue(
        &mut self,
        subject: String,
        kind: TokenKind,
    ) -> wasmtime::Result<Result<Issued, Error>> {
        let _timed = self.calls.time("tokens", "issue");
        let Some(service) = self.may(TokenOperation::Issue) else {
            return Ok(Err(Error::NotPermitted));
        };
        Ok(service.issue(&subject, kind).await.map_err(Error::from))
    }

    async fn issue_refresh(
        &mut self,
        subject: String,
        chain_started_at: u64,
    ) -> wasmtime::Result<Result<Issued, Error>> {
        let _timed = self.calls.time("tokens", "issue-refresh");
        let Some(service) = self.may(TokenOperation::Issue) else {
            return Ok(Err(Error::NotPermitted));
        };
        Ok(service
            .issue_refresh(&subject, chain_started_at)
            .await
            .map_err(Error::from))
    }

    async fn verify(
        &mut self,
        token: String,
        kind: TokenKind,
    ) -> wasmtime::Result<Result<Claims, Error>> {
        let _timed = self.calls.time("tokens", "verify");
        let Some(service) = self.may(TokenOperation::Verify) else {
            return Ok(Err(Error::NotPermitted));
        };
        Ok(service.verify(&token, kind).await.map_err(Error::from))
    }

    async fn revoke(
        &mut self,
        token_id: String,
        expires_at: u64,
    ) -> wasmtime::Result<Result<(), Error>> {
        let _timed = self.calls.time("tokens", "revoke");
        let Some(service) = self.may(TokenOperation::Revoke) else {
            return Ok(Err(Error::NotPermitted));
        };
        Ok(service
            .revoke(&token_id, expires_at)
            .await
            .map_err(Error::from))
    }

    async fn revoke_subject(
        &mut self,
        subject: String,
        kind: TokenKind,
    ) -> wasmtime::Result<Result<(), Error>> {
        let _timed = self.calls.time("tokens", "revoke-subject");
        let Some(service) = self.may(TokenOperation::Revoke) else {
            return Ok(Err(Error::NotPermitted));
        };
        Ok(service
            .revoke_subject(&subject, kind)
            .await
            .map_err(Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    async fn service() -> anyhow::Result<TokenService> {
        let config = TokenConfig {
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            ephemeral_secret: false,
            access_ttl: Duration::from_secs(60),
            refresh_ttl: Duration::from_secs(600),
            refresh_max_lifetime: Duration::from_secs(3600),
        };
        Ok(TokenService::new(
            &config,
            KvStore::in_process(),
            "t",
            Metrics::new(false)?.token_verifications,
        ))
    }

    #[tokio::test]
    async fn issued_tokens_verify_with_their_kind_only() -> anyhow::Result<()> {
        let tokens = service().await?;
        let access = tokens.issue("7", TokenKind::Access).await?;
        let claims = tokens.verify(&access.token, TokenKind::Access).await?;
        assert_eq!(claims.subject, "7");
        assert_eq!(
            tokens.verify(&access.token, TokenKind::Refresh).await.err(),
            Some(TokenError::WrongKind)
        );
        Ok(())
    }

    #[tokio::test]
    async fn forged_tokens_are_refused() -> anyhow::Result<()> {
        let tokens = service().await?;
        let access = tokens.issue("7", TokenKind::Access).await?;
        // alg=none with the same claims.
        let parts: Vec<&str> = access.token.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let forged = format!("{none_header}.{}.", parts[1]);
        assert_eq!(
            tokens.verify(&forged, TokenKind::Access).await.err(),
            Some(TokenError::Invalid)
        );
        // Signed with another key.
        let other = TokenService::new(
            &TokenConfig {
                secret: b"another-secret-another-secret-32".to_vec(),
                ephemeral_secret: false,
                access_ttl: Duration::from_secs(60),
                refresh_ttl: Duration::from_secs(60),
                refresh_max_lifetime: Duration::from_secs(3600),
            },
            KvStore::in_process(),
            "t",
            Metrics::new(false)?.token_verifications,
        );
        let foreign = other.issue("7", TokenKind::Access).await?;
        assert_eq!(
            tokens.verify(&foreign.token, TokenKind::Access).await.err(),
            Some(TokenError::Invalid)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_verified_token_is_still_checked_for_expiry_type_and_revocation_on_every_use()
    -> anyhow::Result<()> {
        let tokens = service().await?;
        let now = now_secs();
        let short = tokens.sign("7", TokenKind::Access, now, now + 1, 0)?;
        // Verified once (and remembered), then refused for its type and, once past `exp`,
        // as expired, without being decoded again.
        assert!(tokens.verify(&short.token, TokenKind::Access).await.is_ok());
        assert!(tokens.verified.get(&short.token).is_some());
        assert_eq!(
            tokens.verify(&short.token, TokenKind::Refresh).await.err(),
            Some(TokenError::WrongKind)
        );
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(
            tokens.verify(&short.token, TokenKind::Access).await.err(),
            Some(TokenError::Expired)
        );

        let long = tokens.issue("8", TokenKind::Access).await?;
        assert!(tokens.verify(&long.token, TokenKind::Access).await.is_ok());
        tokens.revoke_subject("8", TokenKind::Access).await?;
        assert_eq!(
            tokens.verify(&long.token, TokenKind::Access).await.err(),
            Some(TokenError::Revoked)
        );
        // Only verified tokens are remembered: a forged one is refused every time.
        let forged = format!("{}x", long.token);
        for _ in 0..2 {
            assert_eq!(
                tokens.verify(&forged, TokenKind::Access).await.err(),
                Some(TokenError::Invalid)
            );
        }
        assert!(tokens.verified.get(&forged).is_none());
        Ok(())
    }

    #[tokio::test]
    async fn the_verified_tokens_stay_bounded() -> anyhow::Result<()> {
        let tokens = service().await?;
        let now = now_secs();
        let claims = Arc::new(JwtClaims {
            sub: "7".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j".into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            kind: "access".into(),
            generation: 0,
        });
        for i in 0..MAX_VERIFIED_TOKENS + 10 {
            tokens
                .verified
                .insert(&format!("token-{i}"), claims.clone(), now);
        }
        let kept = tokens
            .verified
            .0
            .lock()
            .map(|m| m.len())
            .unwrap_or(usize::MAX);
        assert!(kept <= MAX_VERIFIED_TOKENS, "{kept} tokens kept");
        Ok(())
    }

    #[tokio::test]
    async fn revoking_until_the_end_of_time_is_kept_bounded() -> anyhow::Result<()> {
        let tokens = service().await?;
        let a = tokens.issue("7", TokenKind::Access).await?;
        // Used to overflow the in-process store's clock and panic the host.
        tokens.revoke(&a.claims.token_id, u64::MAX).await?;
        assert!(matches!(
            tokens.verify(&a.token, TokenKind::Access).await,
            Err(TokenError::Revoked)
        ));
        Ok(())
    }

    #[tokio::test]
    async fn revocation_by_id_and_by_subject() -> anyhow::Result<()> {
        let tokens = service().await?;
        let a = tokens.issue("7", TokenKind::Access).await?;
        tokens
            .revoke(&a.claims.token_id, a.claims.expires_at)
            .await?;
        assert_eq!(
            tokens.verify(&a.token, TokenKind::Access).await.err(),
            Some(TokenError::Revoked)
        );

        let r = tokens.issue("7", TokenKind::Refresh).await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokens.revoke_subject("7", TokenKind::Refresh).await?;
        assert_eq!(
            tokens.verify(&r.token, TokenKind::Refresh).await.err(),
            Some(TokenError::Revoked)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        let fresh = tokens.issue("7", TokenKind::Refresh).await?;
        assert!(
            tokens
                .verify(&fresh.token, TokenKind::Refresh)
                .await
                .is_ok()
        );
        Ok(())
    }
}
