//! `log`: guest log lines become host `tracing` events.
//!
//! Events are emitted inside the request's span, so they carry its request id, and they
//! name the plugin. A request's messages are bounded like its stdout and stderr: each is
//! cut at 4 KiB, and past 64 KiB in all the rest are dropped and counted in one warning,
//! so a plugin logging in a loop cannot flood the log or stall the writer.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{CapabilityView, Descriptor};
use crate::bindings::plinth::plugin::log::{self as wit, Level};

/// Longest message kept from one guest log call.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Bytes of messages one request may log.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub fn descriptor<T: CapabilityView>() -> Descriptor<T> {
    Descriptor {
        interface: "log",
        // Every plugin may log.
        granted: |_| true,
        link: |linker: &mut Linker<T>| {
            wit::add_to_linker::<T, HasSelf<LogInstance>>(linker, |state| {
                &mut state.capabilities().log
            })
        },
    }
}

#[derive(Debug, Clone)]
pub struct PluginLog {
    plugin: Arc<str>,
}

impl PluginLog {
    pub fn new(plugin: Arc<str>) -> Self {
        Self { plugin }
    }

    pub fn instance(&self, request_id: Arc<str>) -> LogInstance {
        LogInstance {
            plugin: self.plugin.clone(),
            request_id,
            budget: MAX_REQUEST_BYTES,
            dropped: 0,
        }
    }
}

/// A request's view of `log`: what is left of its budget.
#[derive(Debug)]
pub struct LogInstance {
    plugin: Arc<str>,
    request_id: Arc<str>,
    budget: usize,
    dropped: u64,
}

impl wit::Host for LogInstance {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = truncate(&message, MAX_MESSAGE_BYTES.min(self.budget));
        if message.is_empty() {
            self.dropped += 1;
            return Ok(());
        }
        self.budget -= message.len();
        let plugin = &*self.plugin;
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

impl Drop for LogInstance {
    fn drop(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                target: "plinth::guest",
                plugin = &*self.plugin,
                request_id = &*self.request_id,
                dropped = self.dropped,
                "the plugin's log budget for this request ({MAX_REQUEST_BYTES} bytes) ran out; \
                 later messages were dropped"
            );
        }
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
    use super::*;
    use crate::bindings::plinth::plugin::log::Host as _;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(super::truncate("ñañaña", 4), "ña");
        assert_eq!(super::truncate("ñañaña", 1), "");
        assert_eq!(super::truncate("short", 100), "short");
    }

    #[tokio::test]
    async fn a_request_logs_at_most_its_budget() -> wasmtime::Result<()> {
        let mut log = PluginLog::new(Arc::from("p")).instance(Arc::from("r"));
        let line = "x".repeat(1000);
        for _ in 0..100 {
            log.log(Level::Info, line.clone()).await?;
        }
        // 65 whole messages, then the last 536 bytes of budget, then nothing.
        assert_eq!(log.budget, 0);
        assert_eq!(log.dropped, 34);
        Ok(())
    }
}
