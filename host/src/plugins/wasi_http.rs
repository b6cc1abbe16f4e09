//! Standard `wasi:http/incoming-handler` components: what Spin, `wasmtime serve` and most
//! language toolchains emit, served like Plinth-world plugins.
//!
//! A component that exports `wasi:http/incoming-handler@0.2.x` (instead of
//! `plinth:plugin/handler`) is deployed with the same `plugin.toml`: its routes, auth
//! policy, limits and grants. The host routes, rate limits, checks the bearer token,
//! applies CORS and logs exactly as for any plugin; only the call differs:
//!
//! - the request is handed over as a `wasi:http` incoming request: method, `path?query`,
//!   the headers (without `Authorization`, as always), the body; the verified principal
//!   travels in the [`PRINCIPAL_HEADERS`], which the host sets and strips from what
//!   clients send, so a component can trust them;
//! - the component answers through its `response-outparam`; the body is read while the
//!   call runs, within `limits.max_response_mb`, and the response is checked like any
//!   plugin's;
//! - its outgoing requests (`wasi:http/outgoing-handler`) are refused unless the manifest
//!   grants the authority (`outbound_http`, see `capabilities/outbound_http.rs`);
//! - a fresh instance per request, with the plugin's memory limit and deadline; instance
//!   reuse is not offered to these components.
//!
//! WASI itself is linked as for every plugin: no files, environment, sockets or name
//! lookups; clocks and randomness only. Plinth's own capabilities (`kv`, `sql`, ...) can be
//! imported too, when granted.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use wasmtime::Store;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::runtime::InstanceState;
use crate::bindings::{Request, Response};

/// The headers that carry the verified principal (on routes with `auth = "required"` or
/// `"optional"` and a valid token): the token's `sub`, `jti` and `exp`. Any header a client
/// sends with one of these names is removed first.
pub const PRINCIPAL_HEADERS: [&str; 3] = [
    "plinth-principal-subject",
    "plinth-principal-token-id",
    "plinth-principal-expires-at",
];

/// The export that makes a component a standard `wasi:http` one.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// Whether `component` exports the standard `wasi:http/incoming-handler`.
pub fn exports_incoming_handler(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

/// Adds `wasi:http/types` and `wasi:http/outgoing-handler` (WASI's other interfaces are
/// linked for every plugin).
pub fn link(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    Ok(())
}

/// Why a `wasi:http` call produced no usable response.
#[derive(Debug)]
pub enum Failure {
    /// The guest trapped (or ran out of time or memory) during the call.
    Trap(wasmtime::Error),
    /// It returned without a valid response.
    Invalid(String),
}

/// Calls `proxy`'s `handle` with `request` and reads its answer (the body within
/// `max_body_bytes`) while the call runs.
pub async fn handle(
    proxy: &Proxy,
    store: &mut Store<InstanceState>,
    request: &Request,
    max_body_bytes: usize,
) -> Result<Response, Failure> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (incoming, outparam) = {
        let mut http = store.data_mut().http();
        let incoming = http
            .new_incoming_request(Scheme::Http, incoming_request(request))
            .map_err(Failure::Trap)?;
        let outparam = http.new_response_outparam(sender).map_err(Failure::Trap)?;
        (incoming, outparam)
    };
    let call = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, incoming, outparam);
    // The body is streamed by the guest during the call: read it concurrently, or a
    // guest writing more than the stream buffers would wait forever.
    let receive = async {
        match receiver.await {
            Ok(Ok(response)) => Some(read_response(response, max_body_bytes).await),
            Ok(Err(code)) => Some(Err(format!(
                "the component answered with the error {code:?}"
            ))),
            // The outparam was dropped unset: the call's result says why.
            Err(_) => None,
        }
    };
    let (called, received) = tokio::join!(call, receive);
    called.map_err(Failure::Trap)?;
    match received {
        Some(Ok(response)) => Ok(response),
        Some(Err(message)) => Err(Failure::Invalid(message)),
        None => Err(Failure::Invalid(
            "the component returned without setting a response".into(),
        )),
    }
}

/// The request as the component reads it: `http://<host><path>?<query>`, the headers the
/// host passes to every plugin plus the principal headers, the body.
fn incoming_request(request: &Request) -> http::Request<Full<Bytes>> {
    let host = request
        .headers
        .iter()
        .find(|(name, _)| name == "host")
        .map_or("localhost", |(_, value)| value.as_str());
    let path_and_query = if request.query.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.query)
    };
    // A Host header that does not make a URI (HTTP/2 sends none) falls back to localhost.
    let uri = format!("http://{host}{path_and_query}")
        .parse::<http::Uri>()
        .or_else(|_| format!("http://localhost{path_and_query}").parse())
        .unwrap_or_default();
    let mut built = http::Request::new(Full::new(Bytes::copy_from_slice(&request.body)));
    *built.method_mut() = request.method.parse().unwrap_or_default();
    *built.uri_mut() = uri;
    let headers = built.headers_mut();
    for (name, value) in &request.headers {
        if PRINCIPAL_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(principal) = &request.principal {
        let values = [
            principal.subject.clone(),
            principal.token_id.clone(),
            principal.expires_at.to_string(),
        ];
        for (name, value) in PRINCIPAL_HEADERS.iter().zip(values) {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(*name, value);
            }
        }
    }
    built
}

async fn read_response(
    response: http::Response<HyperOutgoingBody>,
    max_body_bytes: usize,
) -> Result<Response, String> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body_bytes)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                format!("the body exceeds `limits.max_response_mb` ({max_body_bytes} bytes)")
            } else {
                format!("the body could not be read: {err}")
            }
        })?
        .to_bytes();
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = value
            .to_str()
            .map_err(|_| format!("header `{name}` is not visible ASCII"))?;
        headers.push((name.as_str().to_owned(), value.to_owned()));
    }
    Ok(Response {
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::Principal;

    fn request(headers: &[(&str, &str)], principal: Option<Principal>) -> Request {
        Request {
            method: "POST".into(),
            path: "/weather/today".into(),
            query: "units=metric".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: b"{}".to_vec(),
            route: "/weather/{day}".into(),
            params: vec![("day".into(), "today".into())],
            request_id: "r1".into(),
            principal,
        }
    }

    #[test]
    fn the_principal_headers_are_the_hosts_alone() {
        let forged = [
            ("host", "api.example.com"),
            ("plinth-principal-subject", "1"),
            ("x-other", "kept"),
        ];
        let anonymous = incoming_request(&request(&forged, None));
        assert_eq!(
            anonymous.uri().to_string(),
            "http://api.example.com/weather/today?units=metric"
        );
        assert_eq!(anonymous.method(), "POST");
        assert_eq!(anonymous.headers()["x-other"], "kept");
        for name in PRINCIPAL_HEADERS {
            assert!(anonymous.headers().get(name).is_none(), "{name}");
        }

        let signed_in = incoming_request(&request(
            &forged,
            Some(Principal {
                subject: "42".into(),
                token_id: "t-1".into(),
                expires_at: 1_800_000_000,
            }),
        ));
        let headers = signed_in.headers();
        assert_eq!(headers["plinth-principal-subject"], "42");
        assert_eq!(
            headers.get_all("plinth-principal-subject").iter().count(),
            1
        );
        assert_eq!(headers["plinth-principal-token-id"], "t-1");
        assert_eq!(headers["plinth-principal-expires-at"], "1800000000");
    }

    #[test]
    fn a_host_header_that_is_not_an_authority_falls_back() {
        let request = request(&[("host", "bad host/\\")], None);
        assert_eq!(
            incoming_request(&request).uri().to_string(),
            "http://localhost/weather/today?units=metric"
        );
    }
}
