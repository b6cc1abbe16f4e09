//! The contract as a document: `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger
//! UI over it).
//!
//! The document is assembled from what is deployed, never written by hand twice:
//! - every route of the current route table, with what its manifest says about it
//!   (`plugins::description`: summary, parameters, request and response schemas), plus
//!   what the host itself adds in front of any plugin: the bearer security scheme and its
//!   401 on `auth = "required"`/`"optional"` routes, 413/408 where a body is taken, and
//!   429, 500, 503 and 504 everywhere, all in the shared error shape (`error.rs`);
//! - the host's own endpoints (`/health`, `/ready`, `/admin/...`, and these two).
//!
//! It is built once per route table (a reload builds a new table, so the next request sees
//! the new routes) and cached with it. Both endpoints are rate limited like every route and
//! can be switched off (`OPENAPI_ENABLED`, `DOCS_ENABLED`). `/docs` loads only files the host
//! serves (`host/assets/`): no CDN, no call to Swagger's validator.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Body};
use crate::plugins::LoadedPlugin;
use crate::plugins::description::{SCHEMA_REF_PREFIX, path_parameters};
use crate::plugins::manifest::{AuthPolicy, RouteSpec};
use crate::plugins::routes::RouteTable;

/// Which of the two endpoints are served (`OPENAPI_ENABLED`, `DOCS_ENABLED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocsConfig {
    pub openapi: bool,
    pub ui: bool,
}

const DOCUMENT_PATH: &str = "/openapi.json";
const UI_PATH: &str = "/docs";

/// The files under `/docs/`: name, content type, bytes.
const UI_FILES: [(&str, &str, &[u8]); 5] = [
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/swagger-ui/swagger-ui.css"),
    ),
    (
        "init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/docs/init.js"),
    ),
    (
        "favicon-32x32.png",
        "image/png",
        include_bytes!("../assets/swagger-ui/favicon-32x32.png"),
    ),
    (
        "LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/swagger-ui/LICENSE"),
    ),
];
const UI_PAGE: &[u8] = include_bytes!("../assets/docs/index.html");

/// The page may load only what this host serves; Swagger UI styles elements inline.
const UI_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The template of a docs path, for logs and metrics (`None`: not one of ours). Only
/// paths that are served are claimed: a switched-off endpoint is an unknown path (404).
pub fn route_template(config: DocsConfig, path: &str) -> Option<&'static str> {
    if config.openapi && path == DOCUMENT_PATH {
        return Some(DOCUMENT_PATH);
    }
    if config.ui {
        if path == UI_PATH {
            return Some(UI_PATH);
        }
        if let Some(file) = path.strip_prefix("/docs/") {
            return UI_FILES
                .iter()
                .any(|(name, ..)| *name == file)
                .then_some("/docs/{file}");
        }
    }
    None
}

/// Answers `/openapi.json`, `/docs` and its files; `None` for any other path.
pub fn serve(
    config: DocsConfig,
    table: &RouteTable,
    method: &Method,
    path: &str,
) -> Option<Result<Response<Body>, ApiError>> {
    route_template(config, path)?;
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(ApiError::MethodNotAllowed {
            allow: vec!["GET".into(), "HEAD".into()],
        }));
    }
    let response = if path == DOCUMENT_PATH {
        let document = table.openapi_document(|| render(table, config));
        let mut response = bytes_response(document.clone(), "application/json; charset=utf-8");
        // What is deployed can change at any reload.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else if path == UI_PATH {
        let mut response = bytes_response(Bytes::from_static(UI_PAGE), "text/html; charset=utf-8");
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(UI_CONTENT_SECURITY_POLICY),
        );
        response
    } else {
        let file = path.trim_start_matches("/docs/");
        let (_, content_type, bytes) = UI_FILES.iter().find(|(name, ..)| *name == file)?;
        let mut response = bytes_response(Bytes::from_static(bytes), content_type);
        // Compiled into this binary: they change only with the host's version.
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        response
    };
    Some(Ok(response))
}

fn bytes_response(bytes: Bytes, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn render(table: &RouteTable, config: DocsConfig) -> Bytes {
    // A `Value` of our own making always serialises.
    Bytes::from(serde_json::to_vec(&document(table, config)).unwrap_or_default())
}

/// The OpenAPI 3.1 document of `table` and the host's own endpoints.
pub fn document(table: &RouteTable, config: DocsConfig) -> Value {
    let mut schemas = host_schemas();
    let names = ComponentNames::assign(table.plugins(), &schemas);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags = Vec::new();

    for plugin in table.plugins() {
        tags.push(json!({
            "name": plugin.name,
            "description": format!("Served by plugin `{}` {}", plugin.name, plugin.version),
        }));
        for (name, schema) in &plugin.manifest.schema_definitions.0 {
            let mut schema = schema.clone();
            names.rewrite_references(&plugin.name, &mut schema);
            schemas.insert(names.name(&plugin.name, name).to_owned(), schema);
        }
        for route in &plugin.manifest.routes {
            let mut operation = plugin_operation(plugin, route);
            names.rewrite_references(&plugin.name, &mut operation);
            paths
                .entry(route.path.clone())
                .or_default()
                .insert(route.method.to_ascii_lowercase(), operation);
        }
    }
    for (path, item) in host_paths(config) {
        paths.insert(path.to_owned(), item);
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Plinth",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of this Plinth host: the routes of the plugins it \
                serves now, and the host's own endpoints. Every error has the body \
                `{\"detail\", \"code\"}`. A `GET` route also answers `HEAD`. Responses carry \
                `X-Request-Id`, and `RateLimit-Limit`, `RateLimit-Remaining` and \
                `RateLimit-Reset` wherever a rate limit applies.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": host_responses(),
            "headers": host_headers(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from `POST /api/v1/auth/login`.",
                },
            },
        },
    })
}

/// One plugin route as an OpenAPI operation. Schema references still use the plugin's own
/// names; [`ComponentNames::rewrite_references`] maps them.
fn plugin_operation(plugin: &LoadedPlugin, route: &RouteSpec) -> Value {
    let mut operation = Map::new();
    let summary = route
        .summary
        .clone()
        .unwrap_or_else(|| format!("{} {}", route.method, route.path));
    operation.insert("summary".into(), summary.into());
    if let Some(description) = &route.description {
        operation.insert("description".into(), description.clone().into());
    }
    operation.insert(
        "operationId".into(),
        route.operation_id().into_owned().into(),
    );
    let tags = if route.tags.is_empty() {
        vec![plugin.name.clone()]
    } else {
        route.tags.clone()
    };
    operation.insert("tags".into(), tags.into());

    let mut parameters = Vec::new();
    for name in path_parameters(&route.path) {
        let spec = route.params.get(name);
        parameters.push(parameter(
            name,
            "path",
            true,
            spec.and_then(|s| s.description.as_deref()),
            spec.and_then(|s| s.schema.as_ref()).map(|s| s.to_json()),
        ));
    }
    for (name, spec) in &route.query {
        parameters.push(parameter(
            name,
            "query",
            spec.required,
            spec.description.as_deref(),
            spec.schema.as_ref().map(|s| s.to_json()),
        ));
    }
    if !parameters.is_empty() {
        operation.insert("parameters".into(), parameters.into());
    }

    if let Some(request) = &route.request {
        let content: Map<String, Value> = request
            .content
            .iter()
            .map(|(media_type, schema)| (media_type.clone(), json!({"schema": schema.to_json()})))
            .collect();
        operation.insert(
            "requestBody".into(),
            json!({"required": !route.request_optional, "content": content}),
        );
    }

    let mut responses = Map::new();
    for (status, response) in &route.responses {
        let code: u16 = status.parse().unwrap_or(500);
        let schema = match response.schema() {
            Some(schema) => Some(schema.to_json()),
            None if code == 422 => Some(component_schema("ValidationError")),
            None if code >= 400 => Some(component_schema("Error")),
            None => None,
        };
        let mut answer = json!({"description": response.description()});
        if let Some(schema) = schema {
            answer["content"] = json!({"application/json": {"schema": schema}});
        }
        if let Some(links) = response.links().filter(|links| !links.is_empty()) {
            answer["links"] = links
                .iter()
                .map(|(name, link)| (name.clone(), link.to_json()))
                .collect::<Map<String, Value>>()
                .into();
        }
        responses.insert(status.clone(), answer);
    }
    if route.responses.is_empty() {
        responses.insert(
            "default".into(),
            json!({"description": "Any answer: the plugin does not describe its responses."}),
        );
    }
    // What the host answers before or instead of the plugin, unless the plugin says more.
    let takes_body = route.request.is_some();
    let host_answers = [
        ("401", route.auth != AuthPolicy::None, "NotAuthenticated"),
        ("408", takes_body, "RequestTimeout"),
        ("413", takes_body, "PayloadTooLarge"),
        ("429", true, "RateLimited"),
        ("500", true, "PluginFailed"),
        ("503", true, "Unavailable"),
        ("504", true, "PluginTimeout"),
    ];
    for (status, applies, name) in host_answers {
        if applies && !responses.contains_key(status) {
            responses.insert(status.into(), component_response(name));
        }
    }
    operation.insert("responses".into(), sort_responses(responses));

    match route.auth {
        AuthPolicy::None => {}
        AuthPolicy::Required => {
            operation.insert("security".into(), json!([{"bearerAuth": []}]));
        }
        AuthPolicy::Optional => {
            operation.insert("security".into(), json!([{}, {"bearerAuth": []}]));
        }
    }
    Value::Object(operation)
}

fn parameter(
    name: &str,
    location: &str,
    required: bool,
    description: Option<&str>,
    schema: Option<Value>,
) -> Value {
    let mut parameter = json!({
        "name": name,
        "in": location,
        "required": required,
        "schema": schema.unwrap_or_else(|| json!({"type": "string"})),
    });
    if let Some(description) = description {
        parameter["description"] = description.into();
    }
    parameter
}

/// Responses in status order, `default` last, whichever order serde_json's map keeps (its
/// `preserve_order` feature, if anything in the build turns it on, keeps insertion order).
fn sort_responses(responses: Map<String, Value>) -> Value {
    let mut sorted: Vec<(String, Value)> = responses.into_iter().collect();
    sorted.sort_by_key(|(status, _)| (status == "default", status.clone()));
    Value::Object(sorted.into_iter().collect())
}

fn component_schema(name: &str) -> Value {
    json!({"$ref": format!("{SCHEMA_REF_PREFIX}{name}")})
}

fn component_response(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// Which name each plugin's schemas get in the document. A schema keeps its own name when
/// every plugin that defines that name defines it identically and the host has none by
/// that name (the `auth` and `users` plugins share their user schemas this way); otherwise
/// each plugin's is qualified as `<plugin>.<name>`. A plugin can never change what another
/// plugin's, or the host's, schema means.
struct ComponentNames {
    qualified: HashMap<(String, String), String>,
}

impl ComponentNames {
    fn assign(plugins: &[std::sync::Arc<LoadedPlugin>], host: &Map<String, Value>) -> Self {
        let mut definitions: BTreeMap<&str, Vec<(&str, &Value)>> = BTreeMap::new();
        for plugin in plugins {
            for (name, schema) in &plugin.manifest.schema_definitions.0 {
                definitions
                    .entry(name)
                    .or_default()
                    .push((&plugin.name, schema));
            }
        }
        let mut qualified = HashMap::new();
        for (name, defined) in definitions {
            let shared = !host.contains_key(name) && defined.windows(2).all(|w| w[0].1 == w[1].1);
            if !shared {
                for (plugin, _) in defined {
                    qualified.insert(
                        (plugin.to_owned(), name.to_owned()),
                        format!("{plugin}.{name}"),
                    );
                }
            }
        }
        Self { qualified }
    }

    fn name<'a>(&'a self, plugin: &str, name: &'a str) -> &'a str {
        self.qualified
            .get(&(plugin.to_owned(), name.to_owned()))
            .map_or(name, String::as_str)
    }

    /// Points every `$ref` of `plugin`'s fragment at the document name of its schema.
    fn rewrite_references(&self, plugin: &str, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    match (key.as_str(), inner) {
                        ("const" | "enum" | "default" | "examples" | "example", _) => {}
                        ("$ref", Value::String(target)) => {
                            if let Some(name) = target.strip_prefix(SCHEMA_REF_PREFIX) {
                                let renamed = self.name(plugin, name);
                                if renamed != name {
                                    *target = format!("{SCHEMA_REF_PREFIX}{renamed}");
                                }
                            }
                        }
                        (_, inner) => self.rewrite_references(plugin, inner),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.rewrite_references(plugin, item);
                }
            }
            _ => {}
        }
    }
}

/// The shared error bodies (docs/API.md "Errors") and the host endpoints' bodies.
fn host_schemas() -> Map<String, Value> {
    let shared_codes = plinth_codes::ErrorCode::ALL
        .iter()
        .map(|code| format!("`{code}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let Value::Object(schemas) = json!({
        "Error": {
            "type": "object",
            "description": "Every non-2xx answer, the 422 aside.",
            "required": ["detail", "code"],
            "properties": {
                "detail": {"type": "string", "description": "For people; never a cause from inside the host."},
                "code": {"type": "string", "description": format!("For programs. Shared by the host and every plugin: {shared_codes}; a plugin may add codes of its own domain (docs/API.md \"Errors\").")},
            },
        },
        "ValidationError": {
            "type": "object",
            "description": "A request that does not hold: every problem found, FastAPI's shape.",
            "required": ["detail", "code"],
            "properties": {
                "detail": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["loc", "msg", "type"],
                        "properties": {
                            "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                            "msg": {"type": "string"},
                            "type": {"type": "string"},
                        },
                    },
                },
                "code": {"type": "string", "const": plinth_codes::ErrorCode::ValidationError.as_str()},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "database", "kv"],
            "properties": {
                "status": {"type": "string", "const": "ready"},
                "database": {"type": "string"},
                "kv": {"type": "string"},
            },
        },
        "PluginEntry": {
            "type": "object",
            "required": ["name", "version", "content_hash", "routes", "loaded_at", "state"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "content_hash": {"type": "string"},
                "routes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["method", "path"],
                        "properties": {"method": {"type": "string"}, "path": {"type": "string"}},
                    },
                },
                "loaded_at": {"type": "string", "format": "date-time"},
                "state": {"type": "string"},
                "last_error": {"type": ["string", "null"]},
            },
        },
        "Fleet": {
            "type": "object",
            "required": ["hosts"],
            "properties": {
                "hosts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["host", "this_host", "plugins"],
                        "properties": {
                            "host": {"type": "string"},
                            "this_host": {"type": "boolean"},
                            "reported_at": {"type": "string", "format": "date-time"},
                            "seconds_since_report": {"type": "number", "minimum": 0},
                            "plugins": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    }) else {
        unreachable!("a JSON object literal")
    };
    schemas
}

fn host_headers() -> Value {
    json!({
        "RateLimit-Limit": {"description": "Requests allowed in the window.", "schema": {"type": "integer"}},
        "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": {"type": "integer"}},
        "RateLimit-Reset": {"description": "Seconds until the window ends.", "schema": {"type": "integer"}},
        "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}},
        "WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}},
        "Allow": {"description": "The methods the path answers.", "schema": {"type": "string"}},
    })
}

/// The answers the host gives itself, each with its `code` (docs/API.md "Errors").
fn host_responses() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": component_schema("Error")}},
        })
    };
    let mut responses = json!({
        "NotAuthenticated": error("`NOT_AUTHENTICATED`: the bearer token is missing, malformed, expired, wrongly signed, of the wrong type or revoked."),
        "Forbidden": error("`FORBIDDEN`: authenticated, but not allowed."),
        "NotFound": error("`NOT_FOUND`."),
        "MethodNotAllowed": error("`METHOD_NOT_ALLOWED`: the path answers the methods in `Allow`."),
        "RequestTimeout": error("`REQUEST_TIMEOUT`: the body did not arrive in time."),
        "PayloadTooLarge": error("`PAYLOAD_TOO_LARGE`: the body is over the host's limit."),
        "ValidationError": {
            "description": "`VALIDATION_ERROR`: every problem with the request.",
            "content": {"application/json": {"schema": component_schema("ValidationError")}},
        },
        "RateLimited": error("`RATE_LIMITED`: this client's budget for the window is spent."),
        "PluginFailed": error("`PLUGIN_FAILED`: the plugin trapped, ran out of memory or answered something invalid."),
        "Unavailable": error("`UNAVAILABLE`: the database or Redis cannot be reached, or the endpoint is at capacity."),
        "PluginTimeout": error("`PLUGIN_TIMEOUT`: the plugin ran past its time limit."),
    });
    responses["NotAuthenticated"]["headers"] =
        json!({"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}});
    responses["MethodNotAllowed"]["headers"] =
        json!({"Allow": {"$ref": "#/components/headers/Allow"}});
    responses["RateLimited"]["headers"] = json!({
        "Retry-After": {"$ref": "#/components/headers/Retry-After"},
        "RateLimit-Limit": {"$ref": "#/components/headers/RateLimit-Limit"},
        "RateLimit-Remaining": {"$ref": "#/components/headers/RateLimit-Remaining"},
        "RateLimit-Reset": {"$ref": "#/components/headers/RateLimit-Reset"},
    });
    responses
}

/// The host's own endpoints (docs/API.md "Platform endpoints").
fn host_paths(config: DocsConfig) -> Vec<(&'static str, Map<String, Value>)> {
    let ok = |description: &str, schema: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": component_schema(schema)}},
        })
    };
    let operation = |value: Value| -> Map<String, Value> {
        let Value::Object(map) = value else {
            unreachable!("a JSON object literal")
        };
        map
    };
    let superuser = json!([{"bearerAuth": []}]);
    let mut paths = vec![
        (
            "/health",
            operation(json!({"get": {
                "operationId": "host_health",
                "summary": "Liveness: the host answers",
                "tags": ["host"],
                "responses": {"200": ok("The host is up.", "Health")},
            }})),
        ),
        (
            "/ready",
            operation(json!({"get": {
                "operationId": "host_ready",
                "summary": "Readiness: the database and the key-value store answer",
                "tags": ["host"],
                "responses": {
                    "200": ok("Ready to serve.", "Ready"),
                    "503": component_response("Unavailable"),
                },
            }})),
        ),
        (
            "/admin/plugins",
            operation(json!({"get": {
                "operationId": "host_list_plugins",
                "summary": "Every plugin this host serves, with its state and counters",
                "tags": ["host"],
                "security": superuser,
                "responses": {
                    "200": {
                        "description": "The plugins, by name.",
                        "content": {"application/json": {"schema": {
                            "type": "array", "items": component_schema("PluginEntry"),
                        }}},
                    },
                    "401": component_response("NotAuthenticated"),
                    "403": component_response("Forbidden"),
                    "429": component_response("RateLimited"),
                    "503": component_response("Unavailable"),
                },
            }})),
        ),
        (
            "/admin/plugins/{name}/reload",
            operation(json!({"post": {
                "operationId": "host_reload_plugin",
                "summary": "Rebuild one plugin from its directory and swap it in",
                "description": "Announced to every host sharing the Redis. When the new \
                    version is refused, the old one keeps serving and the 422 says why.",
                "tags": ["host"],
                "security": superuser,
                "parameters": [{
                    "name": "name", "in": "path", "required": true,
                    "schema": {"type": "string"}, "description": "The plugin's name.",
                }],
                "responses": {
                    "200": ok("The plugin's new entry.", "PluginEntry"),
                    "401": component_response("NotAuthenticated"),
                    "403": component_response("Forbidden"),
                    "404": component_response("NotFound"),
                    "422": component_response("ValidationError"),
                    "429": component_response("RateLimited"),
                    "503": component_response("Unavailable"),
                },
            }})),
        ),
        (
            "/admin/fleet",
            operation(json!({"get": {
                "operationId": "host_fleet",
                "summary": "Every host sharing the Redis and what each serves",
                "tags": ["host"],
                "security": superuser,
                "responses": {
                    "200": ok("The hosts and their plugins.", "Fleet"),
                    "401": component_response("NotAuthenticated"),
                    "403": component_response("Forbidden"),
                    "429": component_response("RateLimited"),
                    "503": component_response("Unavailable"),
                },
            }})),
        ),
    ];
    if config.openapi {
        paths.push((
            DOCUMENT_PATH,
            operation(json!({"get": {
                "operationId": "host_openapi",
                "summary": "This document",
                "tags": ["host"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1, assembled from the plugins deployed now.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "429": component_response("RateLimited"),
                },
            }})),
        ));
    }
    if config.ui {
        paths.push((
            UI_PATH,
            operation(json!({"get": {
                "operationId": "host_docs",
                "summary": "This document for people (Swagger UI)",
                "tags": ["host"],
                "responses": {
                    "200": {
                        "description": "An HTML page; its scripts and styles come from `/docs/`.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "429": component_response("RateLimited"),
                },
            }})),
        ));
    }
    paths
}
