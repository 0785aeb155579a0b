//! Log output: `tracing` as JSON lines by default, human text with
//! `PRIME_PROXY_LOG_FORMAT=text`, level from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Returns a message when `PRIME_PROXY_LOG_FORMAT` is unknown.
pub fn init() -> Option<String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("PRIME_PROXY_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format.to_ascii_lowercase().as_str() {
        "text" => {
            builder.init();
            None
        }
        "" | "json" => {
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init();
            None
        }
        other => {
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init();
            Some(format!(
                "PRIME_PROXY_LOG_FORMAT={other:?} is not `json` or `text`; logging JSON"
            ))
        }
    }
}
