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
use super::manifest::{AuthPolicy, RateLimitClass};
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

impl RouteTable {
    /// Builds the table; two plugins claiming the same method and path, or patterns that
    /// cannot be told apart, are an error naming both manifests.
    pub fn build(mut plugins: Vec<Arc<LoadedPlugin>>) -> anyhow::Result<Self> {
        // Listed by name, whatever order they were loaded or reloaded in.
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_pattern: BTreeMap<&str, Vec<RouteTarget>> = BTreeMap::new();
        let mut operation_ids: BTreeMap<String, (&Arc<LoadedPlugin>, &str)> = BTreeMap::new();
        for plugin in &plugins {
            for route in &plugin.manifest.routes {
                // Client generators name their functions after these: one per operation.
                let id = route.operation_id().into_owned();
                if let Some((other, other_path)) = operation_ids.get(&id) {
                    bail!(
                        "operation id conflict: `{id}` names both {} and {}",
                        other.describe_route(other_path),
                        plugin.describe_route(&route.path),
                    );
                }
                operation_ids.insert(id, (plugin, &route.path));
                let method = Method::from_bytes(route.method.as_bytes())?;
                let targets = by_pattern.entry(route.path.as_str()).or_default();
                if let Some(other) = targets.iter().find(|t| t.method == method) {
                    bail!(
                        "route conflict: {} {} is claimed by plugin `{}` ({}) and plugin `{}` ({})",
                        route.method,
                        route.path,
                        other.plugin.name,
                        other.plugin.manifest_path.display(),
                        plugin.name,
                        plugin.manifest_path.display(),
                    );
                }
                targets.push(RouteTarget {
                    plugin: plugin.clone(),
                    method,
                    pattern: Arc::from(route.path.as_str()),
                    auth: route.auth,
                    rate_limit: route.rate_limit,
                    series: Arc::default(),
                });
            }
        }

        let mut router = matchit::Router::new();
        let mut inserted: Vec<(&str, Arc<LoadedPlugin>)> = Vec::new();
        for (pattern, targets) in by_pattern {
            let owner = targets[0].plugin.clone();
            if let Err(err) = router.insert(pattern, PathEntry { targets }) {
                let other = match &err {
                    matchit::InsertError::Conflict { with } => inserted
                        .iter()
                        .find(|(p, _)| p == with)
                        .map(|(p, plugin)| plugin.describe_route(p))
                        .unwrap_or_else(|| format!("`{with}`")),
                    _ => "another route".to_owned(),
                };
                bail!(
                    "route conflict: {} overlaps {other}",
                    owner.describe_route(pattern)
                );
            }
            inserted.push((pattern, owner));
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
