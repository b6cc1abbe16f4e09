//! The one place where failures become HTTP responses.
//!
//! Every non-2xx response the host itself produces goes through [`ApiError::into_response`],
//! so the body always has docs/API.md's shape: `{"detail": ..., "code": ...}`. A 5xx detail is
//! a fixed sentence chosen here: causes (trap messages, SQL, paths) go to the log, never to
//! the client. The codes are `plinth-codes`' [`ErrorCode`], the list plugins answer with too.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use plinth_codes::ErrorCode;
use serde::Serialize;

/// The body type of every response the host sends.
pub type Body = Full<Bytes>;

/// One item of a 422 `detail` list (FastAPI's shape).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ValidationIssue {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Detail {
    Message(String),
    Validation(Vec<ValidationIssue>),
}

/// A failure the host answers itself, before or after a plugin ran.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("no route for the path")]
    NotFound,
    #[error("not authenticated")]
    NotAuthenticated,
    #[error("forbidden")]
    Forbidden,
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: Vec<String> },
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request body could not be read")]
    BadRequestBody,
    /// The client did not send the whole body within `BODY_READ_TIMEOUT_SECONDS`.
    #[error("request body not received in time")]
    RequestTimeout,
    #[error("invalid request")]
    Validation(Vec<ValidationIssue>),
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("plugin failed: {0}")]
    PluginFailed(String),
    #[error("plugin timed out")]
    PluginTimeout,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The endpoint's plugin is at its concurrency limit and its queue is full or too slow.
    #[error("endpoint overloaded: {0}")]
    Overloaded(String),
    /// The host already holds `MAX_CONNECTIONS` open connections.
    #[error("connection limit reached")]
    TooManyConnections,
}

impl ApiError {
    /// The status the code is sent with ([`ErrorCode::status`]).
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The `code` of the body: the vocabulary plugins share through `plinth-sdk`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::NotAuthenticated => ErrorCode::NotAuthenticated,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::BadRequestBody => ErrorCode::BadRequest,
            Self::RequestTimeout => ErrorCode::RequestTimeout,
            Self::Validation(_) => ErrorCode::ValidationError,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::PluginFailed(_) => ErrorCode::PluginFailed,
            Self::PluginTimeout => ErrorCode::PluginTimeout,
            Self::NotReady(_)
            | Self::Unavailable(_)
            | Self::Overloaded(_)
            | Self::TooManyConnections => ErrorCode::Unavailable,
        }
    }

    /// What the client reads. Server-side causes stay in the log.
    fn detail(&self) -> Detail {
        let message = match self {
            Self::NotFound => "Not found".to_owned(),
            Self::NotAuthenticated => "Not authenticated".to_owned(),
            Self::Forbidden => "Superuser privileges are required".to_owned(),
            // Names the backend ("database", "redis"), never its address or error text.
            Self::NotReady(backend) => format!("Not ready: {backend} unavailable"),
            Self::MethodNotAllowed { .. } => "Method not allowed".to_owned(),
            Self::PayloadTooLarge { limit } => {
                format!("Request body is larger than the limit of {limit} bytes")
            }
            Self::BadRequestBody => "The request body could not be read".to_owned(),
            Self::RequestTimeout => "The request body was not received in time".to_owned(),
            Self::Validation(issues) => return Detail::Validation(issues.clone()),
            Self::RateLimited => "Too many requests; retry after the window resets".to_owned(),
            Self::PluginFailed(_) => "The endpoint failed to produce a response".to_owned(),
            Self::PluginTimeout => "The endpoint did not answer in time".to_owned(),
            Self::Unavailable(_) => "A required backend is unavailable".to_owned(),
            Self::Overloaded(_) => "The endpoint is at capacity; retry shortly".to_owned(),
            Self::TooManyConnections => {
                "The server has too many open connections; retry shortly".to_owned()
            }
        };
        Detail::Message(message)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = json_response(
            self.status(),
            &ErrorBody {
                detail: self.detail(),
                code: self.code().as_str(),
            },
        );
        if let Self::MethodNotAllowed { allow } = &self
            && let Ok(value) = HeaderValue::from_str(&allow.join(", "))
        {
            response.headers_mut().insert(header::ALLOW, value);
        }
        if let Self::Overloaded(_) | Self::TooManyConnections = &self {
            // Queues drain, and connections close, in about a second: a retry is likely served.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::NotAuthenticated = &self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    detail: Detail,
    code: &'a str,
}

/// A JSON response with docs/API.md's content type.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    // Serialising our own plain structs cannot fail; an empty object is the safe fallback.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response<Body>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn five_hundreds_never_echo_the_cause() {
        let response =
            ApiError::PluginFailed("wasm trap at /srv/plugins/x.wasm: SELECT secret".into())
                .into_response();
        assert_eq!(response.status(), 500);
        let body = body_json(response).await;
        assert_eq!(body["code"], "PLUGIN_FAILED");
        let text = body.to_string();
        assert!(!text.contains("/srv") && !text.contains("SELECT"), "{text}");
    }

    #[tokio::test]
    async fn method_not_allowed_lists_allow() {
        let response = ApiError::MethodNotAllowed {
            allow: vec!["GET".into(), "HEAD".into()],
        }
        .into_response();
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(body_json(response).await["code"], "METHOD_NOT_ALLOWED");
    }

    #[tokio::test]
    async fn validation_detail_is_a_list() {
        let response = ApiError::Validation(vec![ValidationIssue {
            loc: vec!["body".into(), "email".into()],
            msg: "field required".into(),
            kind: "missing".into(),
        }])
        .into_response();
        let body = body_json(response).await;
        assert_eq!(body["detail"][0]["loc"][1], "email");
        assert_eq!(body["detail"][0]["type"], "missing");
    }
}
