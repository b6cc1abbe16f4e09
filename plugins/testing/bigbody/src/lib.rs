//! Test plugin: `GET /bigbody/{mib}` answers a body of that many MiB, and says so on stdout
//! and stderr first (the host logs guest output, tagged with plugin and request id).

use plinth_sdk::{Handler, Request, Response};

struct BigBody;

impl Handler for BigBody {
    #[expect(
        clippy::print_stdout,
        reason = "the test is that guest output reaches the host's log"
    )]
    fn handle(request: Request) -> Response {
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
}

plinth_sdk::export_plugin!(BigBody);
