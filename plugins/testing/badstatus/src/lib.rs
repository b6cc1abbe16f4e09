//! Test plugin: answers an impossible status (999) on `GET /badstatus`.

use plinth_sdk::{Handler, Request, Response};

struct BadStatus;

impl Handler for BadStatus {
    fn handle(_request: Request) -> Response {
        Response::empty(999)
    }
}

plinth_sdk::export_plugin!(BadStatus);
