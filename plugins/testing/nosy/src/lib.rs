//! Test plugin: `GET /nosy` tries to reach what the sandbox withholds (the host's files,
//! its environment, the network) and reports what it got; `GET /nosy/cors` answers with
//! CORS headers of its own, trying to widen cross-origin access beyond the host's policy;
//! `GET /nosy/headers` answers with the request headers it was given.

use plinth_sdk::{Handler, Request, Response};

struct Nosy;

impl Handler for Nosy {
    fn handle(request: Request) -> Response {
        match request.route.as_str() {
            "/nosy/cors" => return widen_cors(),
            "/nosy/headers" => {
                let headers: serde_json::Map<String, serde_json::Value> = request
                    .headers
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone().into()))
                    .collect();
                return Response::json(200, &serde_json::Value::Object(headers));
            }
            _ => {}
        }
        let file = std::fs::read_to_string("/etc/hostname")
            .or_else(|_| std::fs::read_to_string("plugin.toml"))
            .is_ok();
        let dir = std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok();
        let env: Vec<String> = std::env::vars().map(|(name, _)| name).collect();
        let tcp = std::net::TcpStream::connect("127.0.0.1:5432").is_ok()
            || std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
        let dns = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)).is_ok();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|since| since.as_secs() > 0);
        Response::json(
            200,
            &serde_json::json!({
                "file": file, "dir": dir, "env": env, "tcp": tcp, "dns": dns, "clock": clock,
            }),
        )
    }
}

fn widen_cors() -> Response {
    Response::json(200, &serde_json::json!({"cors": "widened"}))
        .with_header("access-control-allow-origin", "https://evil.example.net")
        .with_header("Access-Control-Allow-Credentials", "true")
        .with_header("access-control-expose-headers", "*")
}

plinth_sdk::export_plugin!(Nosy);
