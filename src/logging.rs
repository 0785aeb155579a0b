//! Log output: `tracing` as JSON lines by default, human text with
//! `PRIME_PROXY_LOG_FORMAT=text`, level from `RUST_LOG` (default `info`), with caps on
//! libraries that would otherwise log secrets at their most verbose levels.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter, Targets};
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

/// Log lines dropped because stdout was not being read (`prime_proxy_log_lines_dropped_total`).
pub static LINES_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Installs the global subscriber.
///
/// Lines are collected in memory and written to stdout by a dedicated thread every
/// [`FLUSH_EVERY`], so no request thread ever writes stdout and no request pays for waking
/// a writer thread. If stdout stops being read, at most [`MAX_PENDING`] bytes pile up; lines
/// beyond that are dropped and counted ([`LINES_DROPPED`]), and once the writer gets through
/// again one line says how many were dropped since when.
pub fn init() -> LogGuard {
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let debug_targets = DebugTargets::parse(&rust_log);
    let format = std::env::var("PRIME_PROXY_LOG_FORMAT").unwrap_or_default();
    let format = format.to_ascii_lowercase();
    let (writer, flush_guard) = BatchedStdout::start();
    let base = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = if format == "text" {
        // Colour codes only for a person at a terminal: in a pipe, a file or `kubectl logs`
        // they show up as `^[[2m` noise.
        base.with_ansi(std::io::stdout().is_terminal()).boxed()
    } else {
        base.event_format(JsonLines).boxed()
    };
    tracing_subscriber::registry()
        .with(
            layer
                .with_filter(levels)
                .with_filter(filter_fn(move |metadata| {
                    allowed(metadata) && debug_targets.shows(metadata)
                })),
        )
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

/// Libraries whose own warnings (and infos and errors) are shown only when `RUST_LOG` enables
/// DEBUG for them. The AWS SDK warns about every credential source it tries (the IMDS error
/// dump, about 1.5 KB a line, on every retry); the proxy says once, in plain words, what is
/// missing (`credentials::refresh_forever`).
const DEBUG_ONLY: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_",
    "aws_smithy",
    "aws_types",
];

/// The targets `RUST_LOG` enables DEBUG for, as far as its simple `target=level` directives
/// say (a filter tracing-subscriber cannot parse that way counts as `info`).
struct DebugTargets(Targets);

impl DebugTargets {
    fn parse(rust_log: &str) -> Self {
        let targets = rust_log
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
        Self(targets)
    }

    /// False for a [`DEBUG_ONLY`] library's event above DEBUG when DEBUG is not enabled for
    /// its target; true for everything else.
    fn shows(&self, metadata: &Metadata<'_>) -> bool {
        let target = metadata.target();
        *metadata.level() > Level::INFO
            || !DEBUG_ONLY.iter().any(|prefix| target.starts_with(prefix))
            || self.0.would_enable(target, &Level::DEBUG)
    }
}

/// How long the writer collects lines after the first one of a batch before writing them out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Collected bytes beyond which new lines are dropped until the writer catches up: with the
/// batch being written, log lines hold at most twice this in memory.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

thread_local! {
    /// Set on the writer thread while it logs the "lines dropped" report, which is never
    /// dropped itself.
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Log lines waiting to be written, and what was dropped since the last write.
#[derive(Default)]
struct Collected {
    bytes: Vec<u8>,
    dropped: u64,
    first_dropped_at: Option<SystemTime>,
}

/// Lines dropped between two writes.
#[derive(Debug, PartialEq)]
struct Dropped {
    lines: u64,
    since: SystemTime,
}

impl Dropped {
    /// Logs the report through the subscriber, so it has the configured format; it lands
    /// right after the lines written before the gap.
    fn report(&self) {
        let mut since = String::with_capacity(32);
        push_timestamp(&mut since, self.since);
        REPORTING.with(|reporting| reporting.set(true));
        tracing::warn!(
            dropped = self.lines,
            since = %since,
            "log lines dropped: stdout was not being read"
        );
        REPORTING.with(|reporting| reporting.set(false));
    }
}

/// The lines collected by every thread, written out by the writer thread alone.
struct Pending {
    collected: Mutex<Collected>,
    limit: usize,
    stop: AtomicBool,
    /// The writer thread, woken by the first line of a batch: an idle proxy's writer sleeps
    /// instead of waking 20 times a second to find nothing.
    writer: OnceLock<std::thread::Thread>,
}

impl Pending {
    fn new(limit: usize) -> Self {
        Self {
            collected: Mutex::new(Collected::default()),
            limit,
            stop: AtomicBool::new(false),
            writer: OnceLock::new(),
        }
    }

    /// Adds one formatted line, or drops and counts it when `limit` bytes are waiting.
    fn append(&self, line: &[u8]) {
        let Ok(mut collected) = self.collected.lock() else {
            return;
        };
        if collected.bytes.len() + line.len() > self.limit && !REPORTING.with(Cell::get) {
            collected.dropped += 1;
            collected
                .first_dropped_at
                .get_or_insert_with(SystemTime::now);
            drop(collected);
            LINES_DROPPED.inc();
            return;
        }
        let first = collected.bytes.is_empty();
        collected.bytes.extend_from_slice(line);
        drop(collected);
        if first {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// Takes the collected lines and the record of what was dropped after them.
    fn take(&self) -> (Vec<u8>, Option<Dropped>) {
        let Ok(mut collected) = self.collected.lock() else {
            return (Vec::new(), None);
        };
        let bytes = std::mem::take(&mut collected.bytes);
        let dropped = collected.first_dropped_at.take().map(|since| Dropped {
            lines: std::mem::take(&mut collected.dropped),
            since,
        });
        (bytes, dropped)
    }

    /// Writes out whatever is collected (this may block on a stalled pipe: only the writer
    /// thread calls it, and the lock is not held meanwhile). A gap of dropped lines is
    /// reported by a line collected now, which the next write puts after this batch.
    fn write_to(&self, out: &mut impl std::io::Write) {
        let (batch, dropped) = self.take();
        if let Some(dropped) = dropped {
            dropped.report();
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
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
        Self::start_writing_to(std::io::stdout())
    }

    /// The batched writer with its thread writing to `out` (stdout in the proxy).
    fn start_writing_to(mut out: impl std::io::Write + Send + 'static) -> (Self, FlushOnDrop) {
        let pending = Arc::new(Pending::new(MAX_PENDING));
        let worker = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                while !worker.stop.load(Ordering::Acquire) {
                    // Until the first line of a batch (or the stop) unparks this thread; a
                    // spurious wake-up only costs an empty round.
                    std::thread::park();
                    if !worker.stop.load(Ordering::Acquire) {
                        // Collect for a moment, so a busy proxy writes batches, not lines.
                        std::thread::park_timeout(FLUSH_EVERY);
                    }
                    worker.write_to(&mut out);
                }
                // Twice: the second writes a report collected by the first.
                worker.write_to(&mut out);
                worker.write_to(&mut out);
            })
            .ok();
        // Set before the subscriber that appends lines is installed, so no line can come
        // before the writer can be woken.
        if let Some(thread) = &thread {
            let _ = pending.writer.set(thread.thread().clone());
        }
        (Self(Arc::clone(&pending)), FlushOnDrop { pending, thread })
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.pending.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(thread) => {
                thread.thread().unpark();
                let _ = thread.join();
            }
            // No writer thread could be started: write what is collected now, at exit.
            None => self.pending.write_to(&mut std::io::stdout().lock()),
        }
    }
}

impl<'a> MakeWriter<'a> for BatchedStdout {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineSink(&self.0)
    }
}

/// Appends one formatted line to the pending batch (the formatter writes a line at once).
pub struct LineSink<'a>(&'a Pending);

impl std::io::Write for LineSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The proxy's JSON subscriber (format and batched writer) writing to `out`, not installed:
/// for `benches/logging.rs`, which measures it beside tracing-subscriber's JSON layer and
/// tracing-appender's non-blocking writer. Dropping the guard flushes and stops the writer.
#[doc(hidden)]
pub fn json_subscriber_into(
    out: impl std::io::Write + Send + 'static,
) -> (impl tracing::Subscriber + Send + Sync, impl Drop) {
    let (writer, guard) = BatchedStdout::start_writing_to(out);
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .event_format(JsonLines),
    );
    (subscriber, guard)
}

/// JSON lines, one object per event: `timestamp`, `level`, the event's fields (the text as
/// `message`) and `target`.
///
/// Written directly into the line buffer, where tracing-subscriber's own JSON format
/// collects the fields into a map of `serde_json::Value`s first (`benches/logging.rs`
/// measures both).
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
        // Written straight into `writer`: tracing-subscriber's per-thread line buffer, which
        // is reused from line to line, so a line costs no allocation of its own.
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        push_timestamp(&mut writer, SystemTime::now());
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(metadata.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = JsonFields {
            line: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        push_json_string(&mut writer, metadata.target())?;
        writer.write_str("}\n")
    }
}

/// Appends `,"name":value` for every field of an event.
struct JsonFields<'a, W: fmt::Write> {
    line: &'a mut W,
    /// The first write error (`Visit` methods return nothing).
    result: fmt::Result,
}

impl<W: fmt::Write> JsonFields<'_, W> {
    /// Writes the field's key, then its value with `value`.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .line
            .write_char(',')
            .and_then(|()| push_json_string(self.line, field.name()))
            .and_then(|()| self.line.write_char(':'))
            .and_then(|()| value(self.line));
    }
}

impl<W: fmt::Write> Visit for JsonFields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |line| push_json_string(line, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |line| {
            line.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |line| write!(line, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |line| write!(line, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |line| {
            if value.is_finite() {
                write!(line, "{value}")
            } else {
                line.write_str("null")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |line| push_json_display(line, value));
    }

    /// Also the message (`format_args!`) and `%`-formatted fields: formatted straight into
    /// the line through the escaper, without a `String` of their own.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |line| {
            line.write_char('"')?;
            write!(JsonEscaped(line), "{value:?}")?;
            line.write_char('"')
        });
    }
}

/// A JSON string literal, escaped as RFC 8259 requires.
fn push_json_string<W: fmt::Write + ?Sized>(out: &mut W, text: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscaped(&mut *out).write_str(text)?;
    out.write_char('"')
}

/// `value`'s `Display` text as a JSON string literal.
fn push_json_display<W: fmt::Write + ?Sized>(out: &mut W, value: &dyn fmt::Display) -> fmt::Result {
    out.write_char('"')?;
    write!(JsonEscaped(&mut *out), "{value}")?;
    out.write_char('"')
}

/// Escapes what is written through it for the inside of a JSON string: runs that need no
/// escape are passed on whole.
struct JsonEscaped<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0; // start of the run not yet written
        for (i, byte) in text.bytes().enumerate() {
            // Every byte that needs an escape is ASCII, so `i` is a char boundary.
            let escape = match byte {
                b'"' => Some("\\\""),
                b'\\' => Some("\\\\"),
                b'\n' => Some("\\n"),
                b'\r' => Some("\\r"),
                b'\t' => Some("\\t"),
                0..=0x1f => None, // other control characters: \u00XX
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            match escape {
                Some(escape) => self.0.write_str(escape)?,
                None => write!(self.0, "\\u{byte:04x}")?,
            }
            plain = i + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

/// RFC 3339 UTC with microseconds: `2026-11-23T19:40:01.123456Z`.
fn push_timestamp<W: fmt::Write + ?Sized>(out: &mut W, now: SystemTime) {
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
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é").unwrap();
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
            let failure = std::io::Error::other("tab\there \"quoted\"");
            tracing::warn!(
                error = &failure as &(dyn std::error::Error + 'static),
                shown = ?"q\"",
                "message {} with \"quotes\",\nnewline and \u{7}",
                3
            );
        });
        let text = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
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
        // Formatted fields and the message are escaped as they are written.
        assert_eq!(lines[2]["error"], "tab\there \"quoted\"");
        assert_eq!(lines[2]["shown"], "\"q\\\"\"");
        assert_eq!(
            lines[2]["message"],
            "message 3 with \"quotes\",\nnewline and \u{7}"
        );
    }

    fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn past_the_limit_lines_are_dropped_counted_and_reported_once_after_the_gap() {
        let pending = Arc::new(Pending::new(1_000));
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(BatchedStdout(Arc::clone(&pending)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let counted_before = LINES_DROPPED.get();
            let started = SystemTime::now();
            for i in 0..50u64 {
                tracing::info!(i, "line");
            }
            let mut first = Vec::new();
            pending.write_to(&mut first);
            let kept = json_lines(&first);
            assert!(!kept.is_empty() && kept.len() < 50, "{} kept", kept.len());
            assert!(first.len() <= 1_000);
            for (i, line) in kept.iter().enumerate() {
                assert_eq!(line["i"], i as u64, "the lines before the gap, in order");
            }
            let dropped = 50 - kept.len() as u64;
            assert_eq!(LINES_DROPPED.get() - counted_before, dropped);

            tracing::info!("after the gap");
            let mut second = Vec::new();
            pending.write_to(&mut second);
            let lines = json_lines(&second);
            assert_eq!(lines.len(), 2, "{lines:?}");
            let report = &lines[0];
            assert_eq!(report["level"], "WARN");
            assert_eq!(
                report["message"],
                "log lines dropped: stdout was not being read"
            );
            assert_eq!(report["dropped"], dropped);
            let mut earliest = String::new();
            push_timestamp(&mut earliest, started);
            let since = report["since"].as_str().unwrap();
            assert!(since >= earliest.as_str(), "{since} < {earliest}");
            assert_eq!(lines[1]["message"], "after the gap");

            // Nothing dropped since: no second report.
            let mut third = Vec::new();
            pending.write_to(&mut third);
            assert!(third.is_empty(), "{:?}", String::from_utf8_lossy(&third));
        });
    }

    #[test]
    fn the_report_itself_is_kept_when_the_batch_is_full() {
        let pending = Arc::new(Pending::new(300));
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(BatchedStdout(Arc::clone(&pending)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10u64 {
                tracing::info!(i, "filler line to fill the small batch");
            }
            Dropped {
                lines: 7,
                since: UNIX_EPOCH,
            }
            .report();
            tracing::info!("dropped again");
            let (bytes, dropped) = pending.take();
            let lines = json_lines(&bytes);
            let last = lines.last().unwrap();
            assert_eq!(last["dropped"], 7);
            assert_eq!(last["since"], "1970-01-01T00:00:00.000000Z");
            let fillers = lines.len() as u64 - 1;
            assert!(fillers < 10, "the batch was full");
            // The fillers past the limit, and the line after the report.
            assert_eq!(dropped.map(|d| d.lines), Some(10 - fillers + 1));
        });
    }

    fn event_metadata(target: &'static str, level: Level) -> bool {
        // A callsite per (target, level) is what tracing would build; `Metadata::new` gives the
        // same fields without one.
        static FIELDS: &[&str] = &[];
        struct Callsite;
        impl tracing::callsite::Callsite for Callsite {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CALLSITE: Callsite = Callsite;
        let metadata = Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            tracing::field::FieldSet::new(FIELDS, tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        SHOWN.with(|targets| targets.borrow().shows(&metadata))
    }

    thread_local! {
        static SHOWN: std::cell::RefCell<DebugTargets> =
            std::cell::RefCell::new(DebugTargets::parse(""));
    }

    fn with_rust_log(rust_log: &str) {
        SHOWN.with(|targets| *targets.borrow_mut() = DebugTargets::parse(rust_log));
    }

    #[test]
    fn aws_library_warnings_show_only_when_debug_is_enabled_for_them() {
        for rust_log in ["", "info", "warn", "prime_sigv4_proxy=debug", "[span]=x"] {
            with_rust_log(rust_log);
            assert!(
                !event_metadata("aws_config::imds::region", Level::WARN),
                "{rust_log}"
            );
            assert!(
                !event_metadata("aws_smithy_runtime::client", Level::ERROR),
                "{rust_log}"
            );
            assert!(
                !event_metadata("aws_sdk_sts::operation", Level::INFO),
                "{rust_log}"
            );
            assert!(
                event_metadata("prime_sigv4_proxy", Level::WARN),
                "{rust_log}"
            );
            assert!(event_metadata("hyper", Level::WARN), "{rust_log}");
            // DEBUG and TRACE events follow RUST_LOG (and the caps) as before.
            assert!(
                event_metadata("aws_config::imds", Level::DEBUG),
                "{rust_log}"
            );
        }
        for rust_log in [
            "debug",
            "trace",
            "info,aws_config=debug",
            "aws_config=trace",
        ] {
            with_rust_log(rust_log);
            assert!(
                event_metadata("aws_config::imds::region", Level::WARN),
                "{rust_log}"
            );
        }
        with_rust_log("info,aws_config=debug");
        assert!(!event_metadata("aws_smithy_runtime", Level::WARN));
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
