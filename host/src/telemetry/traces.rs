//! Traces exported over OTLP/HTTP, when an OpenTelemetry endpoint is configured.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set; then the standard variables apply (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, ...). Off, no
//! span below is created: each call site checks [`enabled`] first and takes
//! [`tracing::Span::none`], so the request path allocates nothing for tracing. On, a
//! request the sampler leaves out gets its server span only (for its trace id).
//!
//! One request's trace:
//!
//! ```text
//! GET /api/v1/users/me            server span: child of an incoming `traceparent`
//! ├── route match
//! ├── authenticate                bearer token and revocation state
//! ├── admission wait              the plugin's concurrency limit (and heavy lanes)
//! ├── instantiate                 a fresh instance (absent for a reused one)
//! └── guest call
//!     ├── kv.get                  one span per host call, by WIT interface and function
//!     └── sql.query               SQL: operation and table (db.*), never values
//! ```
//!
//! These spans are `tracing` spans with the target [`TARGET`]: only the OpenTelemetry
//! layer sees them (the log layer filters them out), so log lines keep naming the
//! `request` span and its `request_id`, and gain its `trace_id`. The server span is a
//! sibling of that `request` span, not the same span: its OpenTelemetry fields
//! (`otel.kind`, ...) never reach a log line.
//!
//! A plugin receives a `traceparent` naming the server span (the client's is replaced),
//! so whatever a plugin logs or passes on belongs to this trace.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Status, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of every span exported as part of a trace.
pub const TARGET: &str = "plinth::otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (set once, when the exporter is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

tokio::task_local! {
    /// Whether the request being served is sampled: set around the request's work, so
    /// the spans below its server span are made only when they will be exported.
    static SAMPLED: bool;
}

/// Whether the current request's trace is exported (false outside a traced request).
pub fn sampled() -> bool {
    enabled() && SAMPLED.try_with(|sampled| *sampled).unwrap_or(false)
}

/// Runs `work` (a request's) with its sampling decision known to [`trace_span!`].
pub async fn within<F: std::future::Future>(server: &Span, work: F) -> F::Output {
    if !enabled() || server.is_none() {
        return work.await;
    }
    let sampled = server.context().span().span_context().is_sampled();
    SAMPLED.scope(sampled, work).await
}

/// A span of the trace (target [`TARGET`]) when the current request is traced and
/// sampled, otherwise [`Span::none`] without touching the subscriber: an unsampled request
/// costs its server span only.
macro_rules! trace_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::telemetry::traces::sampled() {
            tracing::info_span!(target: "plinth::otel", $name $(, $($fields)*)?)
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use trace_span;

/// Where and how spans are exported: read from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExport {
    /// The full URL spans are posted to (`.../v1/traces`).
    pub endpoint: String,
}

impl OtlpExport {
    /// `None` when no endpoint is set, or the SDK or the trace exporter is turned off.
    /// Refuses what this build cannot do (gRPC, JSON, TLS) instead of exporting nothing.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => bail!("OTEL_TRACES_EXPORTER={other} is not supported: use otlp or none"),
        }
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            // The per-signal variable is the URL itself; the general one is a base URL.
            (Some(traces), _) => traces.trim().to_owned(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        // The per-signal variable wins over the general one.
        let protocol = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|key| get(key).map(|value| (key, value)));
        if let Some((key, protocol)) = protocol
            && protocol.trim() != "http/protobuf"
        {
            bail!(
                "{key}={protocol} is not supported: Plinth exports OTLP over HTTP with \
                 protobuf (http/protobuf, usually port 4318)"
            );
        }
        let uri: http::Uri = endpoint
            .parse()
            .with_context(|| format!("the OTLP endpoint {endpoint:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "the OTLP endpoint {endpoint} uses https, which this build does not speak: \
                 export to an OpenTelemetry Collector next to the host over http"
            ),
            _ => bail!("the OTLP endpoint {endpoint:?} must be an http:// URL"),
        }
        Ok(Some(Self { endpoint }))
    }
}

/// The exporter's provider; flushes spans still queued when shut down.
#[derive(Debug)]
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    /// Starts exporting (a batch processor on its own thread) and turns [`enabled`] on.
    pub fn start(export: &OtlpExport, host_id: &str) -> anyhow::Result<Self> {
        use opentelemetry_otlp::WithExportConfig as _;
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.endpoint)
            .build()
            .context("cannot set up the OTLP span exporter")?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource(host_id))
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self(provider))
    }

    /// The layer that turns [`TARGET`] spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.0.tracer("plinth");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    meta.is_span() && meta.target() == TARGET
                })
                // Its spans are INFO: without the hint the global maximum would become
                // TRACE, and every `log::trace!` of wasmtime's would be formatted to be
                // filtered out.
                .with_max_level_hint(tracing::level_filters::LevelFilter::INFO),
            )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(err) = self.0.shutdown() {
            tracing::warn!(error = %err, "exporting the last spans failed");
        }
    }
}

/// `service.name` is `plinth` unless the standard variables name it; the version and
/// this host's fleet name are added.
fn resource(host_id: &str) -> Resource {
    let from_env = Resource::builder().build();
    let named = from_env
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", host_id.to_owned()),
    ]);
    if !named {
        builder = builder.with_service_name("plinth");
    }
    builder.build()
}

/// The server span of a request, child of the client's `traceparent` when it sent a valid
/// one, and records its trace id on the log span `request` (so every line carries it).
/// Named `{method}` until [`finish`] knows the route.
pub fn server_span(log_span: &Span, method: &http::Method, headers: &http::HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "request",
        otel.kind = "server",
        otel.name = %method,
        http.request.method = %method,
    );
    let incoming =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if incoming.span().span_context().is_valid() {
        let _ = span.set_parent(incoming);
    }
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    log_span.record("trace_id", tracing::field::display(trace_id));
    span
}

/// What the server span learns once the request is answered.
#[derive(Debug)]
pub struct Answered<'a> {
    pub method: &'a http::Method,
    /// The route template (or host endpoint); `None`: no route matched.
    pub route: Option<&'a str>,
    /// The plugin and version that served it.
    pub plugin: Option<(&'a str, &'a str)>,
    pub status: http::StatusCode,
}

/// Ends the server span's story: named `{method} {route}` once the route is known, the
/// route, plugin and status code as attributes, and an error status for a 5xx.
pub fn finish(server: &Span, answered: Answered<'_>) {
    if server.is_none() {
        return;
    }
    let context = server.context();
    if !context.span().span_context().is_sampled() {
        return; // not exported: nothing to say
    }
    if let Some(route) = answered.route {
        server.set_attribute("http.route", route.to_owned());
        context
            .span()
            .update_name(format!("{} {route}", answered.method));
    }
    if let Some((plugin, version)) = answered.plugin {
        server.set_attribute("plinth.plugin", plugin.to_owned());
        server.set_attribute("plinth.plugin.version", version.to_owned());
    }
    let status = answered.status;
    server.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        server.set_status(Status::error(status.as_str().to_owned()));
    }
}

/// Replaces a request's `traceparent`/`tracestate` with the server span's, for the plugin.
pub fn propagate(server: &Span, headers: &mut Vec<(String, String)>) {
    if !enabled() || server.is_none() {
        return;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&server.context(), &mut carrier);
    headers.retain(|(name, _)| name != "traceparent" && name != "tracestate");
    headers.extend(carrier);
}

/// The span of one host call (`sql.query`, `kv.get`, ...), child of the guest call.
pub fn host_call(interface: &str, function: &str) -> Span {
    trace_span!(
        "host call",
        otel.name = %format_args!("{interface}.{function}"),
        plinth.host_call.interface = interface,
        plinth.host_call.function = function,
    )
}

/// Adds what a SQL statement does to its host-call span: the operation (its first
/// keyword) and the table it names, never a value.
pub fn describe_statement(span: &Span, backend: &'static str, statement: &str) {
    if span.is_none() {
        return;
    }
    span.set_attribute("db.system.name", backend);
    let (operation, table) = statement_summary(statement);
    if let Some(operation) = operation {
        span.set_attribute("db.operation.name", operation);
    }
    if let Some(table) = table {
        span.set_attribute("db.collection.name", table);
    }
}

/// Statement kinds reported by name; any other first word is reported as `OTHER` (a
/// plugin passing text through as SQL must not export its first word).
const OPERATIONS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "VALUES",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "EXPLAIN",
    "PRAGMA",
    "REPLACE",
    "SET",
    "SHOW",
];

/// A statement's operation (its first keyword, from [`OPERATIONS`], else `OTHER`) and the
/// first table it names after `FROM`, `INTO`, `UPDATE` or `JOIN`.
///
/// What could make a value look like a word gives no table at all: a string literal or
/// quoted identifier left open, PostgreSQL's escape strings and dollar quoting, block
/// comments. A table must be a plain identifier (`name` or `schema.name`, not starting
/// with a digit).
pub fn statement_summary(statement: &str) -> (Option<String>, Option<String>) {
    let Some(words) = sql_words(statement) else {
        return (Some("OTHER".to_owned()), None);
    };
    let operation = words.first().map(|word| {
        OPERATIONS
            .iter()
            .find(|op| word.eq_ignore_ascii_case(op))
            .map_or_else(|| "OTHER".to_owned(), |op| (*op).to_owned())
    });
    let table = words
        .windows(2)
        .find(|pair| {
            ["FROM", "INTO", "UPDATE", "JOIN"]
                .iter()
                .any(|k| pair[0].eq_ignore_ascii_case(k))
        })
        .map(|pair| pair[1])
        .filter(|t| is_identifier(t))
        .map(str::to_owned);
    (operation, table)
}

/// `name` or `schema.name`, each part `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(text: &str) -> bool {
    let mut parts = 0;
    for part in text.split('.') {
        parts += 1;
        let mut bytes = part.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return false;
        }
    }
    parts <= 2
}

/// The tokens of a statement: runs of identifier characters, a double-quoted identifier's
/// content, and `""` for anything else but white space (a literal, a parenthesis, an
/// operator), so that a keyword's neighbour is really the next token. `None` when the
/// statement uses anything this reading cannot be sure of (see [`statement_summary`]).
fn sql_words(statement: &str) -> Option<Vec<&str>> {
    let bytes = statement.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < bytes.len() && words.len() < 256 {
        match bytes[i] {
            b'\'' => {
                // `E'..\'..'` escape strings can hide a quote: give up on a backslash.
                let end = closing(bytes, i + 1, b'\'')?;
                if bytes[i + 1..end].contains(&b'\\') {
                    return None;
                }
                words.push("");
                i = end + 1;
            }
            b'"' => {
                let end = closing(bytes, i + 1, b'"')?;
                words.push(statement.get(i + 1..end)?);
                i = end + 1;
            }
            // Dollar quoting (`$$..$$`, `$tag$..$tag$`); `$1` is a parameter.
            b'$' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = closing(bytes, i, b'\n').map_or(bytes.len(), |end| end + 1);
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if is_word_byte(c) => {
                let start = i;
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                words.push(statement.get(start..i)?);
            }
            _ => {
                words.push("");
                i += 1;
            }
        }
    }
    Some(words)
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.')
}

/// The index of the next `end` byte at or after `from`; `None` when it never comes.
fn closing(bytes: &[u8], from: usize, end: u8) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b == end)
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_summarised_by_operation_and_table_only() {
        let cases = [
            (
                "SELECT id, email FROM users WHERE id = $1",
                "SELECT",
                Some("users"),
            ),
            (
                "insert into plugin_auth.sessions (jti) values (?)",
                "INSERT",
                Some("plugin_auth.sessions"),
            ),
            (
                "UPDATE \"users\" SET name = 'FROM secret' WHERE id = $1",
                "UPDATE",
                Some("users"),
            ),
            (
                "DELETE FROM notes WHERE body = 'x'",
                "DELETE",
                Some("notes"),
            ),
            ("SELECT 'FROM x' AS y", "SELECT", None),
            ("-- FROM comment\nSELECT 1", "SELECT", None),
            ("BEGIN", "BEGIN", None),
        ];
        for (statement, operation, table) in cases {
            let (op, t) = statement_summary(statement);
            assert_eq!(op.as_deref(), Some(operation), "{statement}");
            assert_eq!(t.as_deref(), table, "{statement}");
        }
    }

    #[test]
    fn a_literal_never_becomes_a_table() {
        for statement in [
            "SELECT * FROM 'secret value'",
            "SELECT * FROM (SELECT 1)",
            "SELECT substring(x FROM 5) FROM t",
            "SELECT 1 WHERE a IS DISTINCT FROM 4111111111111111",
            "/* it's */ SELECT 1 WHERE a=' FROM hunter2'",
            "SELECT E'it\\'s FROM hunter2' FROM t",
            "SELECT $$ FROM hunter2 $$",
            "SELECT $tag$ FROM hunter2 $tag$",
            "SELECT 1 FROM \"unclosed é",
            "SELECT 'unclosed FROM hunter2",
        ] {
            let (_, table) = statement_summary(statement);
            assert!(
                table.is_none() || table.as_deref() == Some("t"),
                "{statement}: {table:?}"
            );
            assert_ne!(table.as_deref(), Some("hunter2"), "{statement}");
        }
    }

    #[test]
    fn odd_input_never_panics_and_unknown_operations_are_other() {
        for statement in [
            "\"é",
            "'é",
            "\"",
            "'",
            "$",
            "--",
            "é FROM é",
            "",
            "SELECT \"é",
        ] {
            let _ = statement_summary(statement);
        }
        let (operation, _) = statement_summary("hunter2 FROM users");
        assert_eq!(operation.as_deref(), Some("OTHER"));
    }

    #[test]
    fn the_standard_variables_turn_export_on_and_say_what_is_refused() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(matches!(OtlpExport::from_lookup(env(&[])), Ok(None)));
        let on = OtlpExport::from_lookup(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]));
        assert_eq!(
            on.ok().flatten().map(|e| e.endpoint).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        let exact = OtlpExport::from_lookup(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/custom",
        )]));
        assert_eq!(
            exact.ok().flatten().map(|e| e.endpoint).as_deref(),
            Some("http://c:4318/custom")
        );
        let off = OtlpExport::from_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]));
        assert!(matches!(off, Ok(None)));
        for refused in [
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ][..],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ][..],
        ] {
            let pairs: Vec<(&str, &str)> = refused.to_vec();
            let result = OtlpExport::from_lookup(|key| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            });
            assert!(result.is_err(), "{pairs:?} should be refused");
        }
    }
}
