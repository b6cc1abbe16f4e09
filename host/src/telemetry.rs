//! Logging setup: `tracing` to stdout, pretty for people or JSON (`LOG_FORMAT=json`).
//!
//! `RUST_LOG` filters as usual (default `info`). Every request runs inside a `request` span
//! carrying its request id, so every line logged for a request, the plugin's own included,
//! names it.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    // `try_init` so that embedding the host (or a test) that already set a subscriber works.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
