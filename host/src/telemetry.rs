//! Logging setup: `tracing` to stdout, pretty for people or JSON (`LOG_FORMAT=json`), and
//! traces over OTLP when an OpenTelemetry endpoint is configured ([`traces`]).
//!
//! `RUST_LOG` filters as usual (default `info`). Every request runs inside a `request` span
//! carrying its request id, so every line logged for a request, the plugin's own included,
//! names it. JSON lines are encoded by [`json`]: each line once, the span's fields copied
//! as they were encoded when the span began.
//!
//! Lines are written by a dedicated thread ([`writer`]) from a buffer bounded in bytes
//! ([`LOG_BUFFER_BYTES`]), in batches, so a slow stdout does not slow requests down until
//! that buffer is full. Past it, lines are treated by who caused them:
//!
//! - the host's own lines, the access line above all, are never dropped: a request whose
//!   line finds no room waits for it (access lines are not optional);
//! - plugin lines (target `plinth::guest`: their log calls, stdout and stderr) are dropped
//!   once the buffer holds [`GUEST_SHARE_BYTES`], which leaves the rest to host lines, so
//!   a plugin logging in a loop while stdout is slow cannot stall the serving workers.
//!   Dropped lines are counted, and once the output catches up a `plinth::log` warning
//!   says how many ("dropped 1234 plugin log lines: ..."), at most once a second.

use std::io::IsTerminal;

use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

pub mod json;
pub mod metrics;
pub mod traces;
pub mod writer;

use json::{JsonLines, JsonSpanFields};
use writer::{Bounds, LogWriter, WriterGuard};

/// Bytes of log lines the buffer holds before host lines wait for room.
pub const LOG_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Bytes in the buffer beyond which plugin lines are dropped.
pub const GUEST_SHARE_BYTES: usize = LOG_BUFFER_BYTES / 2;

/// Writes every buffered log line, and exports every queued span, when dropped: keep it
/// alive until the process exits.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    // Dropped in this order: the last spans are exported (and any failure logged) before
    // the writer's last lines are written.
    _traces: Option<traces::Exporter>,
    _writer: Option<WriterGuard>,
}

/// Installs the subscriber, and the trace exporter when `traces` is set.
pub fn init(
    format: LogFormat,
    traces: Option<&traces::OtlpExport>,
    host_id: &str,
) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let bounds = Bounds {
        total: LOG_BUFFER_BYTES,
        guest: GUEST_SHARE_BYTES,
    };
    let (writer, guard) = LogWriter::spawn(std::io::stdout(), bounds, Box::new(report_drops))?;
    let exporter = traces
        .map(|export| traces::Exporter::start(export, host_id))
        .transpose()?;
    // `try_init` so that embedding the host where a subscriber is already set works.
    let installed = match &exporter {
        // Without traces, exactly the subscriber the host had before traces existed: the
        // filter applies to everything (spans no line would name are never created) and
        // the line layer is not boxed (measured: a boxed one cost /hello/x a few percent).
        None => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(std::io::stdout().is_terminal());
            match format {
                LogFormat::Pretty => builder.try_init().is_ok(),
                LogFormat::Json => builder
                    .fmt_fields(JsonSpanFields)
                    .event_format(JsonLines)
                    .try_init()
                    .is_ok(),
            }
        }
        // Each layer its own filter: the trace's spans stay out of log lines, and the
        // log level does not decide what is traced.
        Some(exporter) => {
            let not_traced =
                tracing_subscriber::filter::filter_fn(|meta| meta.target() != traces::TARGET);
            tracing_subscriber::registry()
                .with(lines(format, writer).with_filter(filter.and(not_traced)))
                .with(exporter.layer())
                .try_init()
                .is_ok()
        }
    };
    Ok(LogGuard {
        _traces: exporter.filter(|_| installed),
        _writer: installed.then_some(guard),
    })
}

/// The layer writing log lines, in `format`.
fn lines<S>(format: LogFormat, writer: LogWriter) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Pretty => lines.boxed(),
        LogFormat::Json => lines
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .boxed(),
    }
}

/// Said by the writer thread once it caught up after dropping plugin lines.
fn report_drops(dropped: u64) {
    tracing::warn!(
        target: "plinth::log",
        dropped,
        "dropped {dropped} plugin log lines: the log output is not keeping up"
    );
}
