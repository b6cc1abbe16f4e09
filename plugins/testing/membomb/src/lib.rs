//! Test plugin: allocates without bound on `GET /membomb`.

use plinth_sdk::{Handler, Request, Response};

struct MemBomb;

impl Handler for MemBomb {
    fn handle(_request: Request) -> Response {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1024 * 1024]);
            std::hint::black_box(&hoard);
        }
    }
}

plinth_sdk::export_plugin!(MemBomb);
