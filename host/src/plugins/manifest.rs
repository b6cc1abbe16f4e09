//! `plugin.toml`: what a plugin serves, what it may import, and its limits.
//!
//! Parsing is strict: an unknown key is an error naming the file and the key, so a typo
//! in a grant or a limit can never silently fall back to a default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::description::{self, ParamSpec, RequestSpec, ResponseSpec, Schemas};
pub use crate::capabilities::Grants;

/// Paths the host serves itself; no plugin may claim them.
const RESERVED_PREFIXES: [&str; 5] = ["/health", "/ready", "/admin", "/openapi.json", "/docs"];

/// Upper bounds an operator can raise a plugin's limits to.
const MAX_MEMORY_MB: u32 = 512;
const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_CONCURRENCY: u32 = 1_000;
const MAX_QUEUED: u32 = 10_000;
const MAX_REUSE: u32 = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// File name of the component, relative to the manifest's directory.
    pub component: String,
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub capabilities: Grants,
    #[serde(default)]
    pub limits: Limits,
    /// File name of the plugin's named JSON Schemas, relative to the manifest's directory.
    pub schemas: Option<String>,
    /// What that file holds, read and checked with the manifest.
    #[serde(skip)]
    pub schema_definitions: Schemas,
}

/// One route. Beyond `method`, `path`, `auth` and `rate_limit`, the fields only describe
/// the route for the OpenAPI document (`plugins::description`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub method: String,
    /// A path pattern: literal segments and `{param}` segments.
    pub path: String,
    #[serde(default)]
    pub auth: AuthPolicy,
    /// Which rate limit counts requests to this route.
    #[serde(default)]
    pub rate_limit: RateLimitClass,
    pub summary: Option<String>,
    pub description: Option<String>,
    /// Default: derived from the method and the path.
    pub operation_id: Option<String>,
    /// Default: the plugin's name.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The `{param}` segments (default: a string each).
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    pub query: BTreeMap<String, ParamSpec>,
    pub request: Option<RequestSpec>,
    /// The body may be left out (default: a route with `request` needs one).
    #[serde(default)]
    pub request_optional: bool,
    /// Status code → answer. A route that lists none is documented as "any status".
    #[serde(default)]
    pub responses: BTreeMap<String, ResponseSpec>,
}

/// The rate-limit budgets a route can draw from (limits come from the host's configuration).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitClass {
    /// `RATE_LIMIT_PER_MINUTE`.
    #[default]
    Default,
    /// `AUTH_RATE_LIMIT_PER_MINUTE`: stricter, for credential endpoints.
    Auth,
}

impl RateLimitClass {
    /// As written in manifests (and in rate-limit keys and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Auth => "auth",
        }
    }
}

/// What the host checks before the plugin runs.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthPolicy {
    /// No token is looked at.
    #[default]
    None,
    /// A valid bearer access token yields a principal; no token is fine; a bad one is 401.
    Optional,
    /// A valid bearer access token is needed, else 401 before the plugin runs.
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_mb: u32,
    /// Wall-clock time one request may spend in the plugin.
    pub timeout_ms: u64,
    /// Requests of this plugin running at once.
    pub max_concurrency: u32,
    /// Requests that may wait for a turn once `max_concurrency` run; more get 503 at once.
    pub max_queued: u32,
    /// How long a queued request waits for a turn before it gets 503.
    pub queue_timeout_ms: u64,
    /// Largest response body the plugin may return (a larger one is a plugin failure).
    pub max_response_mb: u32,
    /// Requests one instance may serve, one after another; 0 (the default): a fresh
    /// instance for every request. Only for plugins that keep nothing between requests:
    /// whatever a request leaves in the instance's memory, the next one can see.
    pub reuse_instance_for: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 64,
            timeout_ms: 2_000,
            max_concurrency: 256,
            max_queued: 1_024,
            queue_timeout_ms: 1_000,
            max_response_mb: 8,
            reuse_instance_for: 0,
        }
    }
}

impl Limits {
    pub fn memory_bytes(&self) -> usize {
        self.memory_mb as usize * 1024 * 1024
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }

    pub fn max_response_bytes(&self) -> usize {
        self.max_response_mb as usize * 1024 * 1024
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=MAX_MEMORY_MB).contains(&self.memory_mb),
            "`limits.memory_mb` must be between 1 and {MAX_MEMORY_MB}"
        );
        ensure!(
            (1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms),
            "`limits.timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}"
        );
        ensure!(
            (1..=MAX_CONCURRENCY).contains(&self.max_concurrency),
            "`limits.max_concurrency` must be between 1 and {MAX_CONCURRENCY}"
        );
        ensure!(
            self.max_queued <= MAX_QUEUED,
            "`limits.max_queued` must be at most {MAX_QUEUED}"
        );
        ensure!(
            self.queue_timeout_ms <= MAX_TIMEOUT_MS,
            "`limits.queue_timeout_ms` must be at most {MAX_TIMEOUT_MS}"
        );
        ensure!(
            (1..=MAX_MEMORY_MB).contains(&self.max_response_mb),
            "`limits.max_response_mb` must be between 1 and {MAX_MEMORY_MB}"
        );
        ensure!(
            self.reuse_instance_for <= MAX_REUSE,
            "`limits.reuse_instance_for` must be at most {MAX_REUSE}"
        );
        Ok(())
    }
}

/// A manifest read from disk, with where it came from.
#[derive(Debug, Clone)]
pub struct LocatedManifest {
    pub manifest: Manifest,
    /// SHA-256 of the file's bytes, hex.
    pub manifest_hash: String,
    pub manifest_path: PathBuf,
    pub component_path: PathBuf,
}

impl Manifest {
    /// Reads and validates `<dir>/plugin.toml` (and the schemas file it names). Every
    /// error names the file.
    pub fn load(dir: &Path) -> anyhow::Result<LocatedManifest> {
        let manifest_path = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("{}: cannot read", manifest_path.display()))?;
        let (manifest, schemas_text) = Self::parse_in(&text, Some(dir))
            .with_context(|| format!("{}: invalid manifest", manifest_path.display()))?;
        let component_path = dir.join(&manifest.component);
        // The schemas file is part of what the plugin says: a change to it is a new version.
        let mut hash = sha2::Sha256::new();
        hash.update(text.as_bytes());
        if let Some(schemas_text) = schemas_text {
            hash.update(b"\0");
            hash.update(schemas_text.as_bytes());
        }
        Ok(LocatedManifest {
            manifest,
            manifest_hash: super::hex(&hash.finalize()),
            manifest_path,
            component_path,
        })
    }

    /// Parses a manifest that names no schemas file (one that does needs [`Manifest::load`]).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_in(text, None).map(|(manifest, _)| manifest)
    }

    /// Parses and checks a manifest; `dir` is where its schemas file is read from. Returns
    /// the schemas file's text too, when there is one.
    fn parse_in(text: &str, dir: Option<&Path>) -> anyhow::Result<(Self, Option<String>)> {
        let mut manifest: Self = toml::from_str(text)?;
        manifest.validate()?;
        let schemas_text = match &manifest.schemas {
            None => None,
            Some(file) => {
                let dir =
                    dir.context("`schemas` names a file: read the manifest from its directory")?;
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("`schemas`: cannot read {}", path.display()))?;
                manifest.schema_definitions = Schemas::parse(&text)
                    .with_context(|| format!("`schemas`: {}", path.display()))?;
                Some(text)
            }
        };
        for route in &manifest.routes {
            description::check_route(route, &manifest.schema_definitions)
                .with_context(|| format!("route {} {}", route.method, route.path))?;
        }
        description::check_links(&manifest.routes)?;
        manifest.capabilities.resolve(&manifest.name)?;
        Ok((manifest, schemas_text))
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.name.is_empty()
                && self.name.len() <= 64
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
            "`name` must be 1-64 characters of a-z, 0-9, `-` and `_`"
        );
        ensure!(
            !self.version.trim().is_empty(),
            "`version` must not be empty"
        );
        ensure!(
            !self.component.is_empty()
                && !self.component.contains(['/', '\\'])
                && self.component != ".."
                && self.component.ends_with(".wasm"),
            "`component` must be a `.wasm` file name in the plugin's directory"
        );
        if let Some(file) = &self.schemas {
            ensure!(
                !file.contains(['/', '\\']) && file != ".." && file.ends_with(".json"),
                "`schemas` must be a `.json` file name in the plugin's directory"
            );
        }
        self.limits.validate()?;
        let mut seen = BTreeSet::new();
        for route in &self.routes {
            route.validate()?;
            if !seen.insert((route.method.as_str(), route.path.as_str())) {
                bail!("route {} {} is declared twice", route.method, route.path);
            }
        }
        Ok(())
    }
}

impl RouteSpec {
    fn validate(&self) -> anyhow::Result<()> {
        const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
        ensure!(
            METHODS.contains(&self.method.as_str()),
            "route method `{}` must be one of {}",
            self.method,
            METHODS.join(", ")
        );
        let path = &self.path;
        ensure!(
            path.starts_with('/'),
            "route path `{path}` must start with `/`"
        );
        ensure!(
            !RESERVED_PREFIXES
                .iter()
                .any(|p| path == p || path.starts_with(&format!("{p}/"))),
            "route path `{path}` is reserved for the host"
        );
        let mut params = BTreeSet::new();
        for segment in path.split('/').skip(1) {
            if let Some(inner) = segment.strip_prefix('{') {
                let name = inner.strip_suffix('}').unwrap_or_default();
                ensure!(
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "route path `{path}`: `{segment}` must be a whole segment like `{{id}}`"
                );
                // The plugin reads parameters by name: a second `{id}` could never be read.
                ensure!(
                    params.insert(name),
                    "route path `{path}`: `{segment}` appears twice"
                );
            } else {
                ensure!(
                    !segment.contains(['{', '}', '*', '?', '#']),
                    "route path `{path}`: segment `{segment}` has a reserved character"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "hello"
        version = "1.0.0"
        component = "hello.wasm"

        [[route]]
        method = "GET"
        path = "/hello/{name}"
    "#;

    #[test]
    fn minimal_manifest_gets_defaults() -> anyhow::Result<()> {
        let manifest = Manifest::parse(MINIMAL)?;
        assert_eq!(manifest.routes[0].auth, AuthPolicy::None);
        assert_eq!(manifest.limits, Limits::default());
        assert_eq!(manifest.capabilities, Grants::default());
        Ok(())
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            (format!("{MINIMAL}\ncolour = 1"), "colour"),
            (format!("{MINIMAL}\n[limits]\nmemory_gb = 1"), "memory_gb"),
            (
                format!("{MINIMAL}\n[capabilities]\nnetwork = true"),
                "network",
            ),
        ] {
            let err = Manifest::parse(&text).expect_err(key);
            assert!(format!("{err:#}").contains(key), "{err:#}");
        }
    }

    #[test]
    fn bad_routes_are_refused() {
        for (method, path) in [
            ("GET", "no-slash"),
            ("BREW", "/coffee"),
            ("GET", "/health"),
            ("GET", "/admin/plugins"),
            ("GET", "/a/{x"),
            ("GET", "/a/b{x}"),
            ("GET", "/a/{*rest}"),
            ("GET", "/a/{id}/b/{id}"),
        ] {
            let text = format!(
                "name = \"x\"\nversion = \"1\"\ncomponent = \"x.wasm\"\n\
                 [[route]]\nmethod = \"{method}\"\npath = \"{path}\"\n"
            );
            assert!(Manifest::parse(&text).is_err(), "{method} {path} accepted");
        }
    }

    #[test]
    fn route_descriptions_are_checked() {
        let route = |extra: &str| {
            format!(
                "name = \"x\"\nversion = \"1\"\ncomponent = \"x.wasm\"\n\
                 [[route]]\nmethod = \"GET\"\npath = \"/items/{{id}}\"\n{extra}\n"
            )
        };
        let described = route(
            "summary = \"One item\"\noperation_id = \"read_item\"\n\
             params.id = { description = \"The id\", schema = { type = \"integer\" } }\n\
             query.fields = { required = true }\n\
             request.\"application/json\" = { type = \"object\" }\n\
             responses.200 = { description = \"The item\", schema = { type = \"object\" } }\n\
             responses.404 = \"No such item\"",
        );
        let manifest = Manifest::parse(&described).expect("a valid description");
        assert_eq!(manifest.routes[0].operation_id(), "read_item");
        assert_eq!(
            Manifest::parse(&route("")).expect("no description").routes[0].operation_id(),
            "get_items_by_id"
        );

        for (extra, reason) in [
            ("summary = \"\"", "`summary` must not be empty"),
            ("operation_id = \"read item\"", "`operation_id`"),
            ("operation_id = \"host_health\"", "kept for the host"),
            ("params.name = {}", "no `{name}` segment"),
            ("params.id = { required = true }", "always required"),
            ("responses.20 = \"Too short\"", "status code"),
            ("responses.default = \"Anything\"", "status code"),
            ("responses.200 = \"\"", "must not be empty"),
            (
                "responses.200 = { description = \"x\", schema = { type = \"strng\" } }",
                "not a valid JSON Schema",
            ),
            (
                "responses.200 = { description = \"x\", schema = \"Item\" }",
                "not in the plugin's `schemas` file",
            ),
            ("request = \"Item\"", "not in the plugin's `schemas` file"),
            (
                "request.\"json\" = { type = \"object\" }",
                "not a media type",
            ),
            (
                "request.\"application/json\" = { \"$ref\" = \"https://example.com/s.json\" }",
                "`$ref",
            ),
            (
                "responses.200 = { description = \"x\", colour = \"red\" }",
                "responses",
            ),
        ] {
            let err = Manifest::parse(&route(extra)).expect_err(extra);
            assert!(format!("{err:#}").contains(reason), "{extra}: {err:#}");
        }
        let named = format!("schemas = \"api.json\"\n{}", route(""));
        let err = Manifest::parse(&named).expect_err("a schemas file needs a directory");
        assert!(format!("{err:#}").contains("directory"), "{err:#}");
    }

    #[test]
    fn schemas_files_are_checked() {
        assert!(
            Schemas::parse(r##"{"Item": {"type": "object", "properties": {"tag": {"$ref": "#/components/schemas/Tag"}}}, "Tag": {"type": "string"}}"##)
                .is_ok()
        );
        for (text, reason) in [
            ("[]", "JSON object"),
            (r#"{"bad name": {}}"#, "schema name"),
            (r#"{"Item": {"type": "strng"}}"#, "not a valid JSON Schema"),
            (
                r##"{"Item": {"$ref": "#/components/schemas/Nope"}}"##,
                "`$ref",
            ),
            (r##"{"Item": {"$ref": "#/$defs/x"}}"##, "`$ref"),
            (r#"{"Item": {"$id": "https://example.com/item"}}"#, "`$id`"),
        ] {
            let err = Schemas::parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(reason), "{text}: {err:#}");
        }
    }

    #[test]
    fn component_must_stay_in_the_plugin_directory() {
        let text = MINIMAL.replace("hello.wasm", "../other/hello.wasm");
        assert!(Manifest::parse(&text).is_err());
    }
}
