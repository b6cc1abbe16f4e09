//! The example plugin: copy this crate to start your own.
//!
//! - `GET /hello/{name}` answers `{"message": "Hello, <name>!", "name": "<name>"}`.
//! - `POST /echo` answers the request body back with its content type.

use plinth_sdk::{Handler, Request, Response};

// `Route`: one variant per `[[route]]` of plugin.toml, written by build.rs. A route added
// there without a handler below does not compile.
include!(concat!(env!("OUT_DIR"), "/routes.rs"));

struct Hello;

impl Handler for Hello {
    fn handle(request: Request) -> Response {
        match Route::of(&request) {
            Some(Route::Hello) => greet(&request),
            Some(Route::Echo) => echo(request),
            None => Response::undeclared_route(&request),
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
