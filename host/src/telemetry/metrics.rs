//! Prometheus metrics, named after the OpenTelemetry HTTP semantic conventions in their
//! Prometheus form (`http.server.request.duration` → `http_server_request_duration_seconds`,
//! labels `http_request_method`, `http_route`, `http_response_status_code`), plus Plinth's
//! own `plinth_*` families, in the text exposition format (0.0.4) that every Prometheus
//! scrapes and `promtool check metrics` lints.
//!
//! One [`Metrics`] per process. The HTTP families are recorded only when `METRICS_ADDR` is
//! set (the exposition is then served on that separate listener, never on the public
//! port); the per-plugin counters always are, because the admin API reads the very same
//! counters: `GET /admin/plugins` and a scrape cannot disagree.
//!
//! Label values are bounded by what is deployed, never by what clients send: `http_route`
//! is the matched route template (`/api/v1/users/{user_id}`), `""` for a path no route
//! matched; methods outside the standard set are `_OTHER`, as the conventions say.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The content type of the exposition ([`Metrics::encode`]).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// `http_request_method`: the standard methods by name, anything else `_OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .iter()
        .find(|known| **known == method.as_str())
        .copied()
        .unwrap_or("_OTHER")
}

/// Every metric family of the process, and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    /// Whether requests are measured (`METRICS_ADDR` is set).
    http_enabled: bool,
    /// `http_request_method`, `http_route`, `http_response_status_code`, `plugin`.
    request_duration: HistogramVec,
    pub active_requests: IntGauge,
    /// `http_request_method`, `http_route`.
    request_body_size: HistogramVec,
    response_body_size: HistogramVec,
    /// `plugin`, `version`, `outcome`.
    pub plugin_invocations: IntCounterVec,
    /// `plugin`, `version`.
    pub plugin_heavy_calls: IntCounterVec,
    pub plugin_instantiation: HistogramVec,
    /// `plugin`, `version`, `hash`.
    pub plugin_info: IntGaugeVec,
    /// `plugin`, `version`.
    pub plugin_instances_in_use: IntGaugeVec,
    /// `plugin`, `version`.
    pub plugin_queued: IntGaugeVec,
    /// `plugin`, `result`: `swapped` or `refused`.
    pub plugin_reloads: IntCounterVec,
    /// `class`, `result`: `allowed`, `refused`, `unavailable`.
    pub rate_limit_decisions: IntCounterVec,
    /// `kind`, `result`.
    pub token_verifications: IntCounterVec,
    /// `reason`: `connect`, `timeout`, `connection`.
    pub redis_errors: IntCounterVec,
    /// `interface`, `function`; recorded only when `METRICS_ADDR` is set.
    host_calls: Arc<HostCallSeries>,
    /// `data_set`, `pool`, `state`: `open` or `idle`.
    pub db_pool_connections: IntGaugeVec,
    /// `data_set`, `pool`.
    pub db_pool_waits: IntCounterVec,
    /// `state`: `total` or `in_use` (the instance pool's slots, read at each scrape).
    pub instance_slots: IntGaugeVec,
    /// What sets gauges read from state rather than kept up to date, run before a scrape.
    on_scrape: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("http_enabled", &self.http_enabled)
            .finish_non_exhaustive()
    }
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> anyhow::Result<HistogramVec> {
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> anyhow::Result<IntGaugeVec> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

impl Metrics {
    pub fn new(http_enabled: bool) -> anyhow::Result<Self> {
        Self::build(http_enabled).context("registering the metric families")
    }

    fn build(http_enabled: bool) -> anyhow::Result<Self> {
        let registry = Registry::new();
        // 0.25 ms .. ~16 s, and 64 B .. 64 MiB.
        let durations = prometheus::exponential_buckets(0.000_25, 2.0, 17)?;
        let sizes = prometheus::exponential_buckets(64.0, 4.0, 11)?;
        let method_route = ["http_request_method", "http_route"];
        let plugin_version = ["plugin", "version"];

        let active_requests = IntGauge::new(
            "http_server_active_requests",
            "Number of HTTP server requests being served.",
        )?;
        registry.register(Box::new(active_requests.clone()))?;
        let build = gauge(
            &registry,
            "plinth_build_info",
            "The running host's version (always 1).",
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        Ok(Self {
            request_duration: histogram(
                &registry,
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, from the request head read to the response \
                 head.",
                durations.clone(),
                &[
                    "http_request_method",
                    "http_route",
                    "http_response_status_code",
                    "plugin",
                ],
            )?,
            active_requests,
            request_body_size: histogram(
                &registry,
                "http_server_request_body_size_bytes",
                "Size of the HTTP request bodies read for plugin routes.",
                sizes.clone(),
                &method_route,
            )?,
            response_body_size: histogram(
                &registry,
                "http_server_response_body_size_bytes",
                "Size of HTTP response bodies.",
                sizes,
                &method_route,
            )?,
            plugin_invocations: counter(
                &registry,
                "plinth_plugin_invocations_total",
                "Plugin calls by outcome: ok, trap, timeout, invalid_response, rejected (at \
                 capacity).",
                &["plugin", "version", "outcome"],
            )?,
            plugin_heavy_calls: counter(
                &registry,
                "plinth_plugin_heavy_calls_total",
                "Plugin calls whose memory grew past 16 MiB (they put the plugin on the heavy \
                 lanes).",
                &plugin_version,
            )?,
            plugin_instantiation: histogram(
                &registry,
                "plinth_plugin_instantiation_duration_seconds",
                "Time to instantiate a plugin component for a request.",
                durations,
                &plugin_version,
            )?,
            plugin_info: gauge(
                &registry,
                "plinth_plugin_info",
                "The plugin versions this host serves (1 each), by name, version and component \
                 hash.",
                &["plugin", "version", "hash"],
            )?,
            plugin_instances_in_use: gauge(
                &registry,
                "plinth_plugin_instances_in_use",
                "Plugin instances serving a request now.",
                &plugin_version,
            )?,
            plugin_queued: gauge(
                &registry,
                "plinth_plugin_admission_queued",
                "Requests waiting for a turn under the plugin's max_concurrency.",
                &plugin_version,
            )?,
            plugin_reloads: counter(
                &registry,
                "plinth_plugin_reloads_total",
                "Plugin changes after start-up (a directory change or an admin reload), by \
                 result: swapped or refused.",
                &["plugin", "result"],
            )?,
            rate_limit_decisions: counter(
                &registry,
                "plinth_rate_limit_decisions_total",
                "Rate-limit decisions by class (default, auth) and result (allowed, refused, \
                 unavailable).",
                &["class", "result"],
            )?,
            token_verifications: counter(
                &registry,
                "plinth_token_verifications_total",
                "JWT verifications, by the host and by plugins, by kind (access, refresh) and \
                 result (valid, invalid, expired, wrong_kind, revoked, unavailable).",
                &["kind", "result"],
            )?,
            host_calls: HostCallSeries::new(histogram(
                &registry,
                "plinth_host_call_duration_seconds",
                "Duration of plugins' calls into the host, by capability interface and function \
                 (sql query, kv get, passwords verify, ...).",
                // 10 µs .. ~5 s: an in-process kv read is microseconds.
                prometheus::exponential_buckets(0.000_01, 2.0, 20)?,
                &["interface", "function"],
            )?),
            db_pool_connections: gauge(
                &registry,
                "plinth_db_pool_connections",
                "Serving database connections per data set and pool (serving, transactions; \
                 primary, read), by state: open (idle included) or idle.",
                &["data_set", "pool", "state"],
            )?,
            db_pool_waits: counter(
                &registry,
                "plinth_db_pool_waits_total",
                "Statements that found their pool's connections all in use and waited for one.",
                &["data_set", "pool"],
            )?,
            instance_slots: gauge(
                &registry,
                "plinth_instance_slots",
                "The plugin instance pool's slots (PLUGIN_INSTANCES), by state: total, or in \
                 use (serving a request or holding a parked instance).",
                &["state"],
            )?,
            on_scrape: std::sync::Mutex::default(),
            redis_errors: counter(
                &registry,
                "plinth_redis_errors_total",
                "Redis commands that got no usable answer, by reason (connect, timeout, \
                 connection); each retires the connection it was sent on.",
                &["reason"],
            )?,
            registry,
            http_enabled,
        })
    }

    /// What capability instances time their host calls with.
    pub fn host_calls(&self) -> HostCalls {
        HostCalls(self.http_enabled.then(|| self.host_calls.clone()))
    }

    /// Whether the HTTP families are recorded.
    pub fn http_enabled(&self) -> bool {
        self.http_enabled
    }

    /// Records one served request. `route`: the template, `""` when none matched;
    /// `plugin`: `""` for the host's own endpoints.
    pub fn observe_request(&self, request: ObservedRequest<'_>) {
        if !self.http_enabled {
            return;
        }
        let method = method_label(request.method);
        if let Some(series) = request.series {
            return self.observe_on(series, method, &request);
        }
        if let Some(bytes) = request.request_body_bytes {
            self.request_body_size
                .with_label_values(&[method, request.route])
                .observe(bytes as f64);
        }
        if let Some(bytes) = request.response_body_bytes {
            self.response_body_size
                .with_label_values(&[method, request.route])
                .observe(bytes as f64);
        }
        self.request_duration
            .with_label_values(&[
                method,
                request.route,
                request.status.as_str(),
                request.plugin,
            ])
            .observe(request.duration.as_secs_f64());
    }

    /// [`Self::observe_request`] for a plugin route, through its resolved series: no label
    /// lookup (a hash, a shared lock, a reference count) per request.
    fn observe_on(&self, series: &RouteSeries, method: &str, request: &ObservedRequest<'_>) {
        let [request_body, response_body] = series.bodies.get_or_init(|| {
            [
                self.request_body_size
                    .with_label_values(&[method, request.route]),
                self.response_body_size
                    .with_label_values(&[method, request.route]),
            ]
        });
        if let Some(bytes) = request.request_body_bytes {
            request_body.observe(bytes as f64);
        }
        if let Some(bytes) = request.response_body_bytes {
            response_body.observe(bytes as f64);
        }
        let by_status = series.by_status.get_or_init(|| {
            (0..STATUS_SLOTS)
                .map(|_| std::sync::OnceLock::new())
                .collect()
        });
        let status = request.status.as_u16();
        let duration = request.duration.as_secs_f64();
        let labels = [
            method,
            request.route,
            request.status.as_str(),
            request.plugin,
        ];
        match by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot
                .get_or_init(|| self.request_duration.with_label_values(&labels))
                .observe(duration),
            None => self
                .request_duration
                .with_label_values(&labels)
                .observe(duration),
        }
    }

    /// Runs `sample` before every scrape: for a gauge that reads some state when asked,
    /// instead of costing each request an update.
    pub fn on_scrape(&self, sample: impl Fn() + Send + Sync + 'static) {
        self.on_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(sample));
    }

    /// The exposition, in the text format.
    pub fn encode(&self) -> anyhow::Result<String> {
        for sample in self
            .on_scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            sample();
        }
        let mut text = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(String::from_utf8(text)?)
    }
}

/// Times plugins' host calls into `plinth_host_call_duration_seconds` (when metrics are
/// on) and gives each its span in the trace (when traces are on).
#[derive(Clone, Debug, Default)]
pub struct HostCalls(Option<Arc<HostCallSeries>>);

impl HostCalls {
    /// Measures the call until the returned value is dropped (the call's end).
    pub fn time(&self, interface: &str, function: &str) -> HostCall {
        HostCall {
            _timer: self
                .0
                .as_ref()
                .map(|calls| calls.timer(interface, function)),
            span: crate::telemetry::traces::host_call(interface, function),
        }
    }
}

/// The host functions of `wit/plugin.wit`, each with a slot for its resolved series.
const HOST_FUNCTIONS: [(&str, &str); 21] = [
    ("sql", "query"),
    ("sql", "query-read"),
    ("sql", "execute"),
    ("sql", "begin"),
    ("sql", "transaction.query"),
    ("sql", "transaction.execute"),
    ("sql", "transaction.commit"),
    ("sql", "transaction.rollback"),
    ("kv", "get"),
    ("kv", "set"),
    ("kv", "set-if-absent"),
    ("kv", "delete"),
    ("kv", "increment"),
    ("kv", "compare-and-swap"),
    ("passwords", "hash"),
    ("passwords", "verify"),
    ("tokens", "issue"),
    ("tokens", "issue-refresh"),
    ("tokens", "verify"),
    ("tokens", "revoke"),
    ("tokens", "revoke-subject"),
];

/// `plinth_host_call_duration_seconds`, with the series of each known host function
/// resolved on first use: a label lookup (a hash, a shared lock) per call was 0.6% of
/// `users/me` with metrics on. A function not listed is looked up per call.
#[derive(Debug)]
pub struct HostCallSeries {
    family: HistogramVec,
    resolved: [std::sync::OnceLock<Histogram>; HOST_FUNCTIONS.len()],
}

impl HostCallSeries {
    fn new(family: HistogramVec) -> Arc<Self> {
        Arc::new(Self {
            family,
            resolved: std::array::from_fn(|_| std::sync::OnceLock::new()),
        })
    }

    fn timer(&self, interface: &str, function: &str) -> prometheus::HistogramTimer {
        let labels = [interface, function];
        match HOST_FUNCTIONS
            .iter()
            .position(|&(i, f)| i == interface && f == function)
        {
            Some(slot) => self.resolved[slot]
                .get_or_init(|| self.family.with_label_values(&labels))
                .start_timer(),
            None => self.family.with_label_values(&labels).start_timer(),
        }
    }
}

/// One host call being measured: observed and its span closed when dropped.
#[derive(Debug)]
pub struct HostCall {
    _timer: Option<prometheus::HistogramTimer>,
    span: tracing::Span,
}

impl HostCall {
    /// Adds what a SQL statement does (operation, table; never values) to the call's span.
    pub fn statement(&self, backend: &'static str, statement: &str) {
        crate::telemetry::traces::describe_statement(&self.span, backend, statement);
    }
}

/// Status codes 100..=599 each get a slot in [`RouteSeries`].
const STATUS_SLOTS: usize = 500;

/// A plugin route's series (kept with the route, resolved on first use): its body sizes
/// and its durations by status, for requests of the route's own method.
#[derive(Debug, Default)]
pub struct RouteSeries {
    bodies: std::sync::OnceLock<[Histogram; 2]>,
    by_status: std::sync::OnceLock<Box<[std::sync::OnceLock<Histogram>]>>,
}

/// What [`Metrics::observe_request`] records of one request.
#[derive(Debug)]
pub struct ObservedRequest<'a> {
    /// The matched plugin route's series, when the request has the route's own method.
    pub series: Option<&'a RouteSeries>,
    pub method: &'a http::Method,
    pub route: &'a str,
    pub status: http::StatusCode,
    pub plugin: &'a str,
    pub duration: Duration,
    pub request_body_bytes: Option<u64>,
    pub response_body_bytes: Option<u64>,
}

/// Serves `GET /metrics` on the metrics listener (HTTP/1.1) until the task is dropped.
/// Anything else is 404; the listener carries nothing but the exposition.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // E.g. out of file descriptors: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let service = hyper::service::service_fn(move |request: http::Request<_>| {
            let metrics = metrics.clone();
            async move {
                let mut response = http::Response::new(Full::new(Bytes::new()));
                if request.uri().path() != "/metrics" {
                    *response.status_mut() = http::StatusCode::NOT_FOUND;
                } else {
                    match metrics.encode() {
                        Ok(text) => {
                            *response.body_mut() = Full::new(Bytes::from(text));
                            response.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(CONTENT_TYPE),
                            );
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "encoding the metrics failed");
                            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                    }
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_calls_are_counted_by_interface_and_function_listed_or_not() -> anyhow::Result<()> {
        let metrics = Metrics::new(true)?;
        let calls = metrics.host_calls();
        for _ in 0..3 {
            drop(calls.time("kv", "get"));
        }
        drop(calls.time("sql", "query"));
        drop(calls.time("future", "call"));
        let text = metrics.encode()?;
        let count = |labels: &str| {
            text.lines()
                .find(|line| {
                    line.starts_with("plinth_host_call_duration_seconds_count")
                        && line.contains(labels)
                })
                .and_then(|line| line.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(
            count(r#"function="get",interface="kv""#).as_deref(),
            Some("3")
        );
        assert_eq!(
            count(r#"function="query",interface="sql""#).as_deref(),
            Some("1")
        );
        assert_eq!(
            count(r#"function="call",interface="future""#).as_deref(),
            Some("1")
        );
        Ok(())
    }
}
