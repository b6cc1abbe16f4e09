//! The `users` plugin: the current user's own account and superuser administration
//! (docs/API.md "Users"). The host has verified the bearer token; this plugin loads the user
//! behind it on every request, so a deactivated or deleted user's tokens answer 401.

use plinth_accounts::{self as accounts, NewUser, User, UserChanges};
use plinth_sdk::db;
use plinth_sdk::tokens::{self, TokenKind};
use plinth_sdk::validation::{Fields, Issue, unprocessable};
use plinth_sdk::{Handler, Request, Response, passwords, respond};

// `Route`: one variant per `[[route]]` of plugin.toml, written by build.rs.
include!(concat!(env!("OUT_DIR"), "/routes.rs"));

struct Users;

impl Handler for Users {
    fn handle(request: Request) -> Response {
        respond(route(&request))
    }
}

plinth_sdk::export_plugin!(Users);

fn route(request: &Request) -> Result<Response, Response> {
    let me = accounts::current_user(request)?;
    match Route::of(request) {
        Some(Route::ReadMe) => Ok(me.response(200)),
        Some(Route::UpdateMe) => update_me(request, &me),
        Some(Route::DeleteMe) => delete_me(&me),
        Some(Route::ChangePassword) => change_password(request, &me),
        Some(Route::ListUsers | Route::ListUsersSlash) => list(request, &me),
        Some(Route::CreateUser | Route::CreateUserSlash) => create(request, &me),
        Some(Route::ReadUser) => get_one(request, &me),
        Some(Route::UpdateUser) => update_one(request, &me),
        Some(Route::DeleteUser) => delete_one(request, &me),
        None => Err(Response::undeclared_route(request)),
    }
}

fn require_superuser(me: &User) -> Result<(), Response> {
    if me.is_superuser {
        Ok(())
    } else {
        Err(Response::forbidden("Superuser privileges are required"))
    }
}

/// The `{id}` path parameter as an integer (422 otherwise).
fn path_id(request: &Request) -> Result<i64, Response> {
    request
        .param("id")
        .and_then(|id| id.parse::<i64>().ok())
        .ok_or_else(|| {
            unprocessable(vec![Issue::new(
                &["path", "id"],
                "Input should be a valid integer",
                "int_parsing",
            )])
        })
}

fn update_me(request: &Request, me: &User) -> Result<Response, Response> {
    let mut body = Fields::from_json_request(request)?;
    let changes = accounts::read_profile_changes(&mut body);
    body.finish(&["email", "username", "full_name"])?;
    apply(me, changes)
}

/// Applies changes to `user` (nothing to change answers the user as it is).
fn apply(user: &User, changes: UserChanges) -> Result<Response, Response> {
    let nothing = changes.email.is_none()
        && changes.username.is_none()
        && changes.full_name.is_none()
        && changes.hashed_password.is_none()
        && changes.is_active.is_none()
        && changes.is_superuser.is_none();
    if nothing {
        return Ok(user.response(200));
    }
    match accounts::update(user.id, changes)? {
        Some(updated) => Ok(updated.response(200)),
        None => Err(Response::not_found("User not found")),
    }
}

fn delete_me(me: &User) -> Result<Response, Response> {
    if me.is_superuser {
        return Err(Response::forbidden(
            "A superuser cannot delete their own account",
        ));
    }
    accounts::delete(me.id)?;
    revoke_all_tokens(me.id)?;
    Ok(Response::empty(204))
}

fn change_password(request: &Request, me: &User) -> Result<Response, Response> {
    let mut body = Fields::from_json_request(request)?;
    let current = body.required_str("current_password");
    let new = body.required_str("new_password");
    let new = accounts::password_field(&mut body, "new_password", new);
    if let (Some(current), Some(new)) = (&current, &new)
        && current == new
    {
        body.invalid(
            "new_password",
            "The new password must differ from the current one",
            "value_error",
        );
    }
    let (current, new) = body.finish_with(&["current_password", "new_password"], (current, new))?;
    if !passwords::verify(&current, Some(&me.hashed_password)).unwrap_or(false) {
        return Err(Response::error(
            400,
            "INCORRECT_PASSWORD",
            "Incorrect password",
        ));
    }
    let hashed_password = passwords::hash(&new)?;
    accounts::update(
        me.id,
        UserChanges {
            hashed_password: Some(hashed_password),
            ..UserChanges::default()
        },
    )?;
    revoke_sessions(me.id)?;
    Ok(Response::empty(204))
}

/// Every refresh chain of the user stops working.
fn revoke_sessions(user_id: i64) -> Result<(), Response> {
    revoke(user_id, TokenKind::Refresh)
}

/// A deactivated or deleted user's access tokens stop working everywhere at once, not only
/// here: every plugin's `auth = "required"` route is checked by the host, which knows
/// nothing of accounts but honours revocations.
fn revoke_all_tokens(user_id: i64) -> Result<(), Response> {
    revoke(user_id, TokenKind::Refresh)?;
    revoke(user_id, TokenKind::Access)
}

fn revoke(user_id: i64, kind: TokenKind) -> Result<(), Response> {
    tokens::revoke_subject(&user_id.to_string(), kind).map_err(|err| match err {
        tokens::Error::Unavailable => Response::unavailable("token store"),
        other => Response::internal(&format!("tokens: {other:?}")),
    })
}

fn list(request: &Request, me: &User) -> Result<Response, Response> {
    require_superuser(me)?;
    let mut query = Fields::from_query(&request.query);
    let offset = query.optional_int("offset", 0, i64::MAX).unwrap_or(0);
    let limit = query.optional_int("limit", 1, 100).unwrap_or(50);
    query.finish_lenient()?;
    let (users, total) = accounts::list(offset, limit)?;
    let items: Vec<_> = users.iter().map(User::public).collect();
    Ok(Response::json(
        200,
        &serde_json::json!({ "items": items, "total": total, "offset": offset, "limit": limit }),
    ))
}

fn create(request: &Request, me: &User) -> Result<Response, Response> {
    require_superuser(me)?;
    let mut body = Fields::from_json_request(request)?;
    let fields = accounts::read_account(&mut body);
    let is_active = body.optional_bool("is_active");
    let is_superuser = body.optional_bool("is_superuser");
    let (email, username, password) = body.finish_with(
        &[
            "email",
            "username",
            "password",
            "full_name",
            "is_active",
            "is_superuser",
        ],
        (fields.email, fields.username, fields.password),
    )?;
    let user = accounts::insert(NewUser {
        email,
        username,
        hashed_password: passwords::hash(&password)?,
        full_name: fields.full_name.flatten(),
        is_active: is_active.unwrap_or(true),
        is_superuser: is_superuser.unwrap_or(false),
    })?;
    Ok(user.response(201))
}

fn get_one(request: &Request, me: &User) -> Result<Response, Response> {
    let id = path_id(request)?;
    // 403 before 404 for non-superusers: they learn nothing about other ids.
    if id != me.id && !me.is_superuser {
        return Err(Response::forbidden("Not allowed to read this user"));
    }
    match accounts::find_by_id(id)? {
        Some(user) => Ok(user.response(200)),
        None => Err(Response::not_found("User not found")),
    }
}

fn update_one(request: &Request, me: &User) -> Result<Response, Response> {
    let id = path_id(request)?;
    require_superuser(me)?;
    let mut body = Fields::from_json_request(request)?;
    let profile = accounts::read_profile_changes(&mut body);
    let password = body.optional_non_null_str("password");
    let password = accounts::password_field(&mut body, "password", password);
    let is_active = body.optional_bool("is_active");
    let is_superuser = body.optional_bool("is_superuser");
    body.finish(&[
        "email",
        "username",
        "full_name",
        "password",
        "is_active",
        "is_superuser",
    ])?;
    let Some(user) = accounts::find_by_id(id)? else {
        return Err(Response::not_found("User not found"));
    };
    let hashed_password = match password {
        Some(password) => Some(passwords::hash(&password)?),
        None => None,
    };
    let password_changed = hashed_password.is_some();
    let changes = UserChanges {
        hashed_password,
        is_active,
        is_superuser,
        ..profile
    };
    let response = if is_active == Some(false) || is_superuser == Some(false) {
        // Check and change in one transaction: no moment without an active superuser.
        db::transaction(|tx| {
            accounts::keep_a_superuser(tx, id)?;
            match accounts::update_in(tx, id, changes)? {
                Some(updated) => Ok(updated.response(200)),
                None => Err(Response::not_found("User not found")),
            }
        })?
    } else {
        apply(&user, changes)?
    };
    if is_active == Some(false) {
        revoke_all_tokens(id)?;
    } else if password_changed {
        revoke_sessions(id)?;
    }
    Ok(response)
}

fn delete_one(request: &Request, me: &User) -> Result<Response, Response> {
    let id = path_id(request)?;
    require_superuser(me)?;
    if id == me.id {
        return Err(Response::forbidden(
            "A superuser cannot delete their own account",
        ));
    }
    let deleted = db::transaction(|tx| {
        accounts::keep_a_superuser(tx, id)?;
        accounts::delete_in(tx, id)
    })?;
    if !deleted {
        return Err(Response::not_found("User not found"));
    }
    revoke_all_tokens(id)?;
    Ok(Response::empty(204))
}
