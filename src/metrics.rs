//! The Prometheus series the admin listener serves (names and labels are part of the SPEC).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `region` label value for requests that matched no region.
pub const NO_REGION: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub region: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub region: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: Arc<str>,
}

/// Latency buckets: Prime's server-side P99 is about 140 ms; the proxy adds well under 1 ms.
#[derive(Clone)]
pub struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ])
    }
}

/// Every series, registered once at start.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_attempts: Family<AttemptLabels, Counter>,
    pub retries: Family<RegionLabels, Counter>,
    pub request_duration: Family<RegionLabels, Histogram, DurationBuckets>,
    pub rate_limited: Counter,
    pub retry_budget_exhausted: Counter,
    pub retry_budget_tokens: Gauge,
    pub in_flight: Gauge,
    pub upstream_connections: Gauge,
    pub credentials_expiry: Gauge<f64, AtomicU64>,
    pub clock_offset: Gauge<f64, AtomicU64>,
    /// `prime_proxy_rate_limit_shared_*` (the shared rate limit, issue 10).
    pub shared_limit: crate::limit::SharedLimitMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("prime_proxy");
        let metrics = Metrics {
            requests: Family::default(),
            upstream_attempts: Family::default(),
            retries: Family::default(),
            request_duration: Family::new_with_constructor(DurationBuckets),
            rate_limited: Counter::default(),
            retry_budget_exhausted: Counter::default(),
            retry_budget_tokens: Gauge::default(),
            in_flight: Gauge::default(),
            upstream_connections: Gauge::default(),
            credentials_expiry: Gauge::default(),
            clock_offset: Gauge::default(),
            shared_limit: crate::limit::SharedLimitMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by region and status",
            metrics.requests.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Upstream attempts by region and outcome (response, retryable_status, connect_error, connection_closed, timeout)",
            metrics.upstream_attempts.clone(),
        );
        registry.register(
            "retries",
            "Upstream retries, by region",
            metrics.retries.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response head sent, by region",
            metrics.request_duration.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests rejected by the local rate limit",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the shared retry budget was empty",
            metrics.retry_budget_exhausted.clone(),
        );
        registry.register(
            "retry_budget_tokens",
            "Tokens left in the shared retry budget",
            metrics.retry_budget_tokens.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            metrics.in_flight.clone(),
        );
        registry.register(
            "upstream_connections",
            "Open TLS connections to Prime endpoints",
            metrics.upstream_connections.clone(),
        );
        registry.register(
            "credentials_expiry_seconds",
            "Seconds until the held AWS credentials expire (0: none held; 1.8e308: no expiry)",
            metrics.credentials_expiry.clone(),
        );
        registry.register(
            "clock_offset_seconds",
            "Offset added to the local clock when signing, learnt from Prime's Date header",
            metrics.clock_offset.clone(),
        );
        metrics.shared_limit.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
