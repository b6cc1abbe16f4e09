//! A guest's stdout and stderr, turned into log lines tagged with plugin and request id.
//!
//! A plugin has no terminal: what it prints (a `println!`, a panic message) is split into
//! lines and logged under the target `plinth::guest`, each line with the plugin's name, the
//! request's id and the stream. A plugin cannot flood the log: lines are cut at
//! [`MAX_LINE_BYTES`] and a request's output stops being logged after
//! [`MAX_BYTES_PER_REQUEST`] (one warning says so); the guest's writes still succeed, so
//! chatty code is not turned into failing code.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged as is; the rest of a longer line is dropped.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// Output logged per request and stream; the rest is counted, not logged.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// Which of the guest's streams a line came from.
#[derive(Debug, Clone, Copy)]
pub enum GuestStream {
    Stdout,
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One stream of one request. Clones (WASI asks for a new handle per `get-stdout`) share
/// the line buffer, so lines written through several handles stay whole.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    lines: Arc<Mutex<LineBuffer>>,
}

#[derive(Debug)]
struct LineBuffer {
    plugin: Arc<str>,
    request_id: Arc<str>,
    stream: GuestStream,
    pending: Vec<u8>,
    logged_bytes: usize,
    dropped_bytes: usize,
}

impl GuestOutput {
    pub fn new(plugin: Arc<str>, request_id: Arc<str>, stream: GuestStream) -> Self {
        Self {
            lines: Arc::new(Mutex::new(LineBuffer {
                plugin,
                request_id,
                stream,
                pending: Vec::new(),
                logged_bytes: 0,
                dropped_bytes: 0,
            })),
        }
    }

    fn accept(&self, bytes: &[u8]) {
        self.buffer().accept(bytes);
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, LineBuffer> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request is over but the instance lives on (`limits.reuse_instance_for`): its
    /// output is finished as at the end of an instance, and the budget starts afresh.
    pub fn end_request(&self) {
        let mut buffer = self.buffer();
        buffer.finish();
        buffer.logged_bytes = 0;
        buffer.dropped_bytes = 0;
    }

    /// The next lines are tagged with `request_id`.
    pub fn start_request(&self, request_id: Arc<str>) {
        self.buffer().request_id = request_id;
    }
}

impl LineBuffer {
    fn accept(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.push(&bytes[..end]);
                    self.emit();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.push(bytes);
                    bytes = &[];
                }
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.dropped_bytes += bytes.len().saturating_sub(room);
    }

    fn emit(&mut self) {
        let line = std::mem::take(&mut self.pending);
        if self.logged_bytes >= MAX_BYTES_PER_REQUEST {
            self.dropped_bytes += line.len();
            return;
        }
        self.logged_bytes += line.len();
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        tracing::info!(
            target: "plinth::guest",
            plugin = %self.plugin,
            request_id = %self.request_id,
            stream = self.stream.name(),
            "{line}"
        );
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        self.finish();
    }
}

impl LineBuffer {
    /// The request is over: log an unterminated last line, and say what was not logged.
    fn finish(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
        if self.dropped_bytes > 0 {
            tracing::warn!(
                target: "plinth::guest",
                plugin = %self.plugin,
                request_id = %self.request_id,
                stream = self.stream.name(),
                dropped_bytes = self.dropped_bytes,
                "guest output beyond the per-request log limit was not logged"
            );
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: what exceeds the log limit is counted and dropped, not refused.
        Ok(MAX_LINE_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> LineBuffer {
        LineBuffer {
            plugin: Arc::from("p"),
            request_id: Arc::from("r"),
            stream: GuestStream::Stdout,
            pending: Vec::new(),
            logged_bytes: 0,
            dropped_bytes: 0,
        }
    }

    #[test]
    fn lines_split_across_writes_are_logged_whole() {
        let mut lines = buffer();
        lines.accept(b"hel");
        lines.accept(b"lo\nwor");
        assert_eq!(lines.logged_bytes, 5);
        assert_eq!(lines.pending, b"wor");
        lines.accept(b"ld\n");
        assert_eq!(lines.logged_bytes, 10);
        assert!(lines.pending.is_empty());
    }

    #[test]
    fn long_lines_and_chatty_requests_are_cut() {
        let mut lines = buffer();
        lines.accept(&vec![b'x'; MAX_LINE_BYTES + 10]);
        lines.accept(b"\n");
        assert_eq!(lines.logged_bytes, MAX_LINE_BYTES);
        assert_eq!(lines.dropped_bytes, 10);
        // 16 full lines reach the per-request limit; the next 5 are dropped.
        let limit_in_lines = MAX_BYTES_PER_REQUEST / MAX_LINE_BYTES;
        for _ in 0..limit_in_lines + 5 {
            lines.accept(&vec![b'y'; MAX_LINE_BYTES]);
            lines.accept(b"\n");
        }
        assert_eq!(lines.logged_bytes, MAX_BYTES_PER_REQUEST);
        assert_eq!(lines.dropped_bytes, 10 + 6 * MAX_LINE_BYTES);
    }
}
