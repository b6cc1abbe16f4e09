//! Test plugin: `PUT /<prefix>/{key}` stores the body under `key` in the plugin's key-value
//! namespace (expiring after `?ttl_ms=` when given); `GET` reads it back (404 when absent).
//! Deployed under two names, it shows that one plugin cannot read another's keys.
//! `POST /<prefix>/{key}/count?times=N&ttl_ms=T` increments the counters `<key>0` to
//! `<key>N-1` (created with that TTL), stops at the first refusal, and answers
//! `{"counted": n}`: how many the store took.

use plinth_sdk::validation::Fields;
use plinth_sdk::{Handler, Request, Response, kv};

struct KvProbe;

impl Handler for KvProbe {
    fn handle(request: Request) -> Response {
        let Some(key) = request.param("key") else {
            return Response::not_found("no key");
        };
        let mut query = Fields::from_query(&request.query);
        let ttl_ms = query
            .optional_int("ttl_ms", 1, i64::MAX)
            .and_then(|ms| u64::try_from(ms).ok());
        let times = query.optional_int("times", 0, 10_000_000).unwrap_or(1);
        match (request.method.as_str(), request.route.ends_with("/count")) {
            ("POST", true) => count(key, times, ttl_ms),
            ("PUT", _) => match kv::set(key, &request.body, ttl_ms) {
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

fn count(key: &str, times: i64, ttl_ms: Option<u64>) -> Response {
    let counted = (0..times)
        .take_while(|i| kv::increment(&format!("{key}{i}"), 1, ttl_ms).is_ok())
        .count();
    Response::json(
        200,
        &std::collections::BTreeMap::from([("counted", counted)]),
    )
}

plinth_sdk::export_plugin!(KvProbe);
