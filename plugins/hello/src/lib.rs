//! The example plugin: copy this crate to start your own.
//!
//! - `GET /hello/{name}` answers `{"message": "Hello, <name>!", "name": "<name>"}`.
//! - `POST /echo` answers the request body back with its content type.

use plinth_sdk::{Handler, Request, Response};

struct Hello;

impl Handler for Hello {
    fn handle(request: Request) -> Response {
        match (request.method.as_str(), request.route.as_str()) {
            ("GET", "/hello/{name}") => greet(&request),
            ("POST", "/echo") => echo(request),
            // The host only routes what plugin.toml declares; this is a manifest/code mismatch.
            _ => Response::error(404, "NOT_FOUND", "Not found"),
        }
    }
}

fn greet(request: &Request) -> Response {
    let name = request.param("name").unwrap_or("world");
    plinth_sdk::log::debug(&format!("greeting {name}"));
    Response::json(
        200,
        &serde_json::json!({ "message": format!("Hello, {name}!"), "name": name }),
    )
}

fn echo(request: Request) -> Response {
    let content_type = request
        .header("content-type")
        .unwrap_or("application/octet-stream")
        .to_owned();
    Response {
        status: 200,
        headers: vec![("content-type".into(), content_type)],
        body: request.body,
    }
}

plinth_sdk::export_plugin!(Hello);
