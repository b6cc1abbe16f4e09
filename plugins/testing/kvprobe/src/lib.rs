//! Test plugin: `PUT /<prefix>/{key}` stores the body under `key` in the plugin's key-value
//! namespace; `GET` reads it back (404 when absent). Deployed under two names, it shows
//! that one plugin cannot read another's keys.

use plinth_sdk::{Handler, Request, Response, kv};

struct KvProbe;

impl Handler for KvProbe {
    fn handle(request: Request) -> Response {
        let Some(key) = request.param("key") else {
            return Response::not_found("no key");
        };
        match request.method.as_str() {
            "PUT" => match kv::set(key, &request.body, None) {
                Ok(()) => Response::empty(204),
                Err(_) => Response::unavailable("kv"),
            },
            _ => match kv::get(key) {
                Ok(Some(value)) => Response {
                    status: 200,
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body: value,
                },
                Ok(None) => Response::not_found("no such key"),
                Err(_) => Response::unavailable("kv"),
            },
        }
    }
}

plinth_sdk::export_plugin!(KvProbe);
