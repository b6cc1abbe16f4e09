//! The JSON line format (`LOG_FORMAT=json`), encoded once per line.
//!
//! One object per line, with the keys tracing-subscriber's JSON format gives with
//! `flatten_event(true)`, `with_current_span(true)` and `with_span_list(false)`, in the same
//! order: `timestamp` (RFC 3339, UTC, microseconds), `level`, the event's fields (`message`
//! first where the event has one), `target`, and `span`: the current span's fields and its
//! `name`. Values are encoded as that format encodes them: strings, integers and booleans
//! as such, floats as serde_json writes them (`null` when not finite), anything else as
//! its `Debug` text.
//!
//! What is cheaper than tracing-subscriber's own JSON format: a span's fields are encoded
//! as JSON once, when the span is created, and copied raw into each of its lines (not
//! parsed back with serde_json per line); the line is encoded into a per-thread scratch
//! `String` and copied into the fmt layer's reused buffer in one piece (no serializer
//! adaptor that UTF-8-checks every piece, no call through `dyn fmt::Write` per piece);
//! strings that need no escaping are copied as they are (serde_json escapes the others);
//! integers go through `itoa`; and the timestamp's date and time of day are formatted
//! once a second per thread.
//!
//! A span's fields are kept in the order they are recorded (tracing-subscriber sorts
//! them); a field recorded again on an existing span is appended, not replaced.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format: one JSON object per line.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// The span field format that goes with [`JsonLines`]: a span's fields as one JSON object,
/// encoded when the span is created and copied into each line logged inside it.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        encoded(&mut writer, |line| encode_event(ctx, event, line))
    }
}

thread_local! {
    /// What is being encoded on this thread, kept for the next line.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The most a thread's scratch buffer keeps between lines.
const MAX_KEPT_SCRATCH: usize = 64 * 1024;

/// Encodes into a plain `String` (each piece a copy, not a call through the `Writer`'s
/// `dyn fmt::Write`) and hands the text to `writer` in one piece. What is logged while
/// encoding (from some `Debug`) gets a buffer of its own.
fn encoded(
    writer: &mut Writer<'_>,
    encode: impl FnOnce(&mut String) -> fmt::Result,
) -> fmt::Result {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut text) => {
            text.clear();
            let result = encode(&mut text).and_then(|()| writer.write_str(&text));
            // One outsized line does not keep its buffer on the thread for good.
            if text.capacity() > MAX_KEPT_SCRATCH {
                *text = String::new();
            }
            result
        }
        Err(_) => {
            let mut text = String::new();
            encode(&mut text)?;
            writer.write_str(&text)
        }
    })
}

fn encode_event<S>(
    ctx: &FmtContext<'_, S, JsonSpanFields>,
    event: &Event<'_>,
    out: &mut String,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Events forwarded from the `log` crate name their real target in fields.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

    out.push_str("{\"timestamp\":\"");
    write_timestamp(out, SystemTime::now());
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push('"');

    let mut fields = FieldVisitor::new(out, Fields::Event);
    event.record(&mut fields);
    fields.result?;

    out.push_str(",\"target\":");
    write_string(out, meta.target());

    let span = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    if let Some(span) = span {
        out.push_str(",\"span\":{");
        let extensions = span.extensions();
        if let Some(fields) = extensions.get::<FormattedFields<JsonSpanFields>>() {
            let inner = object_inner(&fields.fields);
            if !inner.is_empty() {
                out.push_str(inner);
                out.push(',');
            }
        }
        out.push_str("\"name\":");
        write_string(out, span.metadata().name());
        out.push('}');
    }
    out.push_str("}\n");
    Ok(())
}

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        encoded(&mut writer, |object| {
            object.push('{');
            let mut visitor = FieldVisitor::new(object, Fields::SpanFirst);
            fields.record(&mut visitor);
            visitor.result?;
            object.push('}');
            Ok(())
        })
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // `{...}`: reopen the object, append, close it again.
        let empty = object_inner(&current.fields).is_empty();
        current.fields.pop();
        let mut visitor = FieldVisitor::new(
            &mut current.fields,
            if empty {
                Fields::SpanFirst
            } else {
                Fields::Span
            },
        );
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// What lies between the braces of an encoded span object (empty when it is not one).
fn object_inner(object: &str) -> &str {
    object
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or("")
}

/// Which fields a [`FieldVisitor`] encodes, and how (each as tracing-subscriber does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// An event's fields, after other keys (each entry starts with a comma).
    Event,
    /// A span's fields at the start of its object (no comma before the first).
    SpanFirst,
    /// A span's fields after others.
    Span,
}

/// Writes `"name":value` entries.
struct FieldVisitor<'a> {
    out: &'a mut String,
    kind: Fields,
    result: fmt::Result,
}

impl<'a> FieldVisitor<'a> {
    fn new(out: &'a mut String, kind: Fields) -> Self {
        Self {
            out,
            kind,
            result: Ok(()),
        }
    }

    /// Writes the key (and the comma before it); `None` when the field is skipped.
    fn key(&mut self, field: &Field) -> Option<&mut String> {
        if self.result.is_err() {
            return None;
        }
        let mut name = field.name();
        if self.kind != Fields::Event {
            // As tracing-subscriber's span fields: `log.*` is metadata of forwarded `log`
            // records, and raw identifiers lose their `r#`.
            if name.starts_with("log.") {
                return None;
            }
            name = name.strip_prefix("r#").unwrap_or(name);
        }
        if self.kind == Fields::SpanFirst {
            self.kind = Fields::Span;
        } else {
            self.out.push(',');
        }
        write_string(self.out, name);
        self.out.push(':');
        Some(self.out)
    }

    fn value(&mut self, field: &Field, write: impl FnOnce(&mut String) -> fmt::Result) {
        if let Some(out) = self.key(field) {
            let result = write(out);
            self.result = result;
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, |w| {
            write_f64(w, value);
            Ok(())
        });
    }

    // itoa, not `write!`: `core::fmt` costs several times the digits (status on every access line).
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, |w| {
            w.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, |w| {
            write_string(w, value);
            Ok(())
        });
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        if self.kind == Fields::Event {
            // tracing-serde leaves bytes to `Debug` (hex).
            self.record_debug(field, &tracing::field::display(HexBytes(value)));
        } else {
            // tracing-subscriber's span fields: an array of numbers.
            self.value(field, |w| {
                w.push('[');
                for (i, byte) in value.iter().enumerate() {
                    if i > 0 {
                        w.push(',');
                    }
                    w.push_str(itoa::Buffer::new().format(*byte));
                }
                w.push(']');
                Ok(())
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.value(field, |w| {
            w.push('"');
            write!(Escaping(w), "{value:?}")?;
            w.push('"');
            Ok(())
        });
    }
}

/// `Debug` of `&[u8]` as tracing-core's default `record_bytes` gives it.
struct HexBytes<'a>(&'a [u8]);

impl fmt::Display for HexBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('[')?;
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            write!(f, "{byte:02x}")?;
        }
        f.write_char(']')
    }
}

/// A float as serde_json writes it (its formatter, into a buffer on the stack): shortest
/// round-trip form, `null` when not finite.
fn write_f64(out: &mut String, value: f64) {
    if !value.is_finite() {
        out.push_str("null");
        return;
    }
    use serde_json::ser::Formatter as _;
    let mut buffer = [0u8; 32];
    let mut rest = &mut buffer[..];
    // A finite f64 takes at most 24 bytes: the buffer cannot run out.
    match serde_json::ser::CompactFormatter.write_f64(&mut rest, value) {
        Ok(()) => {
            let written = 32 - rest.len();
            out.push_str(std::str::from_utf8(&buffer[..written]).unwrap_or("null"));
        }
        Err(_) => out.push_str("null"),
    }
}

/// Writes `value` as a JSON string, quotes included.
fn write_string(out: &mut String, value: &str) {
    if needs_escaping(value) {
        // serde_json writes valid UTF-8 into a `Vec<u8>`; it cannot fail.
        let escaped = serde_json::to_string(value).unwrap_or_default();
        out.push_str(&escaped);
    } else {
        out.push('"');
        out.push_str(value);
        out.push('"');
    }
}

/// Whether serde_json would change `value` inside a string: quotes, backslashes and
/// control characters.
fn needs_escaping(value: &str) -> bool {
    value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Escapes what is written through it as the inside of a JSON string (for `Debug` text,
/// which comes in pieces).
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, piece: &str) -> fmt::Result {
        if !needs_escaping(piece) {
            self.0.push_str(piece);
            return Ok(());
        }
        let escaped = serde_json::to_string(piece).map_err(|_| fmt::Error)?;
        // Without the quotes serde_json put around it.
        self.0.push_str(&escaped[1..escaped.len() - 1]);
        Ok(())
    }
}

/// The part of a timestamp that changes once a second, per thread.
struct SecondPrefix {
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.`
    text: String,
}

thread_local! {
    static PREFIX: RefCell<SecondPrefix> = const {
        RefCell::new(SecondPrefix { second: u64::MAX, text: String::new() })
    };
}

/// `2025-01-02T03:04:05.678901Z`, as tracing-subscriber's default timer writes it.
fn write_timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let micros = since_epoch.subsec_micros();
    PREFIX.with(|prefix| {
        let mut prefix = prefix.borrow_mut();
        if prefix.second != second {
            prefix.text.clear();
            let time = i64::try_from(second)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .unwrap_or_default();
            // Formatting into a `String` cannot fail.
            let _ = write!(prefix.text, "{}.", time.format("%Y-%m-%dT%H:%M:%S"));
            prefix.second = second;
        }
        out.push_str(&prefix.text);
    });
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    for _ in digits.len()..6 {
        out.push('0');
    }
    out.push_str(digits);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::subscriber::with_default;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Lines written through a subscriber with this format, collected in memory.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn raw_lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("capture").clone();
            let text = String::from_utf8(bytes).expect("UTF-8 lines");
            assert!(text.ends_with('\n'), "{text:?}");
            text.lines().map(str::to_owned).collect()
        }

        fn lines(&self) -> Vec<serde_json::Value> {
            self.raw_lines()
                .iter()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
                .collect()
        }
    }

    /// The keys of a JSON object, in the order written.
    fn keys_in_order(line: &str) -> Vec<String> {
        struct Keys(Vec<String>);
        struct KeysVisitor;
        impl<'de> serde::de::Visitor<'de> for KeysVisitor {
            type Value = Keys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        impl<'de> serde::Deserialize<'de> for Keys {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_map(KeysVisitor)
            }
        }
        serde_json::from_str::<Keys>(line).expect("an object").0
    }

    fn ours(capture: &Capture) -> impl Subscriber + Send + Sync + use<> {
        tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .finish()
    }

    /// tracing-subscriber's JSON format as `telemetry` configured it before this one.
    fn theirs(capture: &Capture) -> impl Subscriber + Send + Sync + use<> {
        tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
    }

    /// Logs the same events through `subscriber`.
    fn log_samples(subscriber: impl Subscriber + Send + Sync) {
        with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("request", request_id = %"0190-abc");
            span.in_scope(|| {
                tracing::info!(
                    target: "plinth::access",
                    method = %"GET",
                    path = %"/hello/\"x\"",
                    route = Some("/hello/{name}"),
                    plugin = None::<&str>,
                    status = 200u16,
                    latency_ms = 2.0,
                    small = 0.125,
                    huge = 1e21,
                    nan = f64::NAN,
                    negative = -3i64,
                    ok = true,
                    client_ip = %"127.0.0.1",
                    "request"
                );
                let message =
                    "quote \" backslash \\ newline \n tab \t nul \0 bell \u{7} del \u{7f} ñ €";
                tracing::warn!(target: "plinth::guest", plugin = "p", "{message}");
                tracing::error!(error = ?"debug \"quoted\"", r#type = "raw", "failed: {}", 42);
                tracing::info!(debugged = ?&b"ab"[..], raw = &b"a\x01"[..], "bytes");
            });
            let nested = tracing::info_span!("outer", b = 2, a = "x\ny", bytes = &b"\x02"[..]);
            nested.in_scope(|| tracing::info!(answer = 42u64, "inner"));
            // A `log` record, forwarded: its target is the logger's, its metadata in fields.
            let _ = tracing_log::LogTracer::init();
            log::info!(target: "some::library", "from the log crate: {}", 1);
            let empty = tracing::info_span!("empty");
            empty.in_scope(|| tracing::info!("in an empty span"));
        });
    }

    fn without_timestamp(mut line: serde_json::Value) -> serde_json::Value {
        line.as_object_mut().expect("an object").remove("timestamp");
        line
    }

    #[test]
    fn lines_carry_what_tracing_subscribers_json_lines_carry() {
        let (mine, reference) = (Capture::default(), Capture::default());
        log_samples(ours(&mine));
        log_samples(theirs(&reference));
        let (mine, reference) = (mine.raw_lines(), reference.raw_lines());
        assert_eq!(mine.len(), 8);
        assert_eq!(mine.len(), reference.len());
        for (mine, reference) in mine.iter().zip(&reference) {
            // Same keys in the same order, same values.
            assert_eq!(
                keys_in_order(mine),
                keys_in_order(reference),
                "{mine}\n{reference}"
            );
            let parse = |line: &str| serde_json::from_str::<serde_json::Value>(line).expect("JSON");
            let (mine, reference) = (parse(mine), parse(reference));
            assert!(mine["timestamp"].is_string());
            assert_eq!(without_timestamp(mine), without_timestamp(reference));
        }
    }

    #[test]
    fn the_access_line_has_the_span_and_flattened_fields() {
        let capture = Capture::default();
        log_samples(ours(&capture));
        let access = &capture.lines()[1];
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["target"], "plinth::access");
        assert_eq!(access["message"], "request");
        assert_eq!(access["path"], "/hello/\"x\"");
        assert_eq!(access["status"], 200);
        assert_eq!(access["latency_ms"], 2.0);
        assert_eq!(access["nan"], serde_json::Value::Null);
        // An absent `Option` is no field at all, as before.
        assert!(access.get("plugin").is_none());
        assert_eq!(access["ok"], true);
        assert_eq!(
            access["span"],
            serde_json::json!({ "request_id": "0190-abc", "name": "request" })
        );
    }

    #[test]
    fn messages_are_escaped() {
        let capture = Capture::default();
        log_samples(ours(&capture));
        let raw = capture.raw_lines();
        let guest_line = &raw[2];
        assert!(
            guest_line.contains(
                r#""message":"quote \" backslash \\ newline \n tab \t nul \u0000 bell \u0007 del "#
            ),
            "{guest_line}"
        );
        let guest = &capture.lines()[2];
        assert_eq!(
            guest["message"],
            "quote \" backslash \\ newline \n tab \t nul \0 bell \u{7} del \u{7f} ñ €"
        );
        let error = &capture.lines()[3];
        assert_eq!(error["message"], "failed: 42");
        assert_eq!(error["error"], "\"debug \\\"quoted\\\"\"");
    }

    #[test]
    fn every_control_character_is_escaped_as_serde_json_does() {
        for code in (0u32..0x80).chain([0xa0, 0x2028, 0x2029, 0xfeff]) {
            let text: String = char::from_u32(code).into_iter().collect();
            let mut mine = String::new();
            write_string(&mut mine, &text);
            assert_eq!(
                mine,
                serde_json::to_string(&text).expect("json"),
                "{code:#x}"
            );
            let mut piecewise = String::from("\"");
            write!(Escaping(&mut piecewise), "{text}").expect("write");
            piecewise.push('"');
            assert_eq!(piecewise, mine, "{code:#x}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let at = |micros: u64| UNIX_EPOCH + std::time::Duration::from_micros(micros);
        let mut text = String::new();
        write_timestamp(&mut text, at(1_700_000_000_000_042));
        assert_eq!(text, "2023-11-14T22:13:20.000042Z");
        text.clear();
        // Same second (cached prefix), then the next one.
        write_timestamp(&mut text, at(1_700_000_000_999_999));
        write_timestamp(&mut text, at(1_700_000_001_000_000));
        assert_eq!(
            text,
            "2023-11-14T22:13:20.999999Z2023-11-14T22:13:21.000000Z"
        );
    }

    #[test]
    fn fields_recorded_later_join_the_span_object() {
        let capture = Capture::default();
        with_default(ours(&capture), || {
            let span = tracing::info_span!("later", first = tracing::field::Empty, second = 1);
            span.record("first", "now");
            span.in_scope(|| tracing::info!("x"));
            let empty = tracing::info_span!("empty_then", only = tracing::field::Empty);
            empty.record("only", 3);
            empty.in_scope(|| tracing::info!("y"));
        });
        let lines = capture.lines();
        assert_eq!(
            lines[0]["span"],
            serde_json::json!({ "second": 1, "first": "now", "name": "later" })
        );
        assert_eq!(
            lines[1]["span"],
            serde_json::json!({ "only": 3, "name": "empty_then" })
        );
    }
}
