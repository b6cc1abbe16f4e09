//! Test plugin for what a plugin's output costs the host.
//!
//! - `GET /bigbody/{mib}` answers a body of that many MiB, and says so on stdout and stderr
//!   first (the host logs guest output, tagged with plugin and request id).
//! - `GET /bigbody/chatty/{lines}` logs that many short lines through the `log` capability,
//!   and prints each to stdout and stderr too, then answers `{"lines": <lines>}`: a plugin
//!   logging in a loop (the host keeps what fits its per-request budgets).
//! - `GET /bigbody/hold/{mib}/{ms}` fills that many MiB, then busy-waits that long (yielding
//!   at every epoch tick like any guest) and answers `{"held_mib": <mib>}`: a heavy call
//!   whose duration the test chooses.

use plinth_sdk::{Handler, Request, Response};

struct BigBody;

impl Handler for BigBody {
    fn handle(request: Request) -> Response {
        if request.route == "/bigbody/chatty/{lines}" {
            return chatty(&request);
        }
        if request.route == "/bigbody/hold/{mib}/{ms}" {
            return hold(&request);
        }
        big_body(&request)
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the test is that guest output reaches the host's log"
)]
fn big_body(request: &Request) -> Response {
    let mib: usize = request
        .param("mib")
        .and_then(|mib| mib.parse().ok())
        .unwrap_or(0);
    println!("bigbody: answering {mib} MiB");
    eprintln!("bigbody: stderr works too");
    Response {
        status: 200,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: vec![b'x'; mib * 1024 * 1024],
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the test is that guest output is bounded and never stalls the host"
)]
fn chatty(request: &Request) -> Response {
    let lines: u32 = request
        .param("lines")
        .and_then(|lines| lines.parse().ok())
        .unwrap_or(0);
    for i in 0..lines {
        let line = format!("chatty line {i}");
        plinth_sdk::log::info(&line);
        println!("{line}");
        eprintln!("{line}");
    }
    Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!("{{\"lines\":{lines}}}").into_bytes(),
    }
}

fn hold(request: &Request) -> Response {
    let number = |name: &str| -> u64 {
        request
            .param(name)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let mib = number("mib");
    let filled = vec![b'x'; usize::try_from(mib).unwrap_or(0) * 1024 * 1024];
    std::hint::black_box(&filled);
    let until = std::time::Instant::now() + std::time::Duration::from_millis(number("ms"));
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
    Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!("{{\"held_mib\":{mib}}}").into_bytes(),
    }
}

plinth_sdk::export_plugin!(BigBody);
