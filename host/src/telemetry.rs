//! Logging setup: `tracing` to stdout, pretty for people or JSON (`LOG_FORMAT=json`).
//!
//! `RUST_LOG` filters as usual (default `info`). Every request runs inside a `request` span
//! carrying its request id, so every line logged for a request, the plugin's own included,
//! names it. JSON lines are encoded by [`json`]: each line once, the span's fields copied
//! as they were encoded when the span began. Lines are written by a dedicated thread so a
//! slow stdout never stalls a request; the buffer blocks rather than drops when full
//! (access lines are not optional).

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub mod json;

use json::{JsonLines, JsonSpanFields};

/// Flushes buffered log lines when dropped: keep it alive until the process exits.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard(#[allow(dead_code, reason = "held for its Drop")] Option<WorkerGuard>);

pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("plinth-log")
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    // `try_init` so that embedding the host where a subscriber is already set works.
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .try_init(),
    };
    LogGuard(installed.is_ok().then_some(guard))
}
