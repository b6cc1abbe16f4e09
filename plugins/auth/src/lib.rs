//! The `auth` plugin: register, login, refresh, logout (docs/API.md "Auth").
//!
//! Refresh tokens are single-use and belong to a *chain* that starts at login. State in
//! the plugin's kv namespace (Redis when configured, so every host instance sees it):
//! - `refresh:<jti>` → the chain id, for every refresh token the chain has issued;
//! - `chain:<id>` → `<started-at>:<jti of the newest refresh token>` while the chain is
//!   alive. Only the newest token may be used; presenting an older one is reuse. Rotation
//!   replaces the value by compare-and-swap, so of two uses of one token at most one wins,
//!   and a chain that reuse or logout deleted can never be written back. The token is
//!   retired only by that swap: a refresh failing before it (a 503) leaves the token
//!   usable for the client's retry;
//! - `pending:<jti>` → the pair a rotation of refresh token `<jti>` hands out, for
//!   [`PENDING_TTL_MS`]: written before the swap, removed when the pair is answered. When
//!   the swap's outcome is unknown (Redis ran it but its reply was lost: 503), the client's
//!   retry with the same token finds the chain already moved on to exactly that pair's
//!   refresh token and gets the pair the swap committed, instead of being taken for reuse.
//!   A pair is answered at most once, and only after its record is certainly gone, so a
//!   token presented again after its pair was answered is still reuse (see [`refresh`]);
//! - `login-failures:<account>:<window>` → failed logins of one account (or of one unknown
//!   login) in a fixed window: past [`LOGIN_FAILURES_PER_ACCOUNT`] login answers 429, so
//!   guessing one account's password from many addresses is slowed down too.

use plinth_accounts::{self as accounts, NewUser, User};
use plinth_sdk::tokens::{self, TokenKind};
use plinth_sdk::validation::Fields;
use plinth_sdk::{ErrorCode, Handler, Request, Response, kv, passwords, respond};

/// Failed logins one account may have within a window before login answers 429
/// (documented in the README, "Behaviour where docs/API.md is silent").
const LOGIN_FAILURES_PER_ACCOUNT: i64 = 10;
const LOGIN_FAILURE_WINDOW_SECS: u64 = 15 * 60;

/// How long the pair of a rotation whose outcome is unknown waits for the client's retry.
/// The record holds two live bearer tokens in the store, so it is short-lived and removed
/// as soon as the pair is answered: only a rotation that failed after its swap leaves it
/// behind, and only this long. Longer than the plugin's time limit (`timeout_ms`), so the
/// record outlives the request that wrote it; long enough for a client's prompt retry.
const PENDING_TTL_MS: u64 = 30_000;

// `Route`: one variant per `[[route]]` of plugin.toml, written by build.rs.
include!(concat!(env!("OUT_DIR"), "/routes.rs"));

struct Auth;

impl Handler for Auth {
    fn handle(request: Request) -> Response {
        respond(match Route::of(&request) {
            Some(Route::Register) => register(&request),
            Some(Route::Login) => login(&request),
            Some(Route::Refresh) => refresh(&request),
            Some(Route::Logout) => logout(&request),
            None => Err(Response::undeclared_route(&request)),
        })
    }
}

plinth_sdk::export_plugin!(Auth);

fn register(request: &Request) -> Result<Response, Response> {
    let mut body = Fields::from_json_request(request)?;
    let fields = accounts::read_account(&mut body);
    let (email, username, password) = body.finish_with(
        &["email", "username", "password", "full_name"],
        (fields.email, fields.username, fields.password),
    )?;

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
        form.finish_with(
            &[
                "username",
                "password",
                "grant_type",
                "scope",
                "client_id",
                "client_secret",
            ],
            (login, password),
        )?
    } else {
        let mut body = Fields::from_json(&request.body)?;
        let login = body.required_str("email");
        let password = body.required_str("password");
        body.finish_with(&["email", "password"], (login, password))?
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
        Response::code(
            ErrorCode::RateLimited,
            "Too many failed logins for this account; retry later",
        )
        .with_header("retry-after", &self.window_left.max(1).to_string())
    }
}

/// Rotation (docs/API.md "Auth"): only the chain's newest token is accepted, and the
/// compare-and-swap of `chain:<id>` decides which one use of it wins. Its three outcomes:
/// swapped (the pair is answered, once its `pending:` record is removed), not swapped
/// (someone used or ended the chain since it was read: reuse), or unknown (an error from
/// the store: 503, and the `pending:` record stays for the retry, see [`redeliver`]).
fn refresh(request: &Request) -> Result<Response, Response> {
    let token = refresh_token_field(request)?;
    let claims = verify_refresh(&token)?;
    let chain = chain_of(&claims.token_id)?.ok_or_else(invalid_token)?;
    let chain_key = format!("chain:{chain}");
    let Some(state) = kv::get(&chain_key)? else {
        return Err(invalid_token());
    };
    let link = ChainLink::parse(&state).ok_or_else(invalid_token)?;
    let pending_key = format!("pending:{}", claims.token_id);
    if link.newest != claims.token_id {
        return redeliver(&pending_key, &link, &chain_key);
    }
    let user_id: i64 = claims.subject.parse().map_err(|_| invalid_token())?;
    match accounts::find_by_id(user_id)? {
        Some(user) if user.is_active => {}
        _ => return Err(invalid_token()),
    }

    let access = tokens::issue(&claims.subject, TokenKind::Access)?;
    let refresh = tokens::issue_refresh(&claims.subject, link.started_at).map_err(|err| {
        match err {
            // The chain reached its absolute lifetime.
            tokens::Error::Expired => invalid_token(),
            other => other.into(),
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
    let pending = Pending::of(pair(access, refresh), &next.newest);
    kv::set(&pending_key, &pending.to_bytes()?, Some(PENDING_TTL_MS))?;
    // Commits the rotation, and retires the presented token, only if nothing else used
    // it (or ended the chain) since it was read.
    match kv::compare_and_swap(&chain_key, Some(&state), Some(&next.to_bytes()), ttl) {
        Ok(true) => hand_out(&pending_key, pending, &chain_key),
        Ok(false) => {
            forget(&pending_key);
            Err(reuse(&chain_key))
        }
        // Perhaps swapped, perhaps not: the pending record answers the retry either way
        // (a chain not moved on rotates anew; one moved on to this pair redelivers it).
        Err(err) => Err(err.into()),
    }
}

/// The presented token is not the chain's newest. Either it is retired and presented
/// again (reuse), or its rotation committed without the answer reaching the client (the
/// store's reply was lost, 503) and this is the client's retry: then `pending:<jti>` holds
/// exactly the pair whose refresh token is the chain's newest, and that pair is answered
/// again (no new pair is issued). A chain ended in between (logout, reuse) has no newest
/// to match, so nothing is redelivered after it; the chain's owner revoked by a password
/// change or deactivation cannot get here (the presented token is refused first).
fn redeliver(pending_key: &str, link: &ChainLink, chain_key: &str) -> Result<Response, Response> {
    match kv::get(pending_key)?.and_then(|bytes| Pending::parse(&bytes)) {
        Some(pending) if pending.refresh_id == link.newest => {
            hand_out(pending_key, pending, chain_key)
        }
        Some(_) => {
            forget(pending_key);
            Err(reuse(chain_key))
        }
        None => Err(reuse(chain_key)),
    }
}

/// Answers the recorded pair once its record is certainly gone, so that each pair is
/// answered at most once and a token presented again after that is reuse. Found gone: a
/// use of the same token took it meanwhile, i.e. the token was presented twice, so this is
/// reuse. Unknown (an error): 503, and the record, if it is still there, answers the retry.
fn hand_out(pending_key: &str, pending: Pending, chain_key: &str) -> Result<Response, Response> {
    if kv::delete(pending_key)? {
        Ok(token_response(&pending.into_pair()))
    } else {
        Err(reuse(chain_key))
    }
}

/// Removes a pending record no one will be answered; best effort, as it expires anyway.
fn forget(pending_key: &str) {
    let _ = kv::delete(pending_key);
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

/// The value of `pending:<jti>`: the pair one rotation of `<jti>` hands out, and the jti
/// of its refresh token. Only what the answer needs (the token type is a constant).
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    refresh_id: String,
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

impl Pending {
    fn of(pair: TokenPair, refresh_id: &str) -> Self {
        Self {
            refresh_id: refresh_id.to_owned(),
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            expires_in: pair.expires_in,
        }
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    fn to_bytes(&self) -> Result<Vec<u8>, Response> {
        serde_json::to_vec(self).map_err(|_| Response::internal("pending pair: not serializable"))
    }

    fn into_pair(self) -> TokenPair {
        TokenPair {
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            token_type: "bearer",
            expires_in: self.expires_in,
        }
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
/// from the value it read, so it cannot write the chain back. Nor is a pair kept for the
/// retry of a lost rotation (`pending:`) handed out after it: redelivery needs the chain.
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
        tokens::revoke(&principal.token_id, principal.expires_at)?;
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
    let access = tokens::issue(subject, TokenKind::Access)?;
    let refresh = tokens::issue(subject, TokenKind::Refresh)?;
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
