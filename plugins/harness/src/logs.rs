//! What a plugin logged, per request.
//!
//! The host turns a plugin's `log` calls (and its stdout and stderr) into `tracing` events
//! with target `plinth::guest` inside the request's span, which carries the request id. A
//! layer installed once per test process keeps those events by request id; a response
//! takes the lines of its own request (its `X-Request-Id`), so tests running side by side
//! in one process never see each other's lines.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// One line a plugin logged while serving a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `TRACE` … `ERROR`.
    pub level: tracing::Level,
    /// The plugin's name, as its manifest gives it.
    pub plugin: String,
    pub message: String,
    /// The event's other fields (e.g. `stream = "stderr"` for what it printed).
    pub fields: BTreeMap<String, String>,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.level, self.plugin, self.message)
    }
}

/// Lines by request id, until a response takes them.
static LINES: OnceLock<Mutex<HashMap<String, Vec<LogLine>>>> = OnceLock::new();
/// Whether this process's subscriber is ours (another one may have been installed first).
static CAPTURING: OnceLock<bool> = OnceLock::new();

/// Installs the capturing subscriber once per process: plugin lines are kept; the host's
/// own lines go to the test's output at the level `RUST_LOG` says (default `warn`).
pub(crate) fn install() -> bool {
    *CAPTURING.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        tracing_subscriber::registry()
            .with(Capture)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter),
            )
            .try_init()
            .is_ok()
    })
}

/// The lines logged under `request_id`, taken out of the store.
pub(crate) fn take(request_id: &str) -> Vec<LogLine> {
    LINES
        .get()
        .and_then(|lines| lines.lock().ok()?.remove(request_id))
        .unwrap_or_default()
}

struct Capture;

/// The request id of a span, kept in its extensions.
struct RequestId(String);

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(request_id), Some(span)) = (fields.take("request_id"), ctx.span(id)) {
            span.extensions_mut().insert(RequestId(request_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "plinth::guest" {
            return;
        }
        let Some(request_id) = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<RequestId>().map(|r| r.0.clone()))
        }) else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = LogLine {
            level: *event.metadata().level(),
            plugin: fields.take("plugin").unwrap_or_default(),
            message: fields.take("message").unwrap_or_default(),
            fields: fields.0,
        };
        if let Ok(mut lines) = LINES.get_or_init(Default::default).lock() {
            lines.entry(request_id).or_default().push(line);
        }
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Fields {
    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
