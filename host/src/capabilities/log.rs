//! `log`: guest log lines become host `tracing` events.
//!
//! Events are emitted inside the request's span, so they carry its request id, and they
//! name the plugin. Messages are truncated so a chatty plugin cannot flood the log.

use crate::bindings::plinth::plugin::log::{Host, Level};
use crate::plugins::runtime::InstanceState;

pub const INTERFACE: &str = "log";

/// Longest message kept from one guest log call.
const MAX_MESSAGE_BYTES: usize = 4096;

impl Host for InstanceState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        let plugin = &*self.plugin_name;
        match level {
            Level::Trace => tracing::trace!(target: "plinth::guest", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "plinth::guest", plugin, "{message}"),
            Level::Info => tracing::info!(target: "plinth::guest", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "plinth::guest", plugin, "{message}"),
            Level::Error => tracing::error!(target: "plinth::guest", plugin, "{message}"),
        }
        Ok(())
    }
}

fn truncate(message: &str, max: usize) -> &str {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(super::truncate("ñañaña", 4), "ña");
        assert_eq!(super::truncate("ñañaña", 1), "");
        assert_eq!(super::truncate("short", 100), "short");
    }
}
