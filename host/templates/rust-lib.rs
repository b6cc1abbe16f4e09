//! The `{name}` plugin, made by `plinth new`: `GET /{name}/{who}` greets `who`.

use plinth_sdk::{Handler, Request, Response};

// `Route`: one variant per `[[route]]` of plugin.toml, written by build.rs. Add a route
// there, and this `match` does not compile until it handles it.
include!(concat!(env!("OUT_DIR"), "/routes.rs"));

struct Plugin;

impl Handler for Plugin {
    fn handle(request: Request) -> Response {
        match Route::of(&request) {
            Some(Route::{Variant}) => {
                let who = request.param("who").unwrap_or_default();
                plinth_sdk::log::info(&format!("greeting {who}"));
                Response::json(200, &greeting(who))
            }
            None => Response::undeclared_route(&request),
        }
    }
}

plinth_sdk::export_plugin!(Plugin);

/// What `GET /{name}/{who}` answers.
fn greeting(who: &str) -> serde_json::Value {
    serde_json::json!({ "message": format!("Hello, {who}!") })
}

#[cfg(test)]
mod tests {
    #[test]
    fn greets_by_name() {
        assert_eq!(super::greeting("ana")["message"], "Hello, ana!");
    }
}
