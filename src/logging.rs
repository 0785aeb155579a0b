//! Log output: `tracing` as JSON lines by default, human text with
//! `PRIME_PROXY_LOG_FORMAT=text`, level from `RUST_LOG` (default `info`), with caps on
//! libraries that would otherwise log secrets at their most verbose levels.

use tracing::level_filters::LevelFilter;
use tracing::Metadata;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
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
    _worker: tracing_appender::non_blocking::WorkerGuard,
    /// Set when `PRIME_PROXY_LOG_FORMAT` was not understood.
    pub warning: Option<String>,
}

/// Installs the global subscriber.
///
/// Lines are written to stdout by a dedicated thread, so a slow log pipe never blocks a
/// request task. The buffer is not lossy: under a flood the request path waits rather than
/// dropping request lines.
pub fn init() -> LogGuard {
    let levels = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("PRIME_PROXY_LOG_FORMAT").unwrap_or_default();
    let format = format.to_ascii_lowercase();
    let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("log-writer")
        // Stdout is line-buffered: one write syscall per line. Buffered here, the writer
        // thread writes whatever lines have queued up at once and flushes when the queue is
        // empty, so a line is never held back while the proxy is idle.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    let base = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = if format == "text" {
        base.boxed()
    } else {
        base.json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed()
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
        _worker: worker,
        warning,
    }
}
