//! Test plugin: `GET /versioned` answers which build it is (`v1`, or `v2` when built with
//! the `v2` feature), so a test can tell which version served each request of a reload.

use plinth_sdk::{Handler, Request, Response};

const VERSION: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

struct Versioned;

impl Handler for Versioned {
    fn handle(_request: Request) -> Response {
        Response::json(200, &serde_json::json!({ "version": VERSION }))
    }
}

plinth_sdk::export_plugin!(Versioned);
