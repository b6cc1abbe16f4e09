//! User accounts, as the `auth` and `users` plugins share them: the user object of docs/API.md,
//! the rules for its fields, and the statements that read and write the `users` table
//! (through the host's `sql` capability; placeholders are `$n` on both backends).

use plinth_sdk::db::{self, Autocommit, Row, Statements};
use plinth_sdk::sql::{self, Value};
use plinth_sdk::validation::{Fields, has_control_chars, is_valid_email};
use plinth_sdk::{Request, Response};
use serde::Serialize;

const COLUMNS: &str = "id, email, username, hashed_password, full_name, is_active, is_superuser, created_at, updated_at";

/// A user as stored. `hashed_password` never leaves the plugin: see [`User::public`].
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub hashed_password: String,
    pub full_name: Option<String>,
    pub is_active: bool,
    pub is_superuser: bool,
    pub created_at: String,
    pub updated_at: Option<String>,
}

/// The user object of docs/API.md.
#[derive(Debug, Serialize)]
pub struct PublicUser<'a> {
    pub id: i64,
    pub email: &'a str,
    pub username: &'a str,
    pub full_name: Option<&'a str>,
    pub is_active: bool,
    pub is_superuser: bool,
    pub created_at: &'a str,
    pub updated_at: Option<&'a str>,
}

impl User {
    fn from_row(row: Row<'_>) -> Option<Self> {
        Some(Self {
            id: row.i64("id")?,
            email: row.str("email")?.to_owned(),
            username: row.str("username")?.to_owned(),
            hashed_password: row.str("hashed_password")?.to_owned(),
            full_name: row.str("full_name").map(str::to_owned),
            is_active: row.bool("is_active")?,
            is_superuser: row.bool("is_superuser")?,
            created_at: normalise_timestamp(row.str("created_at")?),
            updated_at: row.str("updated_at").map(normalise_timestamp),
        })
    }

    pub fn public(&self) -> PublicUser<'_> {
        PublicUser {
            id: self.id,
            email: &self.email,
            username: &self.username,
            full_name: self.full_name.as_deref(),
            is_active: self.is_active,
            is_superuser: self.is_superuser,
            created_at: &self.created_at,
            updated_at: self.updated_at.as_deref(),
        }
    }

    pub fn response(&self, status: u16) -> Response {
        Response::json(status, &self.public())
    }
}

/// Timestamps are stored at whole seconds; older rows may carry fractions: drop them.
fn normalise_timestamp(t: &str) -> String {
    match (t.find('.'), t.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &t[..dot]),
        _ => t.to_owned(),
    }
}

fn first_user(rows: &sql::Rows) -> Result<Option<User>, Response> {
    match db::rows(rows).next() {
        None => Ok(None),
        Some(row) => User::from_row(row)
            .map(Some)
            .ok_or_else(|| Response::internal("users row has an unexpected shape")),
    }
}

/// Read from the primary, never a replica: what it returns decides access (a demotion or
/// deactivation takes effect at once).
pub fn find_by_id(id: i64) -> Result<Option<User>, Response> {
    let rows = sql::query(
        &format!("SELECT {COLUMNS} FROM users WHERE id = $1"),
        &[Value::Integer(id)],
    )?;
    first_user(&rows)
}

/// By email (case-insensitive) or, failing that, by username (case-insensitive).
pub fn find_by_login(login: &str) -> Result<Option<User>, Response> {
    // No email or username holds a control character: such a login finds nobody, and never
    // reaches the database (PostgreSQL refuses U+0000 outright; SQLite would compare it).
    if has_control_chars(login) {
        return Ok(None);
    }
    let login = login.trim().to_lowercase();
    // The primary: a password just changed must be the one checked.
    let rows = sql::query(
        &format!(
            "SELECT {COLUMNS} FROM users WHERE lower(email) = $1 OR lower(username) = $1 \
             ORDER BY id LIMIT 1"
        ),
        &[Value::Text(login)],
    )?;
    first_user(&rows)
}

/// One page of users ordered by id, and the total.
pub fn list(offset: i64, limit: i64) -> Result<(Vec<User>, i64), Response> {
    let rows = sql::query_read(
        &format!("SELECT {COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2"),
        &[Value::Integer(limit), Value::Integer(offset)],
    )?;
    let users = db::rows(&rows)
        .map(|row| User::from_row(row).ok_or_else(|| Response::internal("bad users row")))
        .collect::<Result<Vec<_>, _>>()?;
    let total = sql::query_read("SELECT COUNT(*) AS total FROM users", &[])?;
    let total = db::rows(&total)
        .next()
        .and_then(|r| r.i64("total"))
        .unwrap_or_default();
    Ok((users, total))
}

/// A new user's fields, already validated; the password already hashed.
#[derive(Debug)]
pub struct NewUser {
    pub email: String,
    pub username: String,
    pub hashed_password: String,
    pub full_name: Option<String>,
    pub is_active: bool,
    pub is_superuser: bool,
}

/// Inserts a user; the unique indexes decide conflicts (409), so concurrent registrations
/// of one email give exactly one user.
pub fn insert(new: NewUser) -> Result<User, Response> {
    let email = new.email.clone();
    let rows = sql::query(
        &format!(
            "INSERT INTO users (email, username, hashed_password, full_name, is_active, \
             is_superuser, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        ),
        &[
            Value::Text(new.email),
            Value::Text(new.username),
            Value::Text(new.hashed_password),
            new.full_name.map_or(Value::Null, Value::Text),
            Value::Boolean(new.is_active),
            Value::Boolean(new.is_superuser),
            Value::Timestamp(plinth_sdk::time::now_rfc3339()),
        ],
    )
    .map_err(|err| conflict_or_error(err, Some(&email), None))?;
    first_user(&rows)?.ok_or_else(|| Response::internal("INSERT returned no row"))
}

/// A change to some of a user's fields (`None`: unchanged).
#[derive(Debug, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub username: Option<String>,
    pub full_name: Option<Option<String>>,
    pub hashed_password: Option<String>,
    pub is_active: Option<bool>,
    pub is_superuser: Option<bool>,
}

/// Applies `changes` and sets `updated_at`; `None` when the user does not exist.
pub fn update(id: i64, changes: UserChanges) -> Result<Option<User>, Response> {
    update_in(&Autocommit, id, changes)
}

/// [`update`] through `db` (e.g. inside a transaction).
pub fn update_in(
    db: &impl Statements,
    id: i64,
    changes: UserChanges,
) -> Result<Option<User>, Response> {
    let email = changes.email.clone();
    let mut sets = Vec::new();
    let mut params = Vec::new();
    let mut set = |column: &str, value: Value| {
        params.push(value);
        sets.push(format!("{column} = ${}", params.len()));
    };
    if let Some(email) = changes.email {
        set("email", Value::Text(email));
    }
    if let Some(username) = changes.username {
        set("username", Value::Text(username));
    }
    if let Some(full_name) = changes.full_name {
        set("full_name", full_name.map_or(Value::Null, Value::Text));
    }
    if let Some(hash) = changes.hashed_password {
        set("hashed_password", Value::Text(hash));
    }
    if let Some(active) = changes.is_active {
        set("is_active", Value::Boolean(active));
    }
    if let Some(superuser) = changes.is_superuser {
        set("is_superuser", Value::Boolean(superuser));
    }
    set(
        "updated_at",
        Value::Timestamp(plinth_sdk::time::now_rfc3339()),
    );
    params.push(Value::Integer(id));
    let statement = format!(
        "UPDATE users SET {} WHERE id = ${} RETURNING {COLUMNS}",
        sets.join(", "),
        params.len()
    );
    let rows = db
        .query(&statement, &params)
        .map_err(|err| conflict_or_error(err, email.as_deref(), Some(id)))?;
    first_user(&rows)
}

/// Deletes a user; false when there was none.
pub fn delete(id: i64) -> Result<bool, Response> {
    delete_in(&Autocommit, id)
}

/// [`delete`] through `db` (e.g. inside a transaction).
pub fn delete_in(db: &impl Statements, id: i64) -> Result<bool, Response> {
    Ok(db.execute("DELETE FROM users WHERE id = $1", &[Value::Integer(id)])? > 0)
}

/// Refuses (409 `LAST_SUPERUSER`) a change that would leave no active superuser: `id`
/// losing its rights when it holds the only ones. Call inside the transaction that makes
/// the change: the active superusers' rows are locked (PostgreSQL `FOR UPDATE`; SQLite's
/// transaction holds the write lock), so two superusers demoting each other at once
/// cannot both succeed.
pub fn keep_a_superuser(db: &impl Statements, id: i64) -> Result<(), Response> {
    let lock = match sql::backend() {
        sql::BackendKind::Postgres => " FOR UPDATE",
        sql::BackendKind::Sqlite => "",
    };
    let rows = db.query(
        &format!("SELECT id FROM users WHERE is_active = $1 AND is_superuser = $1{lock}"),
        &[Value::Boolean(true)],
    )?;
    let superusers: Vec<i64> = db::rows(&rows).filter_map(|row| row.i64("id")).collect();
    if superusers == [id] {
        return Err(Response::error(
            409,
            "LAST_SUPERUSER",
            "This change would leave no active superuser",
        ));
    }
    Ok(())
}

/// A unique violation is 409. When both email and username clash, the backends disagree on
/// which index reports first, so the email is checked explicitly: EMAIL_TAKEN wins.
fn conflict_or_error(err: sql::Error, email: Option<&str>, exclude_id: Option<i64>) -> Response {
    let sql::Error::UniqueViolation(constraint) = err else {
        return err.into();
    };
    let email_taken = match email {
        Some(email) => sql::query(
            "SELECT id FROM users WHERE lower(email) = $1 AND id <> $2",
            &[
                Value::Text(email.to_owned()),
                Value::Integer(exclude_id.unwrap_or(-1)),
            ],
        )
        .map(|rows| !rows.rows.is_empty())
        .unwrap_or(constraint.contains("email")),
        None => false,
    };
    if email_taken || !constraint.contains("username") {
        Response::error(409, "EMAIL_TAKEN", "This email is already registered")
    } else {
        Response::error(409, "USERNAME_TAKEN", "This username is already taken")
    }
}

/// The authenticated, active user of this request; 401 otherwise (no principal, the user
/// was deleted, or deactivated since the token was issued).
pub fn current_user(request: &Request) -> Result<User, Response> {
    let principal = request
        .principal
        .as_ref()
        .ok_or_else(Response::not_authenticated)?;
    let id: i64 = principal
        .subject
        .parse()
        .map_err(|_| Response::not_authenticated())?;
    match find_by_id(id)? {
        Some(user) if user.is_active => Ok(user),
        _ => Err(Response::not_authenticated()),
    }
}

// --- field rules (docs/API.md "Users") ---

/// The fields every new account has, read and checked (`None` where a problem was recorded).
#[derive(Debug)]
pub struct AccountFields {
    pub email: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub full_name: Option<Option<String>>,
}

/// Reads `email`, `username`, `password` (required) and `full_name` (optional).
pub fn read_account(body: &mut Fields) -> AccountFields {
    let email = body.required_str("email");
    let username = body.required_str("username");
    let password = body.required_str("password");
    let full_name = body.optional_str("full_name");
    AccountFields {
        email: email_field(body, email),
        username: username_field(body, username),
        password: password_field(body, "password", password),
        full_name: full_name_field(body, full_name),
    }
}

/// Reads the optional profile changes `email`, `username` and `full_name`.
pub fn read_profile_changes(body: &mut Fields) -> UserChanges {
    let email = body.optional_non_null_str("email");
    let username = body.optional_non_null_str("username");
    let full_name = body.optional_str("full_name");
    UserChanges {
        email: email_field(body, email),
        username: username_field(body, username),
        full_name: full_name_field(body, full_name),
        ..UserChanges::default()
    }
}

/// Records a problem with field `name` when `value` holds a control character, which no
/// text field accepts (checked before any trimming: a trailing newline is refused too).
fn has_control_chars_recorded(fields: &mut Fields, name: &str, value: &str) -> bool {
    let found = has_control_chars(value);
    if found {
        fields.invalid(
            name,
            "String should not contain control characters",
            "string_pattern_mismatch",
        );
    }
    found
}

/// Email: valid, at most 255 chars; returned trimmed and lower-cased.
pub fn email_field(fields: &mut Fields, value: Option<String>) -> Option<String> {
    let email = value?;
    if has_control_chars_recorded(fields, "email", &email) {
        return None;
    }
    let email = email.trim().to_lowercase();
    if email.chars().count() > 255 {
        fields.invalid(
            "email",
            "String should have at most 255 characters",
            "string_too_long",
        );
        None
    } else if !is_valid_email(&email) {
        fields.invalid("email", "value is not a valid email address", "value_error");
        None
    } else {
        Some(email)
    }
}

/// Username: 3–50 chars of `A-Z a-z 0-9 _ . -`, stored as given.
pub fn username_field(fields: &mut Fields, value: Option<String>) -> Option<String> {
    let username = value?;
    let length = username.chars().count();
    if length < 3 {
        fields.invalid(
            "username",
            "String should have at least 3 characters",
            "string_too_short",
        );
        None
    } else if length > 50 {
        fields.invalid(
            "username",
            "String should have at most 50 characters",
            "string_too_long",
        );
        None
    } else if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        fields.invalid(
            "username",
            "String should contain only letters, digits, '_', '.' and '-'",
            "string_pattern_mismatch",
        );
        None
    } else {
        Some(username)
    }
}

/// Password: 8–128 Unicode scalar values, no control characters, never truncated.
pub fn password_field(fields: &mut Fields, name: &str, value: Option<String>) -> Option<String> {
    let password = value?;
    let length = password.chars().count();
    if has_control_chars_recorded(fields, name, &password) {
        None
    } else if length < 8 {
        fields.invalid(
            name,
            "String should have at least 8 characters",
            "string_too_short",
        );
        None
    } else if length > 128 {
        fields.invalid(
            name,
            "String should have at most 128 characters",
            "string_too_long",
        );
        None
    } else {
        Some(password)
    }
}

/// Full name: optional, at most 255 chars, no control characters.
pub fn full_name_field(
    fields: &mut Fields,
    value: Option<Option<String>>,
) -> Option<Option<String>> {
    match value? {
        Some(name) if has_control_chars_recorded(fields, "full_name", &name) => None,
        Some(name) if name.chars().count() > 255 => {
            fields.invalid(
                "full_name",
                "String should have at most 255 characters",
                "string_too_long",
            );
            None
        }
        other => Some(other),
    }
}
