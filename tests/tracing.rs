//! OpenTelemetry traces (`[tracing]`), with the real binary, the three verifying
//! TLS fake Primes, and a real OTLP/HTTP receiver in the test that decodes each export with
//! the official OpenTelemetry proto definitions (`opentelemetry-proto` + prost).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One export as received: its raw bytes (searched for secrets) and its decoded request.
type Export = (Vec<u8>, ExportTraceServiceRequest);

/// A collector: OTLP/HTTP protobuf on `/v1/traces`, each export kept raw and decoded.
struct Collector {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&exports);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sink = Arc::clone(&sink);
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let decoded = ExportTraceServiceRequest::decode(body.clone())
                                .expect("an OTLP ExportTraceServiceRequest");
                            sink.lock().unwrap().push((body.to_vec(), decoded));
                            let mut response = Response::new(Full::new(Bytes::new()));
                            response
                                .headers_mut()
                                .insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, exports }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, export)| export.resource_spans.clone())
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans)
            .collect()
    }

    fn spans_of(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .collect()
    }

    fn raw(&self) -> Vec<u8> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(raw, _)| raw.clone())
            .collect()
    }

    fn resource_attributes(&self) -> Vec<KeyValue> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, export)| export.resource_spans.clone())
            .filter_map(|resource| resource.resource)
            .flat_map(|resource| resource.attributes)
            .collect()
    }
}

/// A collector that accepts connections and never answers (nor reads).
async fn stalled_collector() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(Value::IntValue(n)) => Some(n),
        _ => None,
    }
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn tracing_config(endpoint: &str) -> String {
    format!("[tracing]\notlp_endpoint = \"{endpoint}\"\n")
}

/// The binary with the static key and a session token (both must stay out of every span),
/// exporting quickly.
fn traced_command(pki: &Pki) -> tokio::process::Command {
    let mut command = command_with_static_key(pki.dir.path());
    command
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    command
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_client_trace_is_continued_with_one_server_span_and_sibling_attempt_spans_prime_sees() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let collector = Collector::start().await;
    let mut command = traced_command(&pki);
    command.env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test");
    let proxy = ProxyProcess::start(
        command,
        &regions_config_file(&pki, &ups, &tracing_config(&collector.endpoint())),
    )
    .await;
    let upstream = ups.for_marketplace("US");
    upstream.push([Action::status(503)]);
    let account = "amzn1.account.AF3XQ7ZT";
    let reply = get(
        &keep_alive_client(),
        &proxy.url(&format!(
            "/v1/customers/{account}/benefits?customerIdentifier={LWA_TOKEN_CANONICAL}"
        )),
        &[
            ("x-amz-marketplace", "US"),
            ("x-amz-request-id", "trace-1"),
            (
                "traceparent",
                &format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"),
            ),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(
        eventually(Duration::from_secs(10), || collector
            .spans_of(CLIENT_TRACE)
            .len()
            >= 3)
        .await,
        "spans exported: {:?}",
        collector.spans()
    );
    let spans = collector.spans_of(CLIENT_TRACE);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1, "one server span: {spans:#?}");
    let server = server[0];
    assert_eq!(hex(&server.parent_span_id), CLIENT_PARENT);
    assert_eq!(server.name, "GET /v1/customers/{id}/benefits");
    assert_eq!(int(server, "http.response.status_code"), Some(200));
    assert_eq!(text(server, "prime_proxy.region").as_deref(), Some("na"));
    assert_eq!(
        text(server, "prime_proxy.marketplace").as_deref(),
        Some("US")
    );
    assert_eq!(int(server, "prime_proxy.attempts"), Some(2));
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|s| int(s, "prime_proxy.attempt"));
    assert_eq!(attempts.len(), 2, "two attempt spans: {spans:#?}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(
            attempt.parent_span_id, server.span_id,
            "attempts are siblings under the server span"
        );
        assert_eq!(int(attempt, "prime_proxy.attempt"), Some(i as i64 + 1));
        assert!(int(attempt, "http.response.status_code").is_some());
        assert!(matches!(
            attribute(attempt, "prime_proxy.rate_limit_wait_ms"),
            Some(Value::DoubleValue(_))
        ));
        assert!(matches!(
            attribute(attempt, "prime_proxy.credentials_wait_ms"),
            Some(Value::DoubleValue(_))
        ));
    }
    assert_eq!(int(attempts[0], "http.response.status_code"), Some(503));
    assert_eq!(
        text(attempts[0], "prime_proxy.retry_reason").as_deref(),
        Some("retryable_status")
    );
    assert_eq!(int(attempts[1], "http.response.status_code"), Some(200));
    assert_eq!(text(attempts[1], "prime_proxy.retry_reason"), None);

    // Prime received, on each attempt, a traceparent naming that attempt's span, outside a
    // signature that still verifies.
    let received: Vec<Received> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.header("x-amz-request-id") == Some("trace-1"))
        .collect();
    assert_eq!(received.len(), 2);
    let mut signatures = Vec::new();
    for (attempt, request) in attempts.iter().zip(&received) {
        request.assert_signed();
        assert_eq!(
            request.header("traceparent"),
            Some(format!("00-{CLIENT_TRACE}-{}-01", hex(&attempt.span_id)).as_str())
        );
        assert_eq!(request.header_count("traceparent"), 1);
        assert_eq!(request.header("tracestate"), Some("vendor=abc"));
        let signed = request.signed_headers();
        assert!(
            !signed
                .iter()
                .any(|h| h == "traceparent" || h == "tracestate"),
            "trace headers are not signed: {signed:?}"
        );
        let authorization = request.header("authorization").unwrap();
        signatures.push(
            authorization
                .rsplit("Signature=")
                .next()
                .unwrap()
                .to_owned(),
        );
    }

    // The request log line names the server span.
    let line = proxy.request_line(|l| l["request_id"] == "trace-1").await;
    assert_eq!(line["trace_id"], CLIENT_TRACE);
    assert_eq!(line["span_id"], hex(&server.span_id));

    // Resource: the default service name and OTEL_RESOURCE_ATTRIBUTES.
    let resource = collector.resource_attributes();
    let resource_text = |key: &str| {
        resource.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(Value::StringValue(s)) => Some(s),
                _ => None,
            }
        })
    };
    assert_eq!(
        resource_text("service.name").as_deref(),
        Some("prime-sigv4-proxy")
    );
    assert_eq!(
        resource_text("deployment.environment").as_deref(),
        Some("test")
    );

    // Not one exported byte carries a secret, token, signature, the query or the path's id.
    let raw = collector.raw();
    let mut secrets = vec![
        SECRET_KEY.to_owned(),
        SESSION_TOKEN.to_owned(),
        LWA_TOKEN.to_owned(),
        LWA_TOKEN_CANONICAL.to_owned(),
        "customerIdentifier".to_owned(),
        "Atza".to_owned(),
        account.to_owned(),
    ];
    secrets.extend(signatures);
    for secret in &secrets {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} is in an exported span"
        );
    }
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn without_a_client_trace_each_request_starts_its_own_and_a_ratio_of_zero_exports_nothing() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let collector = Collector::start().await;
    let proxy = ProxyProcess::start(
        traced_command(&pki),
        &regions_config_file(&pki, &ups, &tracing_config(&collector.endpoint())),
    )
    .await;
    let client = keep_alive_client();
    for i in 0..3 {
        let id = format!("root-{i}");
        let reply = get(
            &client,
            &proxy.url("/v1/benefits"),
            &[("x-amz-marketplace", "DE"), ("x-amz-request-id", &id)],
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || collector.spans().len() >= 6).await,
        "{:?}",
        collector.spans()
    );
    let roots: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(roots.len(), 3);
    assert!(roots.iter().all(|s| s.parent_span_id.is_empty()));
    let traces: std::collections::HashSet<Vec<u8>> =
        roots.iter().map(|s| s.trace_id.clone()).collect();
    assert_eq!(traces.len(), 3, "one trace per request");
    assert_eq!(proxy.terminate().await.code(), Some(0));

    // sampler_ratio = 0: nothing is exported, Prime still gets a (not sampled) traceparent.
    let collector = Collector::start().await;
    let extra = format!(
        "{}sampler_ratio = 0.0\n",
        tracing_config(&collector.endpoint())
    );
    let proxy = ProxyProcess::start(
        traced_command(&pki),
        &regions_config_file(&pki, &ups, &extra),
    )
    .await;
    let reply = get(
        &client,
        &proxy.url("/v1/benefits"),
        &[
            ("x-amz-marketplace", "JP"),
            ("x-amz-request-id", "unsampled"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let (_, received) = ups.find("unsampled").unwrap();
    received.assert_signed();
    let traceparent = received.header("traceparent").unwrap();
    assert!(traceparent.ends_with("-00"), "{traceparent}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.terminate().await.code(), Some(0));
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());
}

/// Median and maximum of `n` sequential requests' latencies.
async fn latencies(proxy: &ProxyProcess, client: &PlainClient, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let marketplace = ["US", "DE", "JP"][i % 3];
        let reply = get(
            client,
            &proxy.url("/v1/benefits"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
        assert_eq!(reply.status, 200);
        times.push(started.elapsed());
    }
    times.sort();
    (times[n / 2], times[n - 1])
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_spans_not_request_time() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let stalled = stalled_collector().await;
    let mut command = traced_command(&pki);
    command.env("OTEL_BSP_MAX_QUEUE_SIZE", "64");
    let traced = ProxyProcess::start(
        command,
        &regions_config_file(&pki, &ups, &tracing_config(&format!("http://{stalled}"))),
    )
    .await;
    let plain = ProxyProcess::start(
        command_with_static_key(pki.dir.path()),
        &regions_config_file(&pki, &ups, ""),
    )
    .await;
    let (traced_client, plain_client) = (keep_alive_client(), keep_alive_client());
    // Warm both pools, then interleave rounds so both see the same machine.
    latencies(&traced, &traced_client, 6).await;
    latencies(&plain, &plain_client, 6).await;
    let mut traced_medians = Vec::new();
    let mut plain_medians = Vec::new();
    let mut traced_max = Duration::ZERO;
    for _ in 0..4 {
        let (median, max) = latencies(&traced, &traced_client, 60).await;
        traced_medians.push(median);
        traced_max = traced_max.max(max);
        plain_medians.push(latencies(&plain, &plain_client, 60).await.0);
    }
    traced_medians.sort();
    plain_medians.sort();
    let (traced_median, plain_median) = (traced_medians[2], plain_medians[2]);
    assert!(
        traced_median <= plain_median * 3 + Duration::from_millis(5),
        "traced median {traced_median:?} against {plain_median:?} without tracing"
    );
    // An export waits up to its 10 s timeout: a request that waited on it would show.
    assert!(
        traced_max < Duration::from_secs(2),
        "slowest traced request {traced_max:?}"
    );
    // 246 requests, two spans each, against a queue of 64 (and one batch of 64 stuck in the
    // stalled export): at least 492 - 128 were dropped, and counted.
    let dropped = metric_value(&traced.metrics().await, "prime_proxy_spans_dropped_total")
        .expect("prime_proxy_spans_dropped_total");
    assert!(dropped >= 364.0, "dropped {dropped}");
    assert_eq!(
        metric_value(&plain.metrics().await, "prime_proxy_spans_dropped_total"),
        Some(0.0)
    );
    // Tracing off: the log line has no trace ids.
    let line = plain.request_line(|_| true).await;
    assert!(line.get("trace_id").is_none(), "{line}");
    // The exit does not wait for the stalled export beyond its bounded flush.
    let exit = Instant::now();
    assert_eq!(traced.terminate().await.code(), Some(0));
    assert!(
        exit.elapsed() < Duration::from_secs(8),
        "{:?}",
        exit.elapsed()
    );
    assert_eq!(plain.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn bad_tracing_settings_are_refused_naming_the_key() {
    let pki = Pki::new();
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "PRIME_PROXY_TRACING__OTLP_ENDPOINT",
            "collector:4318",
            "",
            "tracing.otlp_endpoint",
        ),
        (
            "PRIME_PROXY_TRACING__SAMPLER_RATIO",
            "1.5",
            "",
            "tracing.sampler_ratio",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://collector",
            "",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            "OTEL_TRACES_SAMPLER",
            "sometimes",
            "http://127.0.0.1:4318",
            "OTEL_TRACES_SAMPLER",
        ),
    ];
    for (name, value, endpoint, key) in cases {
        let mut command = clean_command(pki.dir.path());
        command.arg("--check-config").env(name, value);
        if !endpoint.is_empty() {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(key), "{name}={value}: {stderr}");
    }
}
