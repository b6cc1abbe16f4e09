//! # plinth-sdk: write a Plinth endpoint plugin
//!
//! A plugin is a `cdylib` crate built with `cargo build --target wasm32-wasip2`. It
//! implements [`Handler`] and exports itself with [`export_plugin!`]:
//!
//! ```ignore
//! use plinth_sdk::{Handler, Request, Response};
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn handle(request: Request) -> Response {
//!         let name = request.param("name").unwrap_or("world");
//!         Response::json(200, &serde_json::json!({ "message": format!("Hello, {name}!") }))
//!     }
//! }
//!
//! plinth_sdk::export_plugin!(Hello);
//! ```
//!
//! The host calls `handle` once per request, in a fresh instance: keep no state in
//! statics expecting to see it again. Reach the outside world only through the capability
//! modules re-exported here ([`log`], [`sql`], [`kv`], [`tokens`], [`passwords`]); each
//! must be granted in `plugin.toml`, and a plugin importing one that is not granted is
//! refused at load time.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "plinth_sdk::bindings",
        generate_all,
    });
}

pub mod db;
pub mod time;

/// The error codes the host and plugins share (docs/API.md "Errors").
pub use plinth_codes::ErrorCode;
pub mod validation;

pub use bindings::exports::plinth::plugin::handler::Guest as Handler;
pub use bindings::plinth::plugin::types::{Principal, Request, Response};
pub use bindings::plinth::plugin::{kv, passwords, sql, tokens};

/// Exports `$handler` (a type implementing [`Handler`]) as the plugin's entry point.
#[macro_export]
macro_rules! export_plugin {
    ($handler:ident) => {
        $crate::bindings::__export_plugin_world!($handler with_types_in $crate::bindings);
    };
}

/// Log lines that the host records under this request's id and the plugin's name.
pub mod log {
    use crate::bindings::plinth::plugin::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

impl Request {
    /// The value of the route's `{name}` segment.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body's media type: `Content-Type` without parameters, lower-cased.
    pub fn media_type(&self) -> Option<String> {
        let content_type = self.header("content-type")?;
        let media_type = content_type.split(';').next().unwrap_or_default();
        Some(media_type.trim().to_ascii_lowercase())
    }

    /// Whether the body may be read as JSON: sent as `application/json` (or a `+json`
    /// type), or no body and no content type at all (nothing a browser form could send).
    pub fn is_json(&self) -> bool {
        match self.media_type() {
            Some(media_type) => {
                media_type == "application/json"
                    || (media_type.starts_with("application/") && media_type.ends_with("+json"))
            }
            None => self.body.is_empty(),
        }
    }

    /// Whether the body is an HTML form (`application/x-www-form-urlencoded`).
    pub fn is_form(&self) -> bool {
        self.media_type().as_deref() == Some("application/x-www-form-urlencoded")
    }
}

impl Response {
    /// A response with `body` as JSON and docs/API.md's content type.
    pub fn json(status: u16, body: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => Self {
                status,
                headers: vec![(
                    "content-type".into(),
                    "application/json; charset=utf-8".into(),
                )],
                body: bytes,
            },
            Err(_) => Self::code(ErrorCode::PluginFailed, "The response could not be encoded"),
        }
    }

    /// An error of the vocabulary the host shares ([`ErrorCode`]), with its status.
    pub fn code(code: ErrorCode, detail: &str) -> Self {
        Self::error(code.status(), code.as_str(), detail)
    }

    /// docs/API.md's error shape: `{"detail": ..., "code": ...}`, for a code of the
    /// plugin's own domain (`EMAIL_TAKEN`, ...); the shared ones go through [`Response::code`].
    pub fn error(status: u16, code: &str, detail: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "detail": detail, "code": code }),
        )
    }

    /// A response with no body (e.g. 204).
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// 401 `NOT_AUTHENTICATED` with `WWW-Authenticate: Bearer`.
    pub fn not_authenticated() -> Self {
        Self::code(ErrorCode::NotAuthenticated, "Not authenticated")
            .with_header("www-authenticate", "Bearer")
    }

    /// 403 `FORBIDDEN`.
    pub fn forbidden(detail: &str) -> Self {
        Self::code(ErrorCode::Forbidden, detail)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(detail: &str) -> Self {
        Self::code(ErrorCode::NotFound, detail)
    }

    /// 415 `UNSUPPORTED_MEDIA_TYPE`: the body was not sent as one of `accepted`.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::code(
            ErrorCode::UnsupportedMediaType,
            &format!("The request body must be sent as {}", accepted.join(" or ")),
        )
    }

    /// 503 `UNAVAILABLE`: a backend the request needs cannot be reached.
    pub fn unavailable(backend: &str) -> Self {
        Self::code(
            ErrorCode::Unavailable,
            &format!("A required backend is unavailable: {backend}"),
        )
    }

    /// 500 `PLUGIN_FAILED` (docs/API.md's code for a plugin that failed) for a bug on the
    /// plugin's side; `cause` goes to the log, not to the client.
    pub fn internal(cause: &str) -> Self {
        log::error(cause);
        Self::code(ErrorCode::PluginFailed, "Internal error")
    }

    /// For a request whose route the plugin's `Route` enum (plinth-sdk-build) does not
    /// know: the host routes only what the deployed `plugin.toml` declares, so the
    /// component was built from another manifest. Logged with the route, answered 500.
    pub fn undeclared_route(request: &Request) -> Self {
        Self::internal(&format!(
            "{} {} is declared by the deployed plugin.toml but not by the manifest this \
             component was built with: rebuild it",
            request.method, request.route
        ))
    }
}

/// Capability errors become responses, so handlers can use `?`.
impl From<sql::Error> for Response {
    fn from(err: sql::Error) -> Self {
        match err {
            sql::Error::Unavailable => Self::unavailable("database"),
            sql::Error::TimedOut => Self::code(
                ErrorCode::PluginTimeout,
                "The request took longer than its time limit",
            ),
            other => Self::internal(&format!("sql: {other:?}")),
        }
    }
}

impl From<kv::Error> for Response {
    fn from(err: kv::Error) -> Self {
        match err {
            kv::Error::Unavailable => Self::unavailable("key-value store"),
            other => Self::internal(&format!("kv: {other:?}")),
        }
    }
}

/// Only `unavailable` has one meaning for every endpoint; what an invalid, expired or revoked
/// token means (a 401 of which code?) is the plugin's call, so those are internal errors
/// here: match them before `?` where they can happen.
impl From<tokens::Error> for Response {
    fn from(err: tokens::Error) -> Self {
        match err {
            tokens::Error::Unavailable => Self::unavailable("token store"),
            other => Self::internal(&format!("tokens: {other:?}")),
        }
    }
}

impl From<passwords::Error> for Response {
    fn from(err: passwords::Error) -> Self {
        match err {
            passwords::Error::Unavailable => Self::unavailable("password hashing"),
            other => Self::internal(&format!("passwords: {other:?}")),
        }
    }
}

/// Unwraps a handler's `Result`: both sides are responses.
pub fn respond(result: Result<Response, Response>) -> Response {
    result.unwrap_or_else(|response| response)
}
