//! OpenTelemetry traces (`[tracing]`): one server span per request and one client span per
//! upstream attempt, continued from the client's W3C `traceparent`/`tracestate`, exported
//! over OTLP/HTTP (protobuf) in batches by a thread of its own.
//!
//! Finished spans go into a bounded queue; a span that does not fit is dropped and counted
//! (`prime_proxy_spans_dropped_total`), so a slow or unreachable collector costs spans, never
//! request time. (The SDK's batch processor keeps its drop count to itself, hence our queue.)
//! Span names and attributes carry no query string, token, secret or signature: the path in a
//! name is a template whose id-like segments are replaced by `{id}`.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, TracingConfig, UpstreamConfig};

/// Spans dropped because the export queue was full (`prime_proxy_spans_dropped_total`).
pub static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The instrumentation scope of every span.
const SCOPE: &str = "prime-sigv4-proxy";
/// The OTLP/HTTP path for traces, appended to a base endpoint.
const TRACES_PATH: &str = "/v1/traces";
/// How long the exit waits for the last spans to be exported.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// The largest collector answer read (the OTLP answer is a few bytes).
const MAX_COLLECTOR_ANSWER: usize = 64 * 1024;

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing: the OTLP exporter could not be built: {0}")]
    Exporter(String),
    #[error("tracing: the collector client could not be built: {0}")]
    Client(#[from] crate::upstream::client::ClientError),
    #[error("tracing: the export thread could not start: {0}")]
    Thread(std::io::Error),
}

/// What tracing runs with: `[tracing]` with the standard `OTEL_*` variables applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The full OTLP/HTTP traces URL.
    pub endpoint: String,
    /// `None`: `OTEL_SERVICE_NAME` is set and names the service (the SDK reads it).
    pub service_name: Option<String>,
    /// `None`: `OTEL_TRACES_SAMPLER` is set and chooses the sampler (the SDK reads it).
    pub sampler_ratio: Option<f64>,
    pub queue_size: usize,
    pub max_batch: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The samplers `OTEL_TRACES_SAMPLER` may name (the SDK implements these).
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

impl Settings {
    /// Tracing's settings, or `None` when it is off: no endpoint in `[tracing]` nor in
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, or `OTEL_SDK_DISABLED=true`. A standard variable
    /// that is set wins over the `[tracing]` key of the same meaning. A bad value is refused
    /// naming its key or variable.
    pub fn resolve(
        config: &TracingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let endpoint = if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_endpoint(&url).map_err(|r| invalid("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", r))?;
            url
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            check_endpoint(&base).map_err(|r| invalid("OTEL_EXPORTER_OTLP_ENDPOINT", r))?;
            traces_url(&base)
        } else if !config.otlp_endpoint.is_empty() {
            check_endpoint(&config.otlp_endpoint)
                .map_err(|r| invalid("tracing.otlp_endpoint", r))?;
            traces_url(&config.otlp_endpoint)
        } else {
            return Ok(None);
        };
        let service_name = match var("OTEL_SERVICE_NAME") {
            Some(_) => None,
            None => Some(config.service_name.clone()),
        };
        let sampler_ratio = match var("OTEL_TRACES_SAMPLER") {
            Some(sampler) => {
                if !SAMPLERS.contains(&sampler.trim()) {
                    return Err(invalid(
                        "OTEL_TRACES_SAMPLER",
                        format!("{sampler:?} is not one of {}", SAMPLERS.join(", ")),
                    ));
                }
                if sampler.contains("traceidratio") {
                    let arg = var("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|| "1.0".into());
                    match arg.trim().parse::<f64>() {
                        Ok(ratio) if (0.0..=1.0).contains(&ratio) => {}
                        _ => {
                            return Err(invalid(
                                "OTEL_TRACES_SAMPLER_ARG",
                                format!("{arg:?} is not a ratio from 0 to 1"),
                            ))
                        }
                    }
                }
                None
            }
            None => Some(config.sampler_ratio),
        };
        let number = |name: &str, default: u64, min: u64, max: u64| match var(name) {
            None => Ok(default),
            Some(value) => match value.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(invalid(
                    name,
                    format!("{value:?} is not a whole number from {min} to {max}"),
                )),
            },
        };
        let queue_size = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1, 1_000_000)?;
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 1_000_000)?;
        let schedule_delay = number("OTEL_BSP_SCHEDULE_DELAY", 1000, 1, 600_000)?;
        let export_timeout = number("OTEL_BSP_EXPORT_TIMEOUT", 10_000, 1, 600_000)?;
        Ok(Some(Self {
            endpoint,
            service_name,
            sampler_ratio,
            queue_size: usize::try_from(queue_size).unwrap_or(usize::MAX),
            max_batch: usize::try_from(max_batch.min(queue_size)).unwrap_or(usize::MAX),
            schedule_delay: Duration::from_millis(schedule_delay),
            export_timeout: Duration::from_millis(export_timeout),
        }))
    }
}

/// An OTLP/HTTP endpoint: `http://` or `https://`, a host, no user information or query.
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?} must not carry user information"));
    }
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query"));
    }
    Ok(())
}

/// A base endpoint's traces URL (`http://collector:4318` → `…/v1/traces`), as the OTLP
/// exporter specification derives it from `OTEL_EXPORTER_OTLP_ENDPOINT`; a URL that already
/// ends in `/v1/traces` is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) {
        base.to_owned()
    } else {
        format!("{base}{TRACES_PATH}")
    }
}

/// A request path as it appears in span names and `http.route`: segments that look like
/// ids, tokens or anything but a plain word become `{id}` (`/v1/customers/amzn1.x/benefits`
/// → `/v1/customers/{id}/benefits`). The query is never part of it.
pub fn route_template(path: &str) -> String {
    let mut template = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            template.push('/');
        }
        let version = segment.len() > 1
            && segment.starts_with('v')
            && segment[1..].bytes().all(|b| b.is_ascii_digit());
        let word = segment.len() <= 32
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_');
        if version || word {
            template.push_str(segment);
        } else {
            template.push_str("{id}");
        }
    }
    template
}

/// The running tracer: builds spans; its export thread runs until [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Starts the export thread and the tracer. Must run inside the Tokio runtime (the
    /// collector client is built here).
    pub fn start(
        settings: &Settings,
        upstream: &UpstreamConfig,
    ) -> Result<Arc<Self>, TelemetryError> {
        let client = ExportClient::new(upstream, settings.export_timeout)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        let resource = match &settings.service_name {
            Some(name) => Resource::builder().with_service_name(name.clone()).build(),
            None => Resource::builder().build(),
        };
        exporter.set_resource(&resource);
        let (processor, exporting) = QueueProcessor::new(settings.queue_size);
        let batch = Batch {
            max: settings.max_batch,
            delay: settings.schedule_delay,
            timeout: settings.export_timeout,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TelemetryError::Thread)?;
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || runtime.block_on(exporting.run(exporter, batch)))
            .map_err(TelemetryError::Thread)?;
        let mut builder = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource);
        // Without a ratio, OTEL_TRACES_SAMPLER(_ARG) is set: the SDK's default reads it.
        if let Some(ratio) = settings.sampler_ratio {
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = builder.build();
        let tracer = provider.tracer(SCOPE);
        tracing::info!(endpoint = %settings.endpoint, "tracing on: exporting spans over OTLP/HTTP");
        Ok(Arc::new(Self { provider, tracer }))
    }

    /// The server span of a request, continuing the client's `traceparent`/`tracestate`.
    pub fn server_span(&self, method: &Method, path: &str, headers: &HeaderMap) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let route = route_template(path);
        let span = self
            .tracer
            .span_builder(format!("{} {route}", method.as_str()))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("http.route", route.clone()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestTrace(Arc::new(TraceInner {
            context: parent.with_span(span),
            tracer: self.tracer.clone(),
            route,
        }))
    }

    /// Exports what is queued (for up to two seconds) and stops the export thread.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
            tracing::warn!(%error, "tracing: not every span was exported at exit");
        }
    }
}

/// One request's trace: its server span (in a context, the parent of its attempts).
#[derive(Debug, Clone)]
pub struct RequestTrace(Arc<TraceInner>);

#[derive(Debug)]
struct TraceInner {
    context: Context,
    tracer: SdkTracer,
    route: String,
}

/// What the server span records when the request is done.
pub struct Finished<'a> {
    pub status: u16,
    pub region: &'a str,
    pub marketplace: &'a str,
    pub attempts: u32,
    pub error: Option<&'static str>,
    pub request_id: &'a str,
}

impl RequestTrace {
    /// The trace and span ids of the server span, in hex (for the request's log line).
    pub fn ids(&self) -> (String, String) {
        let span = self.0.context.span();
        let context = span.span_context();
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    }

    /// Ends the server span.
    pub fn finish(&self, done: &Finished<'_>) {
        let span = self.0.context.span();
        let mut attributes = vec![
            KeyValue::new("http.response.status_code", i64::from(done.status)),
            KeyValue::new("prime_proxy.region", done.region.to_owned()),
            KeyValue::new("prime_proxy.attempts", i64::from(done.attempts)),
            KeyValue::new("prime_proxy.request_id", done.request_id.to_owned()),
        ];
        if !done.marketplace.is_empty() {
            attributes.push(KeyValue::new(
                "prime_proxy.marketplace",
                done.marketplace.to_owned(),
            ));
        }
        if let Some(code) = done.error {
            attributes.push(KeyValue::new("prime_proxy.error_code", code));
            attributes.push(KeyValue::new("error.type", code));
        }
        span.set_attributes(attributes);
        if done.status >= 500 || done.error.is_some() {
            span.set_status(Status::error(done.error.unwrap_or("server error")));
        }
        span.end();
    }

    /// The client span of upstream attempt `number` (1 = the first): a child of the server
    /// span; retries are its siblings.
    pub fn attempt(
        &self,
        number: u32,
        method: &Method,
        region: &str,
        host: &str,
        port: u16,
    ) -> AttemptSpan {
        let inner = &self.0;
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("url.template", inner.route.clone()),
            KeyValue::new("server.address", host.to_owned()),
            KeyValue::new("server.port", i64::from(port)),
            KeyValue::new("prime_proxy.region", region.to_owned()),
            KeyValue::new("prime_proxy.attempt", i64::from(number)),
        ];
        if number > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(number - 1),
            ));
        }
        let span = inner
            .tracer
            .span_builder(format!("{} {}", method.as_str(), inner.route))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&inner.tracer, &inner.context);
        AttemptSpan { span }
    }
}

/// One upstream attempt's span; ends when dropped.
#[derive(Debug)]
pub struct AttemptSpan {
    span: Span,
}

impl AttemptSpan {
    /// Time spent waiting for a rate-limit permit, and for credentials.
    pub fn waited(&mut self, permit: Duration, credentials: Duration) {
        self.span.set_attribute(KeyValue::new(
            "prime_proxy.rate_limit_wait_ms",
            permit.as_secs_f64() * 1000.0,
        ));
        self.span.set_attribute(KeyValue::new(
            "prime_proxy.credentials_wait_ms",
            credentials.as_secs_f64() * 1000.0,
        ));
    }

    /// Sets `traceparent` (and `tracestate`) naming this span on the signed request. Added
    /// after signing: never among the signed headers.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let context = Context::new().with_remote_span_context(self.span.span_context().clone());
        headers.remove(TRACESTATE);
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }

    /// The attempt came to an upstream response.
    pub fn answered(&mut self, status: u16, outcome: &'static str) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        self.span
            .set_attribute(KeyValue::new("prime_proxy.outcome", outcome));
        if status >= 500 {
            self.span
                .set_attribute(KeyValue::new("error.type", status.to_string()));
            self.span.set_status(Status::error(outcome));
        }
    }

    /// The attempt failed before a response (connect, TLS, closed, timeout).
    pub fn failed(&mut self, outcome: &'static str) {
        self.span
            .set_attribute(KeyValue::new("prime_proxy.outcome", outcome));
        self.span
            .set_attribute(KeyValue::new("error.type", outcome));
        self.span.set_status(Status::error(outcome));
    }

    /// Another attempt follows this one, for `reason`.
    pub fn retried(&mut self, reason: &'static str) {
        self.span
            .set_attribute(KeyValue::new("prime_proxy.retry_reason", reason));
    }

    /// No attempt was sent: the request stopped at `stage` (`rate_limit`, `credentials`,
    /// `signing`, `total_timeout`).
    pub fn stopped(&mut self, stage: &'static str) {
        self.span
            .set_attribute(KeyValue::new("prime_proxy.stopped_at", stage));
        self.span.set_attribute(KeyValue::new("error.type", stage));
        self.span.set_status(Status::error(stage));
    }
}

const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Hands finished, sampled spans to the export thread through a bounded queue; what does not
/// fit is dropped and counted.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// The export thread's end of the queue.
struct Exporting {
    queue: mpsc::Receiver<SpanData>,
    stop: oneshot::Receiver<()>,
    stopped: std::sync::mpsc::Sender<()>,
}

/// How spans are batched.
#[derive(Debug, Clone, Copy)]
struct Batch {
    max: usize,
    delay: Duration,
    timeout: Duration,
}

impl QueueProcessor {
    fn new(size: usize) -> (Self, Exporting) {
        let (queue_tx, queue_rx) = mpsc::channel(size);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        (
            Self {
                queue: queue_tx,
                stop: Mutex::new(Some(stop_tx)),
                stopped: Mutex::new(Some(stopped_rx)),
            },
            Exporting {
                queue: queue_rx,
                stop: stop_rx,
                stopped: stopped_tx,
            },
        )
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            SPANS_DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut stop| stop.take()) {
            let _ = stop.send(());
        }
        let stopped = self
            .stopped
            .lock()
            .ok()
            .and_then(|mut stopped| stopped.take());
        match stopped.map(|stopped| stopped.recv_timeout(timeout)) {
            Some(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => {
                Err(opentelemetry_sdk::error::OTelSdkError::Timeout(timeout))
            }
            _ => Ok(()),
        }
    }
}

impl Exporting {
    /// Exports batches: of up to `max` spans, sent when full or `delay` after their first
    /// span; each export is bounded by `timeout`. On stop, exports what is queued and ends.
    async fn run(mut self, exporter: opentelemetry_otlp::SpanExporter, batch: Batch) {
        let mut spans = Vec::with_capacity(batch.max);
        let mut failing = false;
        loop {
            tokio::select! {
                received = self.queue.recv_many(&mut spans, batch.max) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = &mut self.stop => break,
            }
            let gather = tokio::time::sleep(batch.delay);
            tokio::pin!(gather);
            while spans.len() < batch.max {
                let room = batch.max - spans.len();
                tokio::select! {
                    received = self.queue.recv_many(&mut spans, room) => {
                        if received == 0 {
                            break;
                        }
                    }
                    () = &mut gather => break,
                }
            }
            export(
                &exporter,
                std::mem::take(&mut spans),
                batch.timeout,
                &mut failing,
            )
            .await;
        }
        // Stopping: what is queued now goes out, then the thread ends.
        while let Ok(span) = self.queue.try_recv() {
            spans.push(span);
            if spans.len() == batch.max {
                export(
                    &exporter,
                    std::mem::take(&mut spans),
                    batch.timeout,
                    &mut failing,
                )
                .await;
            }
        }
        if !spans.is_empty() {
            export(&exporter, spans, batch.timeout, &mut failing).await;
        }
        let _ = self.stopped.send(());
    }
}

/// One export, bounded by `timeout`; a failure is logged once until an export succeeds.
async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    spans: Vec<SpanData>,
    timeout: Duration,
    failing: &mut bool,
) {
    let count = spans.len();
    let result = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    match result {
        Ok(()) => *failing = false,
        Err(error) if !*failing => {
            *failing = true;
            tracing::warn!(%error, spans = count, "tracing: spans could not be exported (further failures are not logged until an export succeeds)");
        }
        Err(_) => {}
    }
}

/// The collector client: hyper over rustls (the proxy's aws-lc-rs provider, the system roots
/// plus `upstream.ca_file`), plain `http://` allowed (a collector is usually in-cluster).
#[derive(Debug)]
struct ExportClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl ExportClient {
    fn new(upstream: &UpstreamConfig, timeout: Duration) -> Result<Self, TelemetryError> {
        let tls = crate::upstream::client::tls_config(upstream)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, timeout })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_COLLECTOR_ANSWER)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err("the collector did not answer in time".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn route_templates_hide_ids_and_tokens() {
        assert_eq!(route_template("/v1/link/accounts"), "/v1/link/accounts");
        assert_eq!(
            route_template("/v1/customers/amzn1.account.AF3X/benefits"),
            "/v1/customers/{id}/benefits"
        );
        assert_eq!(route_template("/v1/a/Atza|IwEB+x/="), "/v1/a/{id}/{id}");
        assert_eq!(route_template("/v1/12345"), "/v1/{id}");
        assert_eq!(route_template("/"), "/");
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        let config = TracingConfig::default();
        assert_eq!(Settings::resolve(&config, env(&[])).unwrap(), None);
        let config = TracingConfig {
            otlp_endpoint: "http://collector:4318".into(),
            ..TracingConfig::default()
        };
        assert_eq!(
            Settings::resolve(&config, env(&[("OTEL_SDK_DISABLED", "true")])).unwrap(),
            None
        );
        let on = Settings::resolve(&config, env(&[])).unwrap().unwrap();
        assert_eq!(on.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(on.service_name.as_deref(), Some("prime-sigv4-proxy"));
        assert_eq!(on.sampler_ratio, Some(1.0));
    }

    #[test]
    fn standard_variables_win_over_the_section() {
        let config = TracingConfig {
            otlp_endpoint: "http://collector:4318".into(),
            ..TracingConfig::default()
        };
        let on = Settings::resolve(
            &config,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://other:4318/"),
                ("OTEL_SERVICE_NAME", "checkout-proxy"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.endpoint, "https://other:4318/v1/traces");
        assert_eq!(on.service_name, None);
        assert_eq!(on.sampler_ratio, None);
        let traces = Settings::resolve(
            &TracingConfig::default(),
            env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(traces.endpoint, "http://c:4318/custom");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let refused = |vars: &'static [(&'static str, &'static str)]| {
            Settings::resolve(&TracingConfig::default(), env(vars))
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])
                .contains("OTEL_EXPORTER_OTLP_ENDPOINT")
        );
        assert!(refused(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "sometimes")
        ])
        .contains("OTEL_TRACES_SAMPLER"));
        assert!(refused(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2")
        ])
        .contains("OTEL_TRACES_SAMPLER_ARG"));
        assert!(refused(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0")
        ])
        .contains("OTEL_BSP_MAX_QUEUE_SIZE"));
    }
}
