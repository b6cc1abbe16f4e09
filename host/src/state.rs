//! What every request needs, shared by all connections.

use std::sync::Arc;
use std::time::Duration;

use crate::capabilities::Capabilities;
use crate::fleet::Fleet;
use crate::middleware::cors::CorsPolicy;
use crate::middleware::rate_limit::RateLimiter;
use crate::plugins::Registry;
use crate::readiness::ReadinessCache;
use crate::telemetry::metrics::Metrics;

#[derive(Debug)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub capabilities: Arc<Capabilities>,
    pub rate_limiter: RateLimiter,
    pub cors: Option<CorsPolicy>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub max_body_bytes: usize,
    /// Time allowed for a request's body once its headers arrived (408 beyond it).
    pub body_read_timeout: Duration,
    pub readiness: ReadinessCache,
    /// The data set whose `users` table decides who is a superuser (`ACCOUNTS_DATA_SET`).
    pub accounts_data_set: String,
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<Fleet>,
    /// Whether `/openapi.json` and `/docs` are served.
    pub docs: crate::openapi::DocsConfig,
}
