//! Log output: `tracing` as JSON lines by default, human text with
//! `PRIME_PROXY_LOG_FORMAT=text`, level from `RUST_LOG` (default `info`), with caps on
//! libraries that would otherwise log secrets at their most verbose levels.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::Metadata;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Most verbose level allowed per target prefix, whatever `RUST_LOG` asks for. Below these
/// levels the libraries log canonical requests (with the LWA token in the query), STS
/// request bodies (with the external id) or HTTP/2 frames with header values.
const CAPS: &[(&str, LevelFilter)] = &[
    ("aws_sigv4", LevelFilter::INFO),
    ("aws_smithy", LevelFilter::DEBUG),
    ("aws_config", LevelFilter::DEBUG),
    ("aws_sdk_sts", LevelFilter::DEBUG),
    ("h2", LevelFilter::DEBUG),
    ("rustls", LevelFilter::DEBUG),
];

/// True when `metadata` is within its target's cap.
pub fn allowed(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    CAPS.iter()
        .find(|(prefix, _)| target.starts_with(prefix))
        .is_none_or(|(_, cap)| metadata.level() <= cap)
}

/// Keeps the log writer thread alive; dropping it flushes what is buffered.
pub struct LogGuard {
    _writer: FlushOnDrop,
    /// Set when `PRIME_PROXY_LOG_FORMAT` was not understood.
    pub warning: Option<String>,
}

/// Installs the global subscriber.
///
/// Lines are collected in memory and written to stdout by a dedicated thread every
/// [`FLUSH_EVERY`], so a slow log pipe never blocks a request task and no request pays for
/// waking a writer thread. Nothing is dropped: if the pipe stalls and [`MAX_PENDING`] bytes
/// pile up, the thread that finds the buffer full writes it itself.
pub fn init() -> LogGuard {
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("PRIME_PROXY_LOG_FORMAT").unwrap_or_default();
    let format = format.to_ascii_lowercase();
    let (writer, flush_guard) = BatchedStdout::start();
    let base = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = if format == "text" {
        base.boxed()
    } else {
        base.event_format(JsonLines).boxed()
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(levels).with_filter(filter_fn(allowed)))
        .init();
    let warning = match format.as_str() {
        "" | "json" | "text" => None,
        other => Some(format!(
            "PRIME_PROXY_LOG_FORMAT={other:?} is not `json` or `text`; logging JSON"
        )),
    };
    LogGuard {
        _writer: flush_guard,
        warning,
    }
}

/// How often collected log lines are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Collected bytes beyond which the logging thread writes them out itself.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// Log lines waiting to be written.
#[derive(Default)]
struct Pending {
    bytes: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

impl Pending {
    /// Writes out whatever is collected. Only the lock's holder touches stdout, so lines stay
    /// in order; the lock is released before the (possibly slow) write.
    fn flush(&self) {
        let batch = match self.bytes.lock() {
            Ok(mut bytes) if !bytes.is_empty() => std::mem::take(&mut *bytes),
            _ => return,
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&batch);
        let _ = stdout.flush();
    }
}

/// The `MakeWriter` the subscriber formats into: each line is appended to [`Pending`].
#[derive(Clone)]
struct BatchedStdout(Arc<Pending>);

/// Stops the writer thread and writes out the last lines when dropped (at exit).
struct FlushOnDrop {
    pending: Arc<Pending>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchedStdout {
    fn start() -> (Self, FlushOnDrop) {
        let pending = Arc::new(Pending::default());
        let worker = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                while !worker.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    worker.flush();
                }
                worker.flush();
            })
            .ok();
        (Self(Arc::clone(&pending)), FlushOnDrop { pending, thread })
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.pending.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        self.pending.flush();
    }
}

impl<'a> MakeWriter<'a> for BatchedStdout {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineSink(&self.0)
    }
}

/// Appends one formatted line to the pending batch.
pub struct LineSink<'a>(&'a Pending);

impl std::io::Write for LineSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = match self.0.bytes.lock() {
            Ok(mut bytes) => {
                bytes.extend_from_slice(buf);
                bytes.len() > MAX_PENDING
            }
            Err(_) => false,
        };
        if full {
            self.0.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON lines, one object per event: `timestamp`, `level`, the event's fields (the text as
/// `message`) and `target`.
///
/// Written directly into the line buffer. tracing-subscriber's own JSON format collects the
/// fields into a map of `serde_json::Value`s first, which cost about 10 µs per request line
/// under load (a third of the request's CPU).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":\"");
        push_timestamp(&mut line, SystemTime::now());
        line.push_str("\",\"level\":\"");
        line.push_str(metadata.level().as_str());
        line.push('"');
        let mut fields = JsonFields { line: &mut line };
        event.record(&mut fields);
        line.push_str(",\"target\":");
        push_json_string(&mut line, metadata.target());
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// Appends `,"name":value` for every field of an event.
struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        push_json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_string(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        push_json_string(self.line, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_json_string(self.line, &format!("{value:?}"));
    }
}

/// A JSON string literal, escaped as RFC 8259 requires.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with microseconds: `2026-11-23T19:40:01.123456Z`.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) =
        crate::sign::civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = String::new();
        push_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(1_440_938_160_000_042),
        );
        assert_eq!(out, "2015-08-30T12:36:00.000042Z");
    }

    #[test]
    fn events_become_one_json_object_per_line_with_top_level_fields() {
        use std::sync::{Arc, Mutex};
        let sink = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = {
            let sink = Arc::clone(&sink);
            move || SinkWriter(Arc::clone(&sink))
        };
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(writer)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                method = "GET",
                status = 200u16,
                attempts = 2u32,
                ok = true,
                duration_ms = 1.5,
                path = "/v1/\"x\"",
                "request"
            );
            tracing::warn!(error = %"boom", "second line");
        });
        let text = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["message"], "request");
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["status"], 200);
        assert_eq!(first["attempts"], 2);
        assert_eq!(first["ok"], true);
        assert_eq!(first["duration_ms"], 1.5);
        assert_eq!(first["path"], "/v1/\"x\"");
        assert!(first["target"]
            .as_str()
            .unwrap()
            .starts_with("prime_sigv4_proxy"));
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["error"], "boom");
        assert_eq!(lines[1]["level"], "WARN");
    }

    struct SinkWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SinkWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
