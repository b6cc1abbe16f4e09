//! The shared error vocabulary of docs/API.md ("Errors"): the `code` of an error body that
//! the host (its own answers) and plugins (through `plinth-sdk`) both send. Written once
//! here, so a client reading `code` sees the same word for the same failure whoever
//! answered. Codes only a plugin's domain knows (`EMAIL_TAKEN`, `INVALID_CREDENTIALS`,
//! ...) belong to that plugin.
//!
//! No dependencies and `no_std`: it compiles into every component that uses the SDK.

#![no_std]

/// A failure with one meaning for every endpoint; [`ErrorCode::as_str`] is the `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the request could not be read (e.g. a body cut short).
    BadRequest,
    /// 401: a bearer token is required and missing, malformed, expired or revoked.
    NotAuthenticated,
    /// 403: authenticated, but not allowed (e.g. not a superuser).
    Forbidden,
    /// 404: nothing at this path, or no such resource.
    NotFound,
    /// 405: the path exists for other methods (listed in `Allow`).
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is larger than the limit.
    PayloadTooLarge,
    /// 415: the body is not in a media type the endpoint accepts.
    UnsupportedMediaType,
    /// 422: the request is well-formed but invalid; `detail` lists every problem.
    ValidationError,
    /// 429: this client's budget for the window is spent.
    RateLimited,
    /// 500: the endpoint failed to produce a valid response.
    PluginFailed,
    /// 504: the endpoint ran past its time limit.
    PluginTimeout,
    /// 503: a backend is unreachable, or the endpoint or host is at capacity.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for documents and checks that list them.
    pub const ALL: [Self; 13] = [
        Self::BadRequest,
        Self::NotAuthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::ValidationError,
        Self::RateLimited,
        Self::PluginFailed,
        Self::PluginTimeout,
        Self::Unavailable,
    ];

    /// The `code` field of the error body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::NotAuthenticated => "NOT_AUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::RateLimited => "RATE_LIMITED",
            Self::PluginFailed => "PLUGIN_FAILED",
            Self::PluginTimeout => "PLUGIN_TIMEOUT",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status this code is sent with.
    pub const fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotAuthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::ValidationError => 422,
            Self::RateLimited => 429,
            Self::PluginFailed => 500,
            Self::PluginTimeout => 504,
            Self::Unavailable => 503,
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_is_listed_once_in_upper_snake_case() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let text = code.as_str();
            assert!(
                text.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{text}"
            );
            assert!((400..600).contains(&code.status()), "{text}");
            for other in &ErrorCode::ALL[i + 1..] {
                assert_ne!(text, other.as_str());
            }
        }
    }
}
