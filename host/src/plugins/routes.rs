//! The route table: method + path pattern → plugin, built from all manifests at once.
//!
//! A table is immutable; a reload builds a new one and swaps it in whole, so a request
//! resolves against exactly one consistent set of plugins.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use anyhow::bail;
use bytes::Bytes;
use http::Method;

use super::LoadedPlugin;
use super::manifest::{AuthPolicy, RateLimitClass, RouteSpec};
use crate::error::ApiError;
use crate::telemetry::metrics::RouteSeries;

/// Where a matched request goes.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub plugin: Arc<LoadedPlugin>,
    pub method: Method,
    pub pattern: Arc<str>,
    pub auth: AuthPolicy,
    pub rate_limit: RateLimitClass,
    /// This route's metric series, resolved on first use.
    pub series: Arc<RouteSeries>,
}

#[derive(Debug)]
struct PathEntry {
    targets: Vec<RouteTarget>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    router: matchit::Router<PathEntry>,
    plugins: Vec<Arc<LoadedPlugin>>,
    /// The OpenAPI document of exactly these routes (`crate::openapi`), rendered on first use.
    openapi: OnceLock<Bytes>,
}

/// A `{param}` value as the plugin receives it: percent-decoded, invalid UTF-8 replaced
/// by U+FFFD.
pub(crate) fn decode_param(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// A resolved request: the target and the decoded `{param}` values.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub target: &'a RouteTarget,
    pub params: Vec<(String, String)>,
}

/// What placing routes needs to know of a plugin: `LoadedPlugin` for a table that serves,
/// a manifest alone for `plinth check`.
pub trait RouteOwner {
    fn name(&self) -> &str;
    fn manifest_path(&self) -> &std::path::Path;
    fn routes(&self) -> &[RouteSpec];

    /// "`/x` of plugin `p` (path/plugin.toml)", for error messages.
    fn describe_route(&self, pattern: &str) -> String {
        format!(
            "`{pattern}` of plugin `{}` ({})",
            self.name(),
            self.manifest_path().display()
        )
    }
}

impl RouteOwner for Arc<LoadedPlugin> {
    fn name(&self) -> &str {
        &self.name
    }
    fn manifest_path(&self) -> &std::path::Path {
        &self.manifest_path
    }
    fn routes(&self) -> &[RouteSpec] {
        &self.manifest.routes
    }
}

/// Routes by pattern: which owner (its index), method and route claim each.
pub type Placed<'a> = BTreeMap<&'a str, Vec<(usize, Method, &'a RouteSpec)>>;

/// Where every route of `owners` goes: pattern → (owner index, method, route), in pattern
/// order, and the router those patterns make. Two owners claiming one method and path,
/// patterns that cannot be told apart, or one operation id named twice are an error naming
/// both manifests. The one check of route conflicts, for serving and for `plinth check`.
pub fn place<O: RouteOwner>(owners: &[O]) -> anyhow::Result<Placed<'_>> {
    let mut by_pattern = Placed::new();
    let mut operation_ids: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    for (index, owner) in owners.iter().enumerate() {
        for route in owner.routes() {
            let method = Method::from_bytes(route.method.as_bytes())?;
            let claims = by_pattern.entry(route.path.as_str()).or_default();
            if let Some((other, ..)) = claims.iter().find(|(_, m, _)| *m == method) {
                let other = &owners[*other];
                bail!(
                    "route conflict: {} {} is claimed by plugin `{}` ({}) and plugin `{}` ({})",
                    route.method,
                    route.path,
                    other.name(),
                    other.manifest_path().display(),
                    owner.name(),
                    owner.manifest_path().display(),
                );
            }
            // Client generators name their functions after these: one per operation.
            let id = route.operation_id().into_owned();
            if let Some((other, other_path)) = operation_ids.get(&id) {
                bail!(
                    "operation id conflict: `{id}` names both {} and {}",
                    owners[*other].describe_route(other_path),
                    owner.describe_route(&route.path),
                );
            }
            operation_ids.insert(id, (index, &route.path));
            claims.push((index, method, route));
        }
    }

    let mut router = matchit::Router::new();
    let mut inserted: Vec<(&str, usize)> = Vec::new();
    for (pattern, claims) in &by_pattern {
        let owner = claims[0].0;
        if let Err(err) = router.insert(*pattern, ()) {
            let other = match &err {
                matchit::InsertError::Conflict { with } => inserted
                    .iter()
                    .find(|(p, _)| p == with)
                    .map(|(p, other)| owners[*other].describe_route(p))
                    .unwrap_or_else(|| format!("`{with}`")),
                _ => "another route".to_owned(),
            };
            bail!(
                "route conflict: {} overlaps {other}",
                owners[owner].describe_route(pattern)
            );
        }
        inserted.push((pattern, owner));
    }
    Ok(by_pattern)
}

impl RouteTable {
    /// Builds the table from every plugin's routes, placed by [`place`] (which refuses
    /// conflicts).
    pub fn build(mut plugins: Vec<Arc<LoadedPlugin>>) -> anyhow::Result<Self> {
        // Listed by name, whatever order they were loaded or reloaded in.
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let mut router = matchit::Router::new();
        for (pattern, claims) in place(&plugins)? {
            let targets = claims
                .into_iter()
                .map(|(index, method, route)| RouteTarget {
                    plugin: plugins[index].clone(),
                    method,
                    pattern: Arc::from(pattern),
                    auth: route.auth,
                    rate_limit: route.rate_limit,
                    series: Arc::default(),
                })
                .collect();
            // `place` inserted the same patterns into a router of its own without conflict.
            router.insert(pattern, PathEntry { targets })?;
        }
        Ok(Self {
            router,
            plugins,
            openapi: OnceLock::new(),
        })
    }

    /// This table's OpenAPI document, rendered by `render` the first time it is asked for.
    pub fn openapi_document(&self, render: impl FnOnce() -> Bytes) -> &Bytes {
        self.openapi.get_or_init(render)
    }

    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Finds the target for `method` and `path`: 404 when no pattern matches the path,
    /// 405 with the allowed methods when the path matches but the method does not.
    /// `HEAD` is served by the `GET` route.
    pub fn resolve(&self, method: &Method, path: &str) -> Result<RouteMatch<'_>, ApiError> {
        let matched = self.router.at(path).map_err(|_| ApiError::NotFound)?;
        let wanted = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let Some(target) = matched.value.targets.iter().find(|t| t.method == wanted) else {
            let mut allow: Vec<String> = matched
                .value
                .targets
                .iter()
                .map(|t| t.method.to_string())
                .collect();
            if allow.iter().any(|m| m == "GET") {
                allow.push("HEAD".into());
            }
            allow.sort();
            return Err(ApiError::MethodNotAllowed { allow });
        };
        let params = matched
            .params
            .iter()
            .map(|(name, raw)| (name.to_owned(), decode_param(raw)))
            .collect();
        Ok(RouteMatch { target, params })
    }
}
