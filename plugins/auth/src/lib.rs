//! The `auth` plugin: register, login, refresh, logout (docs/API.md "Auth").
//!
//! Refresh tokens are single-use and belong to a *chain* that starts at login. State in
//! the plugin's kv namespace (Redis when configured, so every host instance sees it):
//! - `refresh:<jti>` → the chain id, for every refresh token the chain has issued;
//! - `chain:<id>` → `<started-at>:<jti of the newest refresh token>` while the chain is
//!   alive. Only the newest token may be used; presenting an older one is reuse. Rotation
//!   replaces the value by compare-and-swap, so of two uses of one token at most one wins,
//!   and a chain that reuse or logout deleted can never be written back. The token is
//!   retired only by that swap, the last step: a refresh failing before it (a 503) leaves
//!   the token usable for the client's retry;
//! - `login-failures:<account>:<window>` → failed logins of one account (or of one unknown
//!   login) in a fixed window: past [`LOGIN_FAILURES_PER_ACCOUNT`] login answers 429, so
//!   guessing one account's password from many addresses is slowed down too.

use plinth_accounts::{self as accounts, NewUser, User};
use plinth_sdk::tokens::{self, TokenKind};
use plinth_sdk::validation::Fields;
use plinth_sdk::{Handler, Request, Response, kv, passwords, respond};

/// Failed logins one account may have within a window before login answers 429
/// (documented in the README, "Behaviour where docs/API.md is silent").
const LOGIN_FAILURES_PER_ACCOUNT: i64 = 10;
const LOGIN_FAILURE_WINDOW_SECS: u64 = 15 * 60;

struct Auth;

impl Handler for Auth {
    fn handle(request: Request) -> Response {
        respond(match request.route.as_str() {
            "/api/v1/auth/register" => register(&request),
            "/api/v1/auth/login" => login(&request),
            "/api/v1/auth/refresh" => refresh(&request),
            "/api/v1/auth/logout" => logout(&request),
            _ => Err(Response::not_found("Not found")),
        })
    }
}

plinth_sdk::export_plugin!(Auth);

fn register(request: &Request) -> Result<Response, Response> {
    let mut body = Fields::from_json_request(request)?;
    let fields = accounts::read_account(&mut body);
    body.finish(&["email", "username", "password", "full_name"])?;
    let (Some(email), Some(username), Some(password)) =
        (fields.email, fields.username, fields.password)
    else {
        return Err(Response::internal("validation passed without values"));
    };

    let hashed_password = passwords::hash(&password)?;
    let user = accounts::insert(NewUser {
        email,
        username,
        hashed_password,
        full_name: fields.full_name.flatten(),
        is_active: true,
        is_superuser: false,
    })?;
    Ok(user.response(201))
}

fn invalid_credentials() -> Response {
    Response::error(
        401,
        "INVALID_CREDENTIALS",
        "Incorrect email/username or password",
    )
    .with_header("www-authenticate", "Bearer")
}

fn invalid_token() -> Response {
    Response::error(401, "INVALID_TOKEN", "Invalid or expired refresh token")
        .with_header("www-authenticate", "Bearer")
}

/// A token pair; never stored by a cache (docs/API.md "Headers on every response").
fn token_response(pair: &TokenPair) -> Response {
    Response::json(200, pair).with_header("cache-control", "no-store")
}

/// JSON `{email, password}` or the OAuth2 password form `username=&password=`.
fn login(request: &Request) -> Result<Response, Response> {
    if !request.is_form() && !request.is_json() {
        return Err(Response::unsupported_media_type(&[
            "application/json",
            "application/x-www-form-urlencoded",
        ]));
    }
    let (login, password) = if request.is_form() {
        let mut form = Fields::from_form(&request.body);
        let login = form.required_str("username");
        let password = form.required_str("password");
        // The OAuth2 password flow may send these; they carry no meaning here.
        form.finish(&[
            "username",
            "password",
            "grant_type",
            "scope",
            "client_id",
            "client_secret",
        ])?;
        (login, password)
    } else {
        let mut body = Fields::from_json(&request.body)?;
        let login = body.required_str("email");
        let password = body.required_str("password");
        body.finish(&["email", "password"])?;
        (login, password)
    };
    let (Some(login), Some(password)) = (login, password) else {
        return Err(Response::internal("validation passed without values"));
    };

    // Unknown account, wrong password and inactive account: the same answer, after the
    // same work (the host checks a dummy hash when there is no user).
    let user = accounts::find_by_login(&login)?;
    let failures = FailedLogins::of(user.as_ref(), &login);
    if failures.too_many()? {
        return Err(failures.refusal());
    }
    let matches =
        match passwords::verify(&password, user.as_ref().map(|u| u.hashed_password.as_str())) {
            Ok(matches) => matches,
            Err(passwords::Error::InvalidHash) => {
                plinth_sdk::log::warn("a stored password hash was refused by the host");
                false
            }
            Err(other) => return Err(other.into()),
        };
    match user {
        Some(user) if matches && user.is_active => {
            failures.forget()?;
            let pair = issue_pair(&user.id.to_string())?;
            Ok(token_response(&pair))
        }
        _ => {
            failures.record()?;
            Err(invalid_credentials())
        }
    }
}

/// The failed-login counter of one account in the current fixed window. Unknown logins
/// are counted by the login itself, so they answer exactly like known accounts.
struct FailedLogins {
    key: String,
    /// Seconds until the window ends.
    window_left: u64,
}

impl FailedLogins {
    fn of(user: Option<&User>, login: &str) -> Self {
        let account = match user {
            Some(user) => format!("user:{}", user.id),
            // Bounded, so any login fits a kv key (no account has a longer one).
            None => format!(
                "login:{}",
                login
                    .trim()
                    .to_lowercase()
                    .chars()
                    .take(255)
                    .collect::<String>()
            ),
        };
        let now = now_secs();
        let window = now / LOGIN_FAILURE_WINDOW_SECS;
        Self {
            key: format!("login-failures:{account}:{window}"),
            window_left: (window + 1) * LOGIN_FAILURE_WINDOW_SECS - now,
        }
    }

    fn too_many(&self) -> Result<bool, Response> {
        let count = kv::get(&self.key)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<i64>().ok())
            .unwrap_or(0);
        Ok(count >= LOGIN_FAILURES_PER_ACCOUNT)
    }

    fn record(&self) -> Result<(), Response> {
        kv::increment(&self.key, 1, Some(self.window_left.max(1) * 1000))?;
        Ok(())
    }

    fn forget(&self) -> Result<(), Response> {
        kv::delete(&self.key)?;
        Ok(())
    }

    fn refusal(&self) -> Response {
        Response::error(
            429,
            "RATE_LIMITED",
            "Too many failed logins for this account; retry later",
        )
        .with_header("retry-after", &self.window_left.max(1).to_string())
    }
}

fn refresh(request: &Request) -> Result<Response, Response> {
    let token = refresh_token_field(request)?;
    let claims = verify_refresh(&token)?;
    let chain = chain_of(&claims.token_id)?.ok_or_else(invalid_token)?;
    let chain_key = format!("chain:{chain}");
    let Some(state) = kv::get(&chain_key)? else {
        return Err(invalid_token());
    };
    let link = ChainLink::parse(&state).ok_or_else(invalid_token)?;
    if link.newest != claims.token_id {
        return Err(reuse(&chain_key));
    }
    let user_id: i64 = claims.subject.parse().map_err(|_| invalid_token())?;
    match accounts::find_by_id(user_id)? {
        Some(user) if user.is_active => {}
        _ => return Err(invalid_token()),
    }

    let access = tokens::issue(&claims.subject, TokenKind::Access).map_err(token_error)?;
    let refresh = tokens::issue_refresh(&claims.subject, link.started_at).map_err(|err| {
        match err {
            // The chain reached its absolute lifetime.
            tokens::Error::Expired => invalid_token(),
            other => token_error(other),
        }
    })?;
    let ttl = Some(remaining_ms(refresh.claims.expires_at));
    kv::set(
        &format!("refresh:{}", refresh.claims.token_id),
        chain.as_bytes(),
        ttl,
    )?;
    let next = ChainLink {
        started_at: link.started_at,
        newest: refresh.claims.token_id.clone(),
    };
    // Commits the rotation, and retires the presented token, only if nothing else used
    // it (or ended the chain) since it was read.
    if !kv::compare_and_swap(&chain_key, Some(&state), Some(&next.to_bytes()), ttl)? {
        return Err(reuse(&chain_key));
    }
    Ok(token_response(&pair(access, refresh)))
}

/// A retired refresh token was presented, or one token was used twice at once: whoever
/// holds it may have stolen it, so the whole chain ends, its newest token included.
fn reuse(chain_key: &str) -> Response {
    plinth_sdk::log::warn("refresh token reuse: revoking its chain");
    match kv::delete(chain_key) {
        Ok(_) => invalid_token(),
        Err(err) => err.into(),
    }
}

/// The value of `chain:<id>`: when the chain began and its newest refresh token.
struct ChainLink {
    started_at: u64,
    newest: String,
}

impl ChainLink {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let (started_at, newest) = std::str::from_utf8(bytes).ok()?.split_once(':')?;
        Some(Self {
            started_at: started_at.parse().ok()?,
            newest: newest.to_owned(),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        format!("{}:{}", self.started_at, self.newest).into_bytes()
    }
}

/// Deleting the chain needs no compare-and-swap: a rotation racing the logout swaps only
/// from the value it read, so it cannot write the chain back.
///
/// Idempotent (docs/API.md): a genuine refresh token answers 204 even when it is already retired
/// or revoked; only a malformed, forged or expired one is 401.
fn logout(request: &Request) -> Result<Response, Response> {
    let token = refresh_token_field(request)?;
    match tokens::verify(&token, TokenKind::Refresh) {
        Ok(claims) => {
            if let Some(chain) = chain_of(&claims.token_id)? {
                kv::delete(&format!("chain:{chain}"))?;
            }
            kv::delete(&format!("refresh:{}", claims.token_id))?;
        }
        // Signed by this host and unexpired, but revoked already (e.g. by a password
        // change): nothing left to revoke.
        Err(tokens::Error::Revoked) => {}
        Err(tokens::Error::Unavailable) => return Err(Response::unavailable("token store")),
        Err(_) => return Err(invalid_token()),
    }
    // The access token sent along stops working at once (deny-listed until its exp).
    if let Some(principal) = &request.principal {
        tokens::revoke(&principal.token_id, principal.expires_at).map_err(token_error)?;
    }
    Ok(Response::empty(204))
}

/// The `refresh_token` of the body. An empty string is present but no token: 401.
fn refresh_token_field(request: &Request) -> Result<String, Response> {
    let mut body = Fields::from_json_request(request)?;
    let token = body.required_str("refresh_token");
    body.finish(&["refresh_token"])?;
    match token {
        Some(token) if !token.is_empty() => Ok(token),
        _ => Err(invalid_token()),
    }
}

fn verify_refresh(token: &str) -> Result<tokens::Claims, Response> {
    tokens::verify(token, TokenKind::Refresh).map_err(|err| match err {
        tokens::Error::Unavailable => Response::unavailable("token store"),
        _ => invalid_token(),
    })
}

fn chain_of(token_id: &str) -> Result<Option<String>, Response> {
    Ok(kv::get(&format!("refresh:{token_id}"))?.and_then(|bytes| String::from_utf8(bytes).ok()))
}

fn token_error(err: tokens::Error) -> Response {
    match err {
        tokens::Error::Unavailable => Response::unavailable("token store"),
        other => Response::internal(&format!("tokens: {other:?}")),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn remaining_ms(expires_at: u64) -> u64 {
    expires_at.saturating_sub(now_secs()).max(1) * 1000
}

#[derive(serde::Serialize)]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// Issues an access + refresh pair whose refresh token starts a new chain (at login).
fn issue_pair(subject: &str) -> Result<TokenPair, Response> {
    let access = tokens::issue(subject, TokenKind::Access).map_err(token_error)?;
    let refresh = tokens::issue(subject, TokenKind::Refresh).map_err(token_error)?;
    let chain = &refresh.claims.token_id;
    let ttl = Some(remaining_ms(refresh.claims.expires_at));
    let link = ChainLink {
        started_at: refresh.claims.issued_at,
        newest: chain.clone(),
    };
    kv::set(&format!("refresh:{chain}"), chain.as_bytes(), ttl)?;
    kv::set(&format!("chain:{chain}"), &link.to_bytes(), ttl)?;
    Ok(pair(access, refresh))
}

fn pair(access: tokens::Issued, refresh: tokens::Issued) -> TokenPair {
    TokenPair {
        access_token: access.token,
        refresh_token: refresh.token,
        token_type: "bearer",
        expires_in: access
            .claims
            .expires_at
            .saturating_sub(access.claims.issued_at),
    }
}
