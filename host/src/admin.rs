//! The admin API (docs/API.md "Platform endpoints"), for superusers:
//! - `GET /admin/plugins` — every plugin: name, version, content hash, routes, loaded_at,
//!   state, last error, counters since it was loaded (requests, traps, timeouts,
//!   invalid responses, rejections, heavy calls), whether it is on the heavy lanes and
//!   whether its calls hand their worker's queue over first;
//! - `POST /admin/plugins/{name}/reload` — rebuild one plugin from its directory and swap
//!   it in; 404 for an unknown plugin, 422 with the reason when the new build is refused
//!   (the old version keeps serving). A success is announced to the fleet (`fleet.rs`);
//! - `GET /admin/fleet` — every host sharing the Redis: what it serves, its refusals, and
//!   how long ago it reported.

use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::authn::require_superuser;
use crate::error::{ApiError, Body, ValidationIssue, json_response};
use crate::plugins::{LoadedPlugin, ReloadError};
use crate::state::AppState;

pub async fn handle(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let registry = &state.registry;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let allow = |methods: &[&str]| ApiError::MethodNotAllowed {
        allow: methods.iter().map(|m| (*m).to_owned()).collect(),
    };
    match segments.as_slice() {
        ["admin", "plugins"] => {
            if method != Method::GET && method != Method::HEAD {
                return Err(allow(&["GET", "HEAD"]));
            }
            require_superuser(&state.capabilities, &state.accounts_data_set, headers).await?;
            let table = registry.snapshot();
            let entries: Vec<Value> = table
                .plugins()
                .iter()
                .map(|p| describe(p, registry.last_error(&p.name)))
                .collect();
            Ok(json_response(StatusCode::OK, &entries))
        }
        ["admin", "plugins", name, "reload"] => {
            if method != Method::POST {
                return Err(allow(&["POST"]));
            }
            require_superuser(&state.capabilities, &state.accounts_data_set, headers).await?;
            match registry.reload(name).await {
                Ok(plugin) => {
                    state.fleet.announce_reload(&plugin.name).await;
                    Ok(json_response(StatusCode::OK, &describe(&plugin, None)))
                }
                Err(ReloadError::Unknown(_)) => Err(ApiError::NotFound),
                Err(ReloadError::Rejected(reason)) => {
                    Err(ApiError::Validation(vec![ValidationIssue {
                        loc: vec!["plugin".into(), (*name).to_owned()],
                        msg: reason,
                        kind: "reload_rejected".into(),
                    }]))
                }
            }
        }
        ["admin", "fleet"] => {
            if method != Method::GET && method != Method::HEAD {
                return Err(allow(&["GET", "HEAD"]));
            }
            require_superuser(&state.capabilities, &state.accounts_data_set, headers).await?;
            let view = state
                .fleet
                .view(registry)
                .await
                .map_err(|_| ApiError::Unavailable("the fleet's reports in Redis".into()))?;
            Ok(json_response(StatusCode::OK, &view))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The template of an admin path, for metrics (`None`: not an admin endpoint).
pub fn route_template(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["admin", "plugins"] => Some("/admin/plugins"),
        ["admin", "plugins", _, "reload"] => Some("/admin/plugins/{name}/reload"),
        ["admin", "fleet"] => Some("/admin/fleet"),
        _ => None,
    }
}

fn describe(plugin: &LoadedPlugin, last_error: Option<String>) -> Value {
    let routes: Vec<Value> = plugin
        .manifest
        .routes
        .iter()
        .map(|r| json!({"method": r.method, "path": r.path}))
        .collect();
    let loaded_at = chrono::DateTime::<chrono::Utc>::from(plugin.loaded_at)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "name": plugin.name,
        "version": plugin.version,
        "content_hash": plugin.content_hash,
        "routes": routes,
        "loaded_at": loaded_at,
        "state": "active",
        "last_error": last_error,
        "capabilities": plugin.manifest.capabilities,
        "data_set": plugin.component.capabilities.data_set(),
        "limits": plugin.manifest.limits,
        "counters": plugin.component.counters.snapshot(),
        "heavy": plugin.component.heavy_status(),
    })
}
