//! Test plugin: invalid responses. `GET /badstatus` answers an impossible status (999);
//! `GET /badstatus/headers` answers 100,000 headers.

use plinth_sdk::{Handler, Request, Response};

struct BadStatus;

impl Handler for BadStatus {
    fn handle(request: Request) -> Response {
        if request.route == "/badstatus/headers" {
            return Response {
                status: 200,
                headers: (0..100_000)
                    .map(|i| (format!("x-flood-{i}"), "x".into()))
                    .collect(),
                body: Vec::new(),
            };
        }
        Response::empty(999)
    }
}

plinth_sdk::export_plugin!(BadStatus);
