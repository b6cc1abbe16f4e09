//! Test plugin: loops forever on `GET /spin`; `GET /spin/sleep/{ms}` busy-waits that long
//! and then answers (a slow but well-behaved request).

use plinth_sdk::{Handler, Request, Response};

struct Spin;

impl Handler for Spin {
    fn handle(request: Request) -> Response {
        if let Some(ms) = request.param("ms").and_then(|ms| ms.parse::<u64>().ok()) {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            return Response::json(200, &serde_json::json!({ "slept_ms": ms }));
        }
        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

plinth_sdk::export_plugin!(Spin);
