//! CORS from `CORS_ALLOWED_ORIGINS`.
//!
//! Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered
//! here with 204 and never reach a plugin. An allowed origin is reflected exactly with
//! `Vary: Origin`; a disallowed one gets no `Access-Control-Allow-*` header at all. `*` is
//! only ever sent without `Access-Control-Allow-Credentials` (the configuration refuses the
//! combination at start-up).

use anyhow::{bail, ensure};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use crate::error::Body;

#[derive(Debug, Clone)]
enum Origins {
    Any,
    List(Vec<HeaderValue>),
}

#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Origins,
    credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
}

impl CorsPolicy {
    /// `origins`: the comma-separated `CORS_ALLOWED_ORIGINS` (`None`: no cross-origin access).
    pub fn from_config(
        origins: Option<&str>,
        credentials: bool,
        max_age_secs: u64,
    ) -> anyhow::Result<Option<Self>> {
        let Some(origins) = origins else {
            return Ok(None);
        };
        let entries: Vec<&str> = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        ensure!(!entries.is_empty(), "CORS_ALLOWED_ORIGINS lists no origin");
        let origins = if entries == ["*"] {
            ensure!(
                !credentials,
                "CORS_ALLOWED_ORIGINS=* cannot be combined with CORS_ALLOW_CREDENTIALS=true: \
                 list the origins instead"
            );
            Origins::Any
        } else {
            let mut list = Vec::new();
            for origin in entries {
                validate_origin(origin)?;
                list.push(HeaderValue::from_str(origin)?);
            }
            Origins::List(list)
        };
        Ok(Some(Self {
            origins,
            credentials,
            allow_methods: HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            allow_headers: HeaderValue::from_static("authorization, content-type, x-request-id"),
            expose_headers: HeaderValue::from_static(
                "x-request-id, ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after",
            ),
            max_age: HeaderValue::from(max_age_secs),
        }))
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|o| o == origin),
        }
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            Origins::Any => HeaderValue::from_static("*"),
            Origins::List(_) => origin.clone(),
        }
    }

    /// The answer to a preflight, or `None` when `method`/`headers` are not one.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        if self.allows(origin) {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin_value(origin),
            );
            out.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            out.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.allow_headers.clone(),
            );
            out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            if self.credentials {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
        Some(response)
    }

    /// Adds the CORS headers of an actual (non-preflight) response.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut Response<Body>) {
        let out = response.headers_mut();
        out.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            self.expose_headers.clone(),
        );
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// `scheme://host[:port]`, nothing more (an origin has no path, query or trailing slash).
fn validate_origin(origin: &str) -> anyhow::Result<()> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        bail!("CORS_ALLOWED_ORIGINS: `{origin}` is not an origin like https://app.example.com");
    };
    ensure!(
        matches!(scheme, "http" | "https"),
        "CORS_ALLOWED_ORIGINS: `{origin}` must use http or https"
    );
    ensure!(
        !rest.is_empty() && !rest.contains(['/', '?', '#', '*', ' ']),
        "CORS_ALLOWED_ORIGINS: `{origin}` must not have a path, wildcard or trailing slash"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configuration_is_refused() {
        for (origins, credentials) in [
            ("*", true),
            ("app.example.com", false),
            ("https://app.example.com/", false),
            ("ftp://files.example.com", false),
            (" , ", false),
        ] {
            assert!(
                CorsPolicy::from_config(Some(origins), credentials, 600).is_err(),
                "{origins} accepted"
            );
        }
        assert!(matches!(
            CorsPolicy::from_config(None, false, 600),
            Ok(None)
        ));
    }
}
