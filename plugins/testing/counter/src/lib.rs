//! Test plugin: keeps state in its instance's memory, which only reuse can reveal.
//!
//! - `GET /counter` counts the requests this instance has served (itself included),
//!   prints `counter: <n>` to stdout and answers `{"served": <n>}`: 1 every time under the
//!   default fresh instance per request.
//! - `GET /counter/trap` counts, then panics (a trap: the instance must not serve again).

use std::sync::atomic::{AtomicU64, Ordering};

use plinth_sdk::{Handler, Request, Response};

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Handler for Counter {
    #[expect(
        clippy::print_stdout,
        reason = "the test is that output of a reused instance is tagged per request"
    )]
    fn handle(request: Request) -> Response {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        if request.route.ends_with("/trap") {
            panic!("this instance traps after {served} requests");
        }
        println!("counter: {served}");
        Response::json(200, &serde_json::json!({ "served": served }))
    }
}

plinth_sdk::export_plugin!(Counter);
