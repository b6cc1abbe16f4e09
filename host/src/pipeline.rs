//! A request's way through the host, composed in one place.
//!
//! ```text
//! request id + span → CORS preflight (answered here) → platform endpoints (/health, /ready)
//!   → route match → rate limit → admin API (/admin/…), /openapi.json and /docs, or 404/405
//!   → body limit (413) and deadline (408)
//!   → route auth policy (bearer JWT → principal, 401) → plugin instance
//!   → error mapping → rate-limit headers → CORS headers (a plugin's own are dropped)
//!   → X-Request-Id, X-Content-Type-Options → metrics (with METRICS_ADDR)
//!   → server span ended (with an OTLP endpoint) → access log line
//! ```
//!
//! With traces on, the steps from route match to the guest call are spans under the
//! request's server span (`telemetry::traces`); the access line names its trace id.
//!
//! Why this order:
//! - the request id comes first, so every later step, failures included, is logged under it;
//! - preflights are answered before limiting (browsers send them on their own), and host
//!   endpoints before the route table, so no plugin can shadow them and load-balancer probes
//!   are never limited;
//! - the route is matched before limiting only to pick its budget; unknown paths count too,
//!   so their 404 comes after the limit;
//! - the body is read only for a matched route, so unknown paths cost nothing;
//! - the token is checked after the body limit (an oversized upload is refused without a
//!   token lookup) and before the plugin (it never runs for a stranger);
//! - errors of every step meet in `error_response` (one place) and then receive the same response
//!   headers as successes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::admin;
use crate::authn;
use crate::bindings;
use crate::error::{ApiError, Body, json_response};
use crate::middleware::rate_limit::client_ip;
use crate::openapi;

use crate::plugins::manifest::RateLimitClass;
use crate::plugins::routes::{RouteMatch, RouteTarget};
use crate::plugins::runtime::PluginFailure;
use crate::request_id;
pub use crate::state::AppState;
use crate::telemetry::metrics::{Metrics, ObservedRequest};
use crate::telemetry::traces::{self, trace_span};

/// What the access log line and the metrics say about where a request went.
#[derive(Debug, Default)]
struct Outcome {
    /// The route template (or the host endpoint's path); `None`: no route matched.
    route: Option<Arc<str>>,
    /// The plugin route the request reached (its plugin and metric series).
    target: Option<RouteTarget>,
    request_body_bytes: Option<u64>,
}

/// Serves one request. Never fails: every failure is already a response.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id::from_headers_or_new(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = client_ip(peer.ip(), request.headers(), &state.trusted_proxies);
    let origin = request.headers().get(http::header::ORIGIN).cloned();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    let server_span = traces::server_span(&span, &method, request.headers());
    let _active = state
        .metrics
        .http_enabled()
        .then(|| ActiveRequest::new(&state.metrics));

    let mut outcome = Outcome::default();
    let preflight = state
        .cors
        .as_ref()
        .and_then(|cors| cors.preflight(&method, request.headers()));
    let mut response = match preflight {
        Some(preflight) => preflight,
        None => {
            let work = dispatch(
                &state,
                request,
                client,
                &request_id,
                &server_span,
                &mut outcome,
            );
            let mut response = traces::within(&server_span, work)
                .instrument(server_span.clone())
                .instrument(span.clone())
                .await;
            if let Some(cors) = &state.cors {
                cors.decorate(origin.as_ref(), &mut response);
            }
            response
        }
    };

    set_host_headers(&mut response, &request_id);
    traces::finish(
        &server_span,
        traces::Answered {
            method: &method,
            route: outcome.route.as_deref(),
            plugin: outcome
                .target
                .as_ref()
                .map(|t| (t.plugin.name.as_str(), t.plugin.version.as_str())),
            status: response.status(),
        },
    );
    if state.metrics.http_enabled() {
        observe(&state.metrics, &method, &outcome, &response, started);
    }
    log_access(
        &span,
        &method,
        &path,
        outcome,
        response.status(),
        started,
        client,
    );
    response
}

/// Counts a request in `http_server_active_requests` while it is served.
struct ActiveRequest(prometheus::IntGauge);

impl ActiveRequest {
    fn new(metrics: &Metrics) -> Self {
        metrics.active_requests.inc();
        Self(metrics.active_requests.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records a served request in the HTTP metrics.
fn observe(
    metrics: &Metrics,
    method: &Method,
    outcome: &Outcome,
    response: &Response<Body>,
    started: Instant,
) {
    use hyper::body::Body as _;
    let target = outcome.target.as_ref();
    metrics.observe_request(ObservedRequest {
        // A route's series are for its own method (a HEAD served by a GET route is not).
        series: target.filter(|t| t.method == *method).map(|t| &*t.series),
        method,
        route: outcome.route.as_deref().unwrap_or(""),
        status: response.status(),
        plugin: target.map_or("", |t| t.plugin.name.as_str()),
        duration: started.elapsed(),
        request_body_bytes: outcome.request_body_bytes,
        response_body_bytes: response.body().size_hint().exact(),
    });
}

/// Answers a request on a connection over `MAX_CONNECTIONS` (see `connections.rs`): 503,
/// and the connection closes after it. Logged like any request.
pub fn refuse_connection<B>(
    state: &AppState,
    request: &Request<B>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id::from_headers_or_new(request.headers());
    let client = client_ip(peer.ip(), request.headers(), &state.trusted_proxies);
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = ApiError::TooManyConnections.into_response();
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    set_host_headers(&mut response, &request_id);
    let path = request.uri().path();
    let outcome = Outcome::default();
    log_access(
        &span,
        request.method(),
        path,
        outcome,
        response.status(),
        started,
        client,
    );
    response
}

/// The one `plinth::access` line of a request.
fn log_access(
    span: &tracing::Span,
    method: &Method,
    path: &str,
    outcome: Outcome,
    status: StatusCode,
    started: Instant,
    client: std::net::IpAddr,
) {
    let (plugin, plugin_version) = outcome
        .target
        .as_ref()
        .map(|t| (t.plugin.name.as_str(), t.plugin.version.as_str()))
        .unzip();
    span.in_scope(|| {
        tracing::info!(
            target: "plinth::access",
            method = %method,
            path = %path,
            route = outcome.route.as_deref(),
            plugin,
            plugin_version,
            status = status.as_u16(),
            latency_ms = started.elapsed().as_micros() as f64 / 1000.0,
            client_ip = %ClientIp(client),
            "request"
        );
    });
}

/// A client address as the access line writes it: std's text, but an IPv4 address is
/// assembled in one piece (std formats each octet through `core::fmt`, about a sixth of
/// the line's cost).
struct ClientIp(std::net::IpAddr);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let std::net::IpAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(octet).as_bytes();
            text[len..len + digits.len()].copy_from_slice(digits);
            len += digits.len();
        }
        f.pad(std::str::from_utf8(&text[..len]).map_err(|_| std::fmt::Error)?)
    }
}

/// Headers the host sets on every response, whoever produced it (docs/API.md "Headers on every
/// response"); a plugin's value for them is replaced.
fn set_host_headers(response: &mut Response<Body>, request_id: &str) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(request_id::HEADER, value);
    }
    // Browsers must not second-guess the declared content type (e.g. run a JSON body as a script).
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// The one place an [`ApiError`] becomes a response; server-side causes are logged here.
fn error_response(err: ApiError) -> Response<Body> {
    if let ApiError::Overloaded(_) = err {
        // Capacity, not a fault: the plugin's counters and this line show the pressure.
        tracing::warn!(error = %err, "request refused");
    } else if err.status().is_server_error() {
        tracing::error!(error = %err, "request failed");
    }
    err.into_response()
}

/// Everything after the preflight: host endpoints, then limiting, then the route.
async fn dispatch(
    state: &AppState,
    request: Request<Incoming>,
    client: std::net::IpAddr,
    request_id: &str,
    server_span: &tracing::Span,
    outcome: &mut Outcome,
) -> Response<Body> {
    if let Some(response) = platform_endpoint(state, request.method(), request.uri().path()).await {
        outcome.route = Some(Arc::from(request.uri().path()));
        return response.unwrap_or_else(error_response);
    }

    // One snapshot for the whole request: a reload never swaps the plugin under it.
    let table = state.registry.snapshot();
    let resolved = trace_span!("route match")
        .in_scope(|| table.resolve(request.method(), request.uri().path()));
    let class = resolved
        .as_ref()
        .map_or(RateLimitClass::Default, |m| m.target.rate_limit);
    let decision = state.rate_limiter.check(client, class).await;
    if state.metrics.http_enabled() {
        let result = match &decision {
            Ok(None) => None,
            Ok(Some(d)) if d.allowed => Some("allowed"),
            Ok(Some(_)) => Some("refused"),
            Err(_) => Some("unavailable"),
        };
        if let Some(result) = result {
            state
                .metrics
                .rate_limit_decisions
                .with_label_values(&[class.name(), result])
                .inc();
        }
    }
    let decision = match decision {
        Ok(decision) => decision,
        Err(unavailable) => return error_response(unavailable.into()),
    };
    let mut response = if decision.is_some_and(|d| !d.allowed) {
        // Logged and measured under the route it was refused for (the plugin never ran).
        outcome.route = match &resolved {
            Ok(matched) => Some(matched.target.pattern.clone()),
            Err(_) => host_route_template(state, request.uri().path()).map(Arc::from),
        };
        error_response(ApiError::RateLimited)
    } else if let Some(answer) =
        openapi::serve(state.docs, &table, request.method(), request.uri().path())
    {
        outcome.route = host_route_template(state, request.uri().path()).map(Arc::from);
        answer.unwrap_or_else(error_response)
    } else if request.uri().path().starts_with("/admin/") {
        // Reserved for the host (no manifest may claim it), limited like every route.
        outcome.route = admin::route_template(request.uri().path()).map(Arc::from);
        admin::handle(
            state,
            request.method(),
            request.uri().path(),
            request.headers(),
        )
        .await
        .unwrap_or_else(error_response)
    } else {
        match resolved {
            Ok(matched) => serve(state, request, matched, request_id, server_span, outcome)
                .await
                .unwrap_or_else(error_response),
            Err(err) => error_response(err),
        }
    };
    if let Some(decision) = decision {
        decision.apply(response.headers_mut());
    }
    response
}

/// The template of a path the host serves after limiting (admin API, docs), for logs and
/// metrics.
fn host_route_template(state: &AppState, path: &str) -> Option<&'static str> {
    admin::route_template(path).or_else(|| openapi::route_template(state.docs, path))
}

/// Runs the matched route: body limit, auth policy, the plugin.
async fn serve(
    state: &AppState,
    request: Request<Incoming>,
    matched: RouteMatch<'_>,
    request_id: &str,
    server_span: &tracing::Span,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ApiError> {
    let RouteMatch { target, params } = matched;
    outcome.route = Some(target.pattern.clone());
    outcome.target = Some(target.clone());

    let (parts, body) = request.into_parts();
    let body = read_body(
        body,
        parts.headers.get(http::header::CONTENT_LENGTH),
        state.max_body_bytes,
        state.body_read_timeout,
    )
    .await?;
    outcome.request_body_bytes = Some(body.len() as u64);

    let principal = authn::authenticate(&state.capabilities, target.auth, &parts.headers)
        .instrument(trace_span!("authenticate"))
        .await?;

    let mut guest_request = bindings::Request {
        // HEAD is served by the GET route: the plugin sees GET, hyper sends no body.
        method: target.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            // Credentials stay in the host: plugins receive a verified principal instead.
            .filter(|(name, _)| *name != http::header::AUTHORIZATION)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
        route: target.pattern.to_string(),
        params,
        request_id: request_id.to_owned(),
        principal,
    };
    traces::propagate(server_span, &mut guest_request.headers);

    let guest_response = target
        .plugin
        .component
        .call(&guest_request)
        .await
        .map_err(plugin_error)?;
    Ok(into_http_response(guest_response))
}

/// Endpoints the host serves itself, before any plugin route.
async fn platform_endpoint(
    state: &AppState,
    method: &Method,
    path: &str,
) -> Option<Result<Response<Body>, ApiError>> {
    if !matches!(path, "/health" | "/ready") {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(ApiError::MethodNotAllowed {
            allow: vec!["GET".into(), "HEAD".into()],
        }));
    }
    Some(match path {
        "/health" => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        _ => state.readiness.answer(&state.capabilities).await.map(|kv| {
            json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ready", "database": "ok", "kv": kv}),
            )
        }),
    })
}

/// How much of a too-large body is read and thrown away so the client finishes sending and
/// reads the 413, instead of seeing its upload cut off by a closed connection.
const DISCARD_BUDGET_BYTES: u64 = 8 * 1024 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the whole body, refusing it (413) as soon as it is known to exceed `limit`, and
/// (408) when it has not all arrived within `read_timeout`: a slow client cannot hold a
/// connection and its buffers open indefinitely.
async fn read_body(
    mut body: Incoming,
    content_length: Option<&HeaderValue>,
    limit: usize,
    read_timeout: Duration,
) -> Result<Bytes, ApiError> {
    let deadline = tokio::time::Instant::now() + read_timeout;
    let declared = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > limit as u64
    {
        if declared <= limit as u64 + DISCARD_BUDGET_BYTES {
            discard(body).await;
        }
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut collected = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame.map_err(|_| ApiError::BadRequestBody)?,
            Ok(None) => break,
            Err(_) => return Err(ApiError::RequestTimeout),
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                discard(body).await;
                return Err(ApiError::PayloadTooLarge { limit });
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

/// Reads and drops the rest of `body`, within a byte and time budget.
async fn discard(mut body: Incoming) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DISCARD_BUDGET_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

fn plugin_error(failure: PluginFailure) -> ApiError {
    match failure {
        PluginFailure::Timeout(_) => ApiError::PluginTimeout,
        PluginFailure::Overloaded(cause) => ApiError::Overloaded(cause),
        other => ApiError::PluginFailed(other.to_string()),
    }
}

/// Headers that describe the connection or the framing; hyper sets them, not plugins.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// CORS headers belong to the host's policy (`middleware/cors.rs`): a plugin setting them
/// could widen cross-origin access beyond what the operator configured.
fn is_cors_header(name: &str) -> bool {
    name.get(..15)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("access-control-"))
}

/// The plugin's response, already validated by the runtime.
fn into_http_response(guest: bindings::Response) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(guest.body)));
    *response.status_mut() =
        StatusCode::from_u16(guest.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in guest.headers {
        if is_hop_by_hop(&name) || is_cors_header(&name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::ClientIp;

    #[test]
    fn client_addresses_read_as_std_writes_them() {
        for address in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.12.9",
            "192.168.100.254",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:203.0.113.7",
        ] {
            let ip: IpAddr = address.parse().expect("an address");
            assert_eq!(ClientIp(ip).to_string(), ip.to_string());
            assert_eq!(format!("{:>20}", ClientIp(ip)), format!("{ip:>20}"));
        }
    }
}
