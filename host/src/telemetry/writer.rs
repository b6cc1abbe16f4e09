//! The log writer: lines go into one shared buffer, bounded in bytes, and a dedicated
//! thread writes what has gathered to the output.
//!
//! - The thread is woken only when the buffer goes from empty to non-empty while it waits,
//!   and it writes everything gathered since its last write with one `write_all`; after a
//!   write it lets lines gather for a moment (a millisecond) before it looks again, so a busy
//!   host makes one write per millisecond or so, and no wake-up per line.
//! - Plugin lines (target `plinth::guest`) are accepted only while the buffer holds less
//!   than the plugins' share of the bound; beyond it they are dropped and counted, so a
//!   plugin logging in a loop while the output is slow never makes a request wait.
//! - Every other line, the access lines above all, is never dropped: beyond the bound it
//!   waits for the thread to make room. Memory stays bounded either way.
//! - Once the buffer is back under the plugins' share, the thread reports what was
//!   dropped (through a callback that logs a warning), at most once a second.
//! - [`WriterGuard`] closes the writer: the thread writes everything left, then stops.

use std::cell::Cell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// The target of lines that plugins cause (their log calls and their stdout/stderr).
pub const GUEST_TARGET: &str = "plinth::guest";

/// At most one drop report per this long.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How long the thread lets lines gather after a write before it looks again. While it
/// does, lines are only appended (nobody wakes it), so under load a write carries this
/// long's worth of lines; a quiet host's line wakes an idle thread at once.
const GATHER: Duration = Duration::from_millis(1);

/// A batch buffer this large is let go of after it was written, not kept for reuse.
const KEEP_CAPACITY: usize = 256 * 1024;

/// How much the buffer may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Bytes waiting or being written, beyond which host lines wait.
    pub total: usize,
    /// Bytes beyond which plugin lines are dropped; less than `total`, so that host lines
    /// find room while plugins flood.
    pub guest: usize,
}

/// Called on the writer thread with the number of plugin lines dropped since the last call.
pub type Report = Box<dyn Fn(u64) + Send>;

thread_local! {
    /// Set on the writer thread: its own lines (the drop report) never wait for room.
    static ON_WRITER_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// The `MakeWriter` for the fmt layer: cheap to clone, all clones share one buffer.
#[derive(Debug, Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes every buffered line and stops the thread.
#[derive(Debug)]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for lines.
    lines: Condvar,
    /// Host lines wait here for room.
    room: Condvar,
    bounds: Bounds,
}

#[derive(Debug, Default)]
struct State {
    /// Lines not yet taken by the writer thread.
    buffer: Vec<u8>,
    /// Bytes the writer thread took and is writing.
    in_flight: usize,
    /// The writer thread is waiting for lines (so the buffer is empty).
    idle: bool,
    /// Host lines waiting for room.
    waiting: usize,
    /// Plugin lines dropped and not reported yet.
    dropped: u64,
    /// The guard was dropped: write what is left, then stop.
    closing: bool,
    /// The thread has stopped; lines are discarded.
    closed: bool,
}

impl State {
    fn queued(&self) -> usize {
        self.buffer.len() + self.in_flight
    }
}

impl LogWriter {
    /// Starts the writer thread, writing to `output`.
    pub fn spawn(
        output: impl Write + Send + 'static,
        bounds: Bounds,
        report: Report,
    ) -> std::io::Result<(Self, WriterGuard)> {
        debug_assert!(bounds.guest < bounds.total);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
            bounds,
        });
        let thread = std::thread::Builder::new()
            .name("plinth-log".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run(output, report)
            })?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            WriterGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Plugin lines dropped and not reported yet (for tests).
    #[cfg(test)]
    fn unreported_drops(&self) -> u64 {
        self.shared.lock().dropped
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            shared: &self.shared,
            guest: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter<'a> {
        LineWriter {
            shared: &self.shared,
            guest: is_guest(meta.target()),
        }
    }
}

fn is_guest(target: &str) -> bool {
    target
        .strip_prefix(GUEST_TARGET)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Takes one formatted line (the fmt layer writes each line with one `write_all`).
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
    guest: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.push(line, self.guest);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (plain appends).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: &[u8], guest: bool) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if guest {
            if state.queued() + line.len() > self.bounds.guest {
                state.dropped += 1;
                return;
            }
        } else if !ON_WRITER_THREAD.get() {
            // Wait for room; a line longer than the whole bound goes in alone.
            while state.queued() > 0
                && state.queued() + line.len() > self.bounds.total
                && !state.closing
            {
                state.waiting += 1;
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
                state.waiting -= 1;
            }
        }
        state.buffer.extend_from_slice(line);
        if state.idle {
            // The buffer was empty: this is the one line that wakes the thread.
            state.idle = false;
            drop(state);
            self.lines.notify_one();
        }
    }

    /// The writer thread.
    fn run(&self, mut output: impl Write, report: Report) {
        ON_WRITER_THREAD.set(true);
        let mut batch = Vec::new();
        let mut last_report: Option<Instant> = None;
        let mut failed = false;
        loop {
            let mut state = self.lock();
            let next = loop {
                if !state.buffer.is_empty() {
                    break Next::Write;
                }
                // Idle, so caught up: drops are reported when due, and at the end.
                if state.dropped > 0 && (state.closing || report_due(last_report).is_zero()) {
                    break Next::Report;
                }
                if state.closing {
                    break Next::Stop;
                }
                state.idle = true;
                state = if state.dropped > 0 {
                    let wait = report_due(last_report);
                    let waited = self.lines.wait_timeout(state, wait);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                } else {
                    self.lines.wait(state).unwrap_or_else(|e| e.into_inner())
                };
                state.idle = false;
            };
            match next {
                Next::Write => {}
                Next::Report => {
                    let dropped = std::mem::take(&mut state.dropped);
                    drop(state);
                    report(dropped);
                    last_report = Some(Instant::now());
                    continue;
                }
                Next::Stop => {
                    state.closed = true;
                    drop(state);
                    self.room.notify_all();
                    return;
                }
            }
            std::mem::swap(&mut state.buffer, &mut batch);
            state.in_flight = batch.len();
            drop(state);

            if let Err(err) = output.write_all(&batch).and_then(|()| output.flush()) {
                // Nowhere to say it but stderr, once; lines keep being taken (and lost) so
                // that nothing waits on a dead output.
                if !failed {
                    eprintln!("plinth: cannot write the log: {err}");
                    failed = true;
                }
            }
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }

            let mut state = self.lock();
            state.in_flight = 0;
            if state.waiting > 0 {
                self.room.notify_all();
            }
            // Busy but caught up (plugin lines are accepted again): report now if due.
            let report_now = state.dropped > 0
                && state.queued() < self.bounds.guest
                && report_due(last_report).is_zero();
            // Unless the buffer is filling up, let lines gather before the next write: a
            // busy host's lines then find the thread awake (no wake-up to pay for) and
            // go out together.
            let gather = !state.closing && state.waiting == 0 && state.queued() < self.bounds.guest;
            let dropped = if report_now {
                std::mem::take(&mut state.dropped)
            } else {
                0
            };
            drop(state);
            if dropped > 0 {
                report(dropped);
                last_report = Some(Instant::now());
            }
            if gather {
                std::thread::sleep(GATHER);
            }
        }
    }
}

/// What the writer thread does next.
enum Next {
    Write,
    Report,
    Stop,
}

/// How long until a drop report may be made.
fn report_due(last_report: Option<Instant>) -> Duration {
    last_report.map_or(Duration::ZERO, |at| {
        REPORT_INTERVAL.saturating_sub(at.elapsed())
    })
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::telemetry::json::{JsonLines, JsonSpanFields};

    /// An output that the test can block, recording what reaches it and in how many writes.
    #[derive(Debug, Clone, Default)]
    struct Output(Arc<(Mutex<OutputState>, Condvar)>);

    #[derive(Debug, Default)]
    struct OutputState {
        blocked: bool,
        /// Writes started (a blocked write counts).
        started: usize,
        writes: usize,
        bytes: Vec<u8>,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (state, changed) = &*self.0;
            let mut state = state.lock().expect("output");
            state.started += 1;
            changed.notify_all();
            while state.blocked {
                state = changed.wait(state).expect("output");
            }
            state.writes += 1;
            state.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn state(&self) -> MutexGuard<'_, OutputState> {
            self.0.0.lock().expect("output")
        }

        fn set_blocked(&self, blocked: bool) {
            self.state().blocked = blocked;
            self.0.1.notify_all();
        }

        /// Waits until `n` writes have started (the writer thread is inside the nth).
        fn wait_started(&self, n: usize) {
            let (state, changed) = &*self.0;
            let state = state.lock().expect("output");
            let (_state, timeout) = changed
                .wait_timeout_while(state, Duration::from_secs(5), |s| s.started < n)
                .expect("output");
            assert!(!timeout.timed_out(), "the writer thread did not write");
        }

        fn text(&self) -> String {
            String::from_utf8(self.state().bytes.clone()).expect("UTF-8")
        }
    }

    /// Reports, as they are made: when, and how many lines.
    #[derive(Debug, Clone, Default)]
    struct Reports(Arc<Mutex<Vec<(Instant, u64)>>>);

    impl Reports {
        fn callback(&self) -> Report {
            let reports = self.0.clone();
            Box::new(move |dropped| {
                reports
                    .lock()
                    .expect("reports")
                    .push((Instant::now(), dropped))
            })
        }

        fn counts(&self) -> Vec<u64> {
            self.0
                .lock()
                .expect("reports")
                .iter()
                .map(|r| r.1)
                .collect()
        }

        fn wait_for(&self, n: usize) -> Vec<(Instant, u64)> {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let reports = self.0.lock().expect("reports").clone();
                if reports.len() >= n {
                    return reports;
                }
                assert!(
                    Instant::now() < deadline,
                    "{n} reports expected: {reports:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn line(tag: &str, len: usize) -> Vec<u8> {
        let mut line = format!("{tag} ").into_bytes();
        line.resize(len - 1, b'.');
        line.push(b'\n');
        line
    }

    const BOUNDS: Bounds = Bounds {
        total: 1000,
        guest: 500,
    };

    #[test]
    fn plugin_lines_are_dropped_and_host_lines_wait_while_the_output_is_blocked() {
        let output = Output::default();
        let reports = Reports::default();
        let (writer, guard) =
            LogWriter::spawn(output.clone(), BOUNDS, reports.callback()).expect("spawn");
        output.set_blocked(true);
        writer.shared.push(&line("host-0", 100), false);
        output.wait_started(1);
        // 100 bytes in flight: room for 4 plugin lines of 100 under the plugins' 500.
        for i in 0..10 {
            writer.shared.push(&line(&format!("guest-{i}"), 100), true);
        }
        assert_eq!(writer.unreported_drops(), 6);
        // Host lines fill the bound (1000), then wait.
        let pushed = Arc::new(AtomicUsize::new(0));
        let host = std::thread::spawn({
            let (writer, pushed) = (writer.clone(), pushed.clone());
            move || {
                for i in 1..=10 {
                    writer.shared.push(&line(&format!("host-{i}"), 100), false);
                    pushed.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(pushed.load(Ordering::SeqCst), 5, "host lines wait for room");
        assert!(!host.is_finished());

        output.set_blocked(false);
        host.join().expect("host lines");
        assert_eq!(reports.wait_for(1)[0].1, 6);
        drop(guard);
        let text = output.text();
        for i in 0..=10 {
            assert!(
                text.contains(&format!("host-{i} ")),
                "host-{i} missing:\n{text}"
            );
        }
        let guests = text.lines().filter(|l| l.starts_with("guest-")).count();
        assert_eq!(guests, 4);
        assert_eq!(reports.counts(), [6]);
        assert_eq!(writer.unreported_drops(), 0);
    }

    #[test]
    fn lines_gathered_during_a_write_are_written_in_one_batch() {
        let output = Output::default();
        let (writer, guard) =
            LogWriter::spawn(output.clone(), BOUNDS, Reports::default().callback()).expect("spawn");
        output.set_blocked(true);
        writer.shared.push(&line("first", 50), false);
        output.wait_started(1);
        for i in 0..15 {
            writer.shared.push(&line(&format!("next-{i}"), 50), false);
        }
        output.set_blocked(false);
        drop(guard);
        let state = output.state();
        assert_eq!(
            state.writes, 2,
            "one write for the first line, one for the rest"
        );
        assert_eq!(state.bytes.len(), 16 * 50);
    }

    #[test]
    fn a_steady_stream_of_lines_is_written_in_batches_not_line_by_line() {
        let output = Output::default();
        let (writer, guard) =
            LogWriter::spawn(output.clone(), BOUNDS, Reports::default().callback()).expect("spawn");
        // 1,000 lines, one every 20 µs: 20 ms of a busy host.
        for i in 0..1000 {
            let next = Instant::now() + Duration::from_micros(20);
            writer.shared.push(&line(&format!("line-{i}"), 40), false);
            while Instant::now() < next {
                std::hint::spin_loop();
            }
        }
        drop(guard);
        let state = output.state();
        assert_eq!(state.bytes.len(), 1000 * 40);
        assert!(
            state.writes <= 200,
            "{} writes for 1,000 lines",
            state.writes
        );
    }

    #[test]
    fn drops_are_reported_at_most_once_a_second() {
        let output = Output::default();
        let reports = Reports::default();
        let (writer, guard) =
            LogWriter::spawn(output.clone(), BOUNDS, reports.callback()).expect("spawn");
        let drop_some = |started: usize, count: usize| {
            output.set_blocked(true);
            writer.shared.push(&line("host", 500), false);
            output.wait_started(started);
            for _ in 0..count {
                writer.shared.push(&line("guest", 100), true);
            }
            output.set_blocked(false);
        };
        drop_some(1, 3);
        let first = reports.wait_for(1)[0];
        assert_eq!(first.1, 3);
        drop_some(2, 2);
        let second = reports.wait_for(2)[1];
        assert_eq!(second.1, 2);
        assert!(
            second.0.duration_since(first.0) >= REPORT_INTERVAL,
            "{:?} between reports",
            second.0.duration_since(first.0)
        );
        drop(guard);
        assert_eq!(reports.counts(), [3, 2]);
    }

    #[test]
    fn closing_writes_every_line_and_reports_what_was_dropped() {
        let output = Output::default();
        let reports = Reports::default();
        let (writer, guard) =
            LogWriter::spawn(output.clone(), BOUNDS, reports.callback()).expect("spawn");
        output.set_blocked(true);
        writer.shared.push(&line("host", 600), false);
        output.wait_started(1);
        writer.shared.push(&line("guest", 100), true);
        writer.shared.push(&line("host", 300), false);
        let unblock = std::thread::spawn({
            let output = output.clone();
            move || {
                std::thread::sleep(Duration::from_millis(100));
                output.set_blocked(false);
            }
        });
        drop(guard);
        unblock.join().expect("unblock");
        assert_eq!(output.text().len(), 900);
        assert_eq!(reports.counts(), [1]);
        // Closed: later lines are discarded, never waited on.
        writer.shared.push(&line("late", 2000), false);
        assert_eq!(output.text().len(), 900);
    }

    #[test]
    fn plugin_lines_are_told_apart_by_target() {
        assert!(is_guest("plinth::guest"));
        assert!(is_guest("plinth::guest::stdout"));
        assert!(!is_guest("plinth::guests"));
        assert!(!is_guest("plinth::access"));
        assert!(!is_guest("plinth_host::pipeline"));

        // Through a subscriber: plugin lines beyond their share are dropped, access lines
        // are all written, and none of it makes the logging thread wait.
        let output = Output::default();
        let reports = Reports::default();
        let bounds = Bounds {
            total: 256 * 1024,
            guest: 32 * 1024,
        };
        let (writer, guard) =
            LogWriter::spawn(output.clone(), bounds, reports.callback()).expect("spawn");
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer.clone())
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .finish();
        output.set_blocked(true);
        let started = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            output.wait_started(1);
            for i in 0..1000 {
                let span = tracing::info_span!("request", request_id = %i);
                let _entered = span.enter();
                for j in 0..10 {
                    tracing::info!(target: "plinth::guest", plugin = "chatty", "line {j}");
                }
                tracing::info!(target: "plinth::access", status = 200, "request");
            }
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = writer.unreported_drops();
        output.set_blocked(false);
        drop(guard);
        let lines: Vec<serde_json::Value> = output
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        let access: Vec<_> = lines
            .iter()
            .filter(|l| l["target"] == "plinth::access")
            .map(|l| l["span"]["request_id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(access, (0..1000).map(|i| i.to_string()).collect::<Vec<_>>());
        let guests = lines
            .iter()
            .filter(|l| l["target"] == "plinth::guest")
            .count();
        assert!(dropped > 9000, "{dropped} dropped");
        assert_eq!(guests as u64 + dropped, 10_000);
        assert_eq!(reports.counts().iter().sum::<u64>(), dropped);
    }
}
