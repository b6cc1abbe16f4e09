//! A standard `wasi:http/incoming-handler` component, written against the `wasip2`
//! crate's bindings alone (no Plinth SDK, no Plinth WIT): what Spin, `wasmtime serve` and
//! most toolchains produce. The host serves it under its `plugin.toml`.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Component);

struct Component;

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        match path {
            "/std/whoami" | "/std/private" => {
                let headers = request.headers().entries();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                };
                let body = serde_json::json!({
                    "method": format!("{:?}", request.method()),
                    "path_with_query": path_with_query,
                    "authority": request.authority(),
                    "subject": header("plinth-principal-subject"),
                    "token_id": header("plinth-principal-token-id"),
                    "expires_at": header("plinth-principal-expires-at"),
                    "has_authorization": header("authorization").is_some(),
                });
                respond(
                    out,
                    200,
                    "application/json",
                    &[body.to_string().into_bytes()],
                );
            }
            "/std/echo" => {
                let content_type = request
                    .headers()
                    .get("content-type")
                    .first()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| "application/octet-stream".into());
                let mut body = Vec::new();
                if let Ok(incoming) = request.consume()
                    && let Ok(mut stream) = incoming.stream()
                {
                    let _ = stream.read_to_end(&mut body);
                }
                respond(out, 200, &content_type, &[body]);
            }
            "/std/big" => {
                let kib: usize = query
                    .strip_prefix("kib=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(64);
                let chunk = vec![b'x'; 64 * 1024];
                let chunks: Vec<Vec<u8>> = (0..kib.div_ceil(64))
                    .map(|i| chunk[..(kib - i * 64).min(64) * 1024].to_vec())
                    .collect();
                respond(out, 200, "application/octet-stream", &chunks);
            }
            "/std/fetch" => {
                let url = query.strip_prefix("url=").unwrap_or_default();
                let body = match fetch(url) {
                    Ok((status, text)) => serde_json::json!({ "status": status, "body": text }),
                    Err(error) => serde_json::json!({ "error": error }),
                };
                respond(
                    out,
                    200,
                    "application/json",
                    &[body.to_string().into_bytes()],
                );
            }
            // "/std/silent": drops the outparam unset.
            _ => {}
        }
    }
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, chunks: &[Vec<u8>]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[content_type.as_bytes().to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = body.write() {
        for chunk in chunks {
            if stream.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}

/// `GET url` (http://host[:port]/path only), through the host's outgoing handler.
fn fetch(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(path)))
        .map_err(|()| format!("invalid URL {url}"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let mut text = String::new();
    if let Ok(body) = response.consume()
        && let Ok(mut stream) = body.stream()
    {
        let _ = stream.read_to_string(&mut text);
    }
    Ok((status, text))
}
