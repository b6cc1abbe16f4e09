//! Test plugin: panics (a wasm trap) on `GET /trap`, answers normally on `GET /trap/ok`.

use plinth_sdk::{Handler, Request, Response};

struct Trap;

impl Handler for Trap {
    fn handle(request: Request) -> Response {
        if request.route == "/trap/ok" {
            return Response::json(200, &serde_json::json!({ "ok": true }));
        }
        panic!("this plugin traps on purpose");
    }
}

plinth_sdk::export_plugin!(Trap);
