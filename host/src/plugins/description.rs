//! What a plugin says about its routes: the part of `plugin.toml` the OpenAPI document
//! (`crate::openapi`) is assembled from.
//!
//! A `[[route]]` may carry `summary`, `description`, `operation_id`, `tags`, `params` (its
//! `{param}` segments), `query`, `request` (and `request_optional`) and `responses` (with
//! OpenAPI `links` to operations of the same plugin). Schemas are JSON Schema 2020-12
//! (OpenAPI 3.1's dialect), written in place or named from the JSON file the manifest's
//! `schemas` key names. All of it is checked when the plugin loads, so a description that
//! does not hold refuses the plugin with the reason, like any other manifest error.
//!
//! ```toml
//! schemas = "schemas.json"          # {"User": {...}, "UserCreate": {...}}
//!
//! [[route]]
//! method = "GET"
//! path = "/api/v1/users/{id}"
//! summary = "Read one user"
//! operation_id = "read_user"
//! params.id = { description = "The user's id", schema = { type = "integer" } }
//! responses.200 = { description = "The user", schema = "User" }
//! responses.404 = "No such user"    # an error: the shared error body
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

/// Where `$ref` points inside the OpenAPI document; a schemas file uses the same form to
/// name its other schemas, so a schema reads the same in the file and in the document.
pub const SCHEMA_REF_PREFIX: &str = "#/components/schemas/";

/// A schema: a name from the plugin's schemas file, or written in place.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SchemaSpec {
    Named(String),
    Inline(serde_json::Map<String, Value>),
}

/// A path or query parameter.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub description: Option<String>,
    /// Default: a string.
    pub schema: Option<SchemaSpec>,
    /// Query parameters only (path parameters are always required).
    #[serde(default)]
    pub required: bool,
}

/// The request body: schemas by media type. Written as a schema name (JSON), or as a
/// table of media type → schema.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(from = "RawRequest")]
pub struct RequestSpec {
    pub content: BTreeMap<String, SchemaSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRequest {
    Json(String),
    ByMediaType(BTreeMap<String, SchemaSpec>),
}

impl From<RawRequest> for RequestSpec {
    fn from(raw: RawRequest) -> Self {
        let content = match raw {
            RawRequest::Json(name) => {
                BTreeMap::from([("application/json".to_owned(), SchemaSpec::Named(name))])
            }
            RawRequest::ByMediaType(content) => content,
        };
        Self { content }
    }
}

/// One documented answer: a description, or a description and a body schema. An error
/// status (4xx, 5xx) without a schema has the shared error body.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ResponseSpec {
    Description(String),
    Detailed(ResponseDetail),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseDetail {
    pub description: String,
    pub schema: Option<SchemaSpec>,
    /// OpenAPI links: how values of this answer feed another operation of the same
    /// plugin (what stateful clients and testers follow, e.g. register → login).
    #[serde(default)]
    pub links: BTreeMap<String, LinkSpec>,
}

/// An OpenAPI link, with runtime expressions (`$response.body#/id`, `$request.body#/email`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub operation_id: String,
    pub description: Option<String>,
    /// `path.id`, `query.x`, `header.X` → expression.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    pub request_body: Option<Value>,
}

impl LinkSpec {
    pub fn to_json(&self) -> Value {
        let mut link = serde_json::json!({ "operationId": self.operation_id });
        if let Some(description) = &self.description {
            link["description"] = description.clone().into();
        }
        if !self.parameters.is_empty() {
            link["parameters"] = serde_json::to_value(&self.parameters).unwrap_or_default();
        }
        if let Some(body) = &self.request_body {
            link["requestBody"] = body.clone();
        }
        link
    }
}

impl ResponseSpec {
    pub fn description(&self) -> &str {
        match self {
            Self::Description(text) => text,
            Self::Detailed(detail) => &detail.description,
        }
    }

    pub fn schema(&self) -> Option<&SchemaSpec> {
        match self {
            Self::Description(_) => None,
            Self::Detailed(detail) => detail.schema.as_ref(),
        }
    }

    pub fn links(&self) -> Option<&BTreeMap<String, LinkSpec>> {
        match self {
            Self::Description(_) => None,
            Self::Detailed(detail) => Some(&detail.links),
        }
    }
}

impl SchemaSpec {
    /// The schema as it stands in the document: a `$ref` to a named schema, or the schema.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Named(name) => {
                serde_json::json!({ "$ref": format!("{SCHEMA_REF_PREFIX}{name}") })
            }
            Self::Inline(schema) => Value::Object(schema.clone()),
        }
    }
}

/// The named schemas of one plugin (its `schemas` file), checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schemas(pub BTreeMap<String, Value>);

impl Schemas {
    /// Parses a schemas file: one JSON object, schema name → JSON Schema.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let map: serde_json::Map<String, Value> =
            serde_json::from_str(text).context("must be a JSON object of name → JSON Schema")?;
        let schemas = Self(map.into_iter().collect());
        for (name, schema) in &schemas.0 {
            ensure!(
                is_component_name(name),
                "schema name `{name}` must be 1-64 characters of A-Z, a-z, 0-9, `.`, `_` and `-`"
            );
            schemas
                .check(schema)
                .with_context(|| format!("schema `{name}`"))?;
        }
        Ok(schemas)
    }

    /// A valid JSON Schema 2020-12 whose references all name schemas of this file.
    fn check(&self, schema: &Value) -> anyhow::Result<()> {
        if let Err(err) = jsonschema::draft202012::meta::validate(schema) {
            bail!("not a valid JSON Schema (2020-12): {err}");
        }
        self.check_references(schema)
    }

    fn check_spec(&self, spec: &SchemaSpec) -> anyhow::Result<()> {
        match spec {
            SchemaSpec::Named(name) => {
                ensure!(
                    self.0.contains_key(name),
                    "schema `{name}` is not in the plugin's `schemas` file"
                );
                Ok(())
            }
            SchemaSpec::Inline(schema) => self.check(&Value::Object(schema.clone())),
        }
    }

    /// References resolve inside the assembled document only as `#/components/schemas/X`
    /// with `X` from this file; anything else (another file, a URL, a base-URI change)
    /// could not be served, or would fetch.
    fn check_references(&self, value: &Value) -> anyhow::Result<()> {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        // Literal values, not schemas: anything may be written in them.
                        ("const" | "enum" | "default" | "examples" | "example", _) => {}
                        ("$ref", Value::String(target)) => {
                            let name = target.strip_prefix(SCHEMA_REF_PREFIX).unwrap_or_default();
                            ensure!(
                                self.0.contains_key(name),
                                "`$ref: {target}` must be `{SCHEMA_REF_PREFIX}<name>` with a \
                                 schema of the plugin's `schemas` file"
                            );
                        }
                        (
                            "$id" | "$dynamicRef" | "$dynamicAnchor" | "$schema",
                            Value::String(_),
                        ) => {
                            bail!("`{key}` is not supported: schemas are resolved in the document")
                        }
                        _ => self.check_references(inner)?,
                    }
                }
                Ok(())
            }
            Value::Array(items) => items
                .iter()
                .try_for_each(|item| self.check_references(item)),
            _ => Ok(()),
        }
    }
}

/// OpenAPI's rule for component names (kept to 64 characters).
pub fn is_component_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// What a route's description must satisfy, given its path and its plugin's schemas.
pub fn check_route(route: &super::manifest::RouteSpec, schemas: &Schemas) -> anyhow::Result<()> {
    for (field, text) in [
        ("summary", &route.summary),
        ("description", &route.description),
    ] {
        if let Some(text) = text {
            ensure!(!text.trim().is_empty(), "`{field}` must not be empty");
        }
    }
    if let Some(summary) = &route.summary {
        ensure!(
            summary.chars().count() <= 120 && !summary.contains('\n'),
            "`summary` must be one line of at most 120 characters"
        );
    }
    if let Some(id) = &route.operation_id {
        ensure!(
            !id.is_empty()
                && id.len() <= 100
                && id.starts_with(|c: char| c.is_ascii_alphabetic())
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "`operation_id` `{id}` must be 1-100 characters of A-Z, a-z, 0-9 and `_`, \
             starting with a letter"
        );
        ensure!(
            !id.starts_with(HOST_OPERATION_PREFIX),
            "`operation_id` `{id}`: `{HOST_OPERATION_PREFIX}` is kept for the host's own endpoints"
        );
    }
    for tag in &route.tags {
        ensure!(!tag.trim().is_empty(), "a tag must not be empty");
    }

    let path_params: BTreeSet<&str> = path_parameters(&route.path).collect();
    for (name, param) in &route.params {
        ensure!(
            path_params.contains(name.as_str()),
            "`params.{name}`: the path has no `{{{name}}}` segment"
        );
        ensure!(
            !param.required,
            "`params.{name}.required`: path parameters are always required"
        );
    }
    for (kind, params) in [("params", &route.params), ("query", &route.query)] {
        for (name, param) in params {
            ensure!(
                !name.is_empty() && !name.contains(['&', '=', '#', ' ']),
                "`{kind}`: `{name}` is not a parameter name"
            );
            if let Some(schema) = &param.schema {
                schemas
                    .check_spec(schema)
                    .with_context(|| format!("`{kind}.{name}.schema`"))?;
            }
        }
    }
    ensure!(
        route.request.is_some() || !route.request_optional,
        "`request_optional` needs a `request`"
    );
    if let Some(request) = &route.request {
        ensure!(!request.content.is_empty(), "`request` names no media type");
        for (media_type, schema) in &request.content {
            ensure!(
                is_media_type(media_type),
                "`request`: `{media_type}` is not a media type like `application/json`"
            );
            schemas
                .check_spec(schema)
                .with_context(|| format!("`request.\"{media_type}\"`"))?;
        }
    }
    for (status, response) in &route.responses {
        ensure!(
            status.len() == 3
                && status
                    .parse::<u16>()
                    .is_ok_and(|code| (100..=599).contains(&code)),
            "`responses.{status}`: a response is keyed by its status code (100-599)"
        );
        ensure!(
            !response.description().trim().is_empty(),
            "`responses.{status}`: the description must not be empty"
        );
        if let Some(schema) = response.schema() {
            schemas
                .check_spec(schema)
                .with_context(|| format!("`responses.{status}.schema`"))?;
        }
    }
    Ok(())
}

/// What only the whole manifest can tell: every link names an operation of the same plugin.
pub fn check_links(routes: &[super::manifest::RouteSpec]) -> anyhow::Result<()> {
    let operations: BTreeSet<Cow<'_, str>> = routes.iter().map(|r| r.operation_id()).collect();
    for route in routes {
        for (status, response) in &route.responses {
            for (name, link) in response.links().into_iter().flatten() {
                ensure!(
                    is_component_name(name),
                    "route {} {}: `responses.{status}.links`: `{name}` is not a link name",
                    route.method,
                    route.path
                );
                ensure!(
                    operations.contains(link.operation_id.as_str()),
                    "route {} {}: link `{name}` names `{}`, which is not an operation of this plugin",
                    route.method,
                    route.path,
                    link.operation_id
                );
                for target in link.parameters.keys() {
                    ensure!(
                        ["path.", "query.", "header."]
                            .iter()
                            .any(|prefix| target.starts_with(prefix)),
                        "route {} {}: link `{name}`: parameter `{target}` must start with \
                         `path.`, `query.` or `header.`",
                        route.method,
                        route.path
                    );
                }
            }
        }
    }
    Ok(())
}

/// The `{name}` segments of a route pattern, in order.
pub fn path_parameters(pattern: &str) -> impl Iterator<Item = &str> {
    pattern
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

/// `type/subtype` of RFC 9110 token characters, no wildcard, no parameters.
fn is_media_type(text: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    text.split_once('/')
        .is_some_and(|(kind, subtype)| token(kind) && token(subtype))
}

/// Operation ids the host's own endpoints use start with this; no plugin's may.
pub const HOST_OPERATION_PREFIX: &str = "host_";

impl super::manifest::RouteSpec {
    /// The route's `operationId`: as written, else `<method>_<path>` with `{id}` read as
    /// `by_id` (`GET /users/{id}` → `get_users_by_id`); a trailing slash adds `_slash`.
    pub fn operation_id(&self) -> Cow<'_, str> {
        if let Some(id) = &self.operation_id {
            return Cow::Borrowed(id);
        }
        let mut id = self.method.to_ascii_lowercase();
        for segment in self.path.split('/').filter(|s| !s.is_empty()) {
            id.push('_');
            match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => {
                    id.push_str("by_");
                    id.push_str(param);
                }
                None => id.extend(segment.chars().map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })),
            }
        }
        if self.path.len() > 1 && self.path.ends_with('/') {
            id.push_str("_slash");
        }
        Cow::Owned(id)
    }
}
