//! The one log line, and the request metrics, per request: written once, when the request
//! is done. That is when a buffered answer is handed over, when a streamed body ends (or
//! breaks off), or, when the client went away first, when the request is dropped: then the
//! status is 499 and the error `client_closed`.
//!
//! The query string is never logged: it carries `customerIdentifier` (an LWA token).

use std::sync::Arc;

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;

use crate::metrics::RegionMetrics;
use crate::telemetry::{Finished, RequestTrace};

/// Status logged and counted for a request whose client went away before its answer.
pub const CLIENT_CLOSED: u16 = 499;

/// One request's log line in the making.
#[derive(Debug)]
pub struct AccessLog {
    started: Instant,
    method: Method,
    uri: Uri,
    marketplace: Option<HeaderValue>,
    request_id: HeaderValue,
    region: Arc<RegionMetrics>,
    attempts: u32,
    /// The status sent to the client; 0 until the response head is handed over.
    status: u16,
    error: Option<&'static str>,
    reason: Option<String>,
    written: bool,
    /// The request's server span, while tracing is on: ended with the line.
    trace: Option<RequestTrace>,
}

impl AccessLog {
    /// Starts the line of a request; `region` is the `none` region until routing succeeds.
    pub fn start(
        started: Instant,
        method: Method,
        uri: Uri,
        marketplace: Option<HeaderValue>,
        request_id: HeaderValue,
        region: Arc<RegionMetrics>,
    ) -> Self {
        Self {
            started,
            method,
            uri,
            marketplace,
            request_id,
            region,
            attempts: 0,
            status: 0,
            error: None,
            reason: None,
            written: false,
            trace: None,
        }
    }

    /// The request's trace: its server span ends when the line is written, and the line
    /// carries its ids.
    pub fn set_trace(&mut self, trace: RequestTrace) {
        self.trace = Some(trace);
    }

    pub fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_ref()
    }

    pub fn set_region(&mut self, region: &Arc<RegionMetrics>) {
        self.region = Arc::clone(region);
    }

    pub fn set_attempts(&mut self, attempts: u32) {
        self.attempts = attempts;
    }

    /// Records the response head handed to the client, with the proxy's error code (for its
    /// own answers) and a reason in plain words.
    pub fn answered(&mut self, status: u16, error: Option<&'static str>, reason: Option<String>) {
        self.status = status;
        self.error = error;
        self.reason = reason;
    }

    /// The request is done: writes the line.
    pub fn finish(mut self) {
        self.write();
    }

    /// A streamed body broke off: the line carries why.
    pub fn finish_broken(mut self, error: &'static str, reason: String) {
        self.error = Some(error);
        self.reason = Some(reason);
        self.write();
    }

    fn write(&mut self) {
        if self.written {
            return;
        }
        self.written = true;
        let elapsed = self.started.elapsed();
        let status = self.status;
        self.region.request(status);
        self.region.duration.observe(elapsed.as_secs_f64());
        let marketplace = self
            .marketplace
            .as_ref()
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        let request_id = self.request_id.to_str().unwrap_or("");
        let ids = self.trace.as_ref().map(|trace| {
            trace.finish(&Finished {
                status,
                region: &self.region.region,
                marketplace,
                attempts: self.attempts,
                error: self.error,
                request_id,
            });
            trace.ids()
        });
        tracing::info!(
            method = self.method.as_str(),
            path = self.uri.path(),
            marketplace,
            region = &*self.region.region,
            status,
            attempts = self.attempts,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id,
            error = self.error,
            reason = self.reason.as_deref(),
            trace_id = ids.as_ref().map(|(trace, _)| trace.as_str()),
            span_id = ids.as_ref().map(|(_, span)| span.as_str()),
            "request"
        );
    }
}

impl Drop for AccessLog {
    /// Dropped unwritten: the client went away before the answer (499) or in the middle of a
    /// streamed body (the status sent, error `client_closed`).
    fn drop(&mut self) {
        if self.written {
            return;
        }
        if self.status == 0 {
            self.status = CLIENT_CLOSED;
        }
        self.error = Some("client_closed");
        self.reason =
            Some("the client closed the connection before the answer was complete".into());
        self.write();
    }
}
