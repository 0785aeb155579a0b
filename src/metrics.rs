//! The Prometheus series the admin listener serves (names and labels are part of the SPEC).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

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
pub struct ReplayLabels {
    pub region: Arc<str>,
    pub reason: &'static str,
}

/// The `reason` labels of `prime_proxy_upstream_unprocessed_replays_total`.
pub const REPLAY_REASONS: [&str; 3] = ["refused_stream", "goaway", "not_sent"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    pub region: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverloadLabels {
    pub reason: &'static str,
}

/// The `reason` labels of `prime_proxy_overloaded_total`: `listener.max_in_flight` reached, or
/// a request body that did not fit `listener.max_buffered_bytes`.
pub const OVERLOAD_REASONS: [&str; 2] = ["in_flight", "memory_budget"];

/// The `outcome` labels of `prime_proxy_upstream_attempts_total`.
pub const ATTEMPT_OUTCOMES: [&str; 5] = [
    "response",
    "retryable_status",
    "connect_error",
    "connection_closed",
    "timeout",
];

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
    /// `prime_proxy_overloaded_total{reason}`: requests answered 503 `overloaded`.
    pub overloaded: Family<OverloadLabels, Counter>,
    pub retry_budget_exhausted: Family<RegionLabels, Counter>,
    pub retry_budget_tokens: Family<RegionLabels, Gauge>,
    pub in_flight: Gauge,
    pub upstream_connections: Family<RegionLabels, Gauge>,
    pub upstream_stream_waits: Family<RegionLabels, Counter>,
    pub upstream_replays: Family<ReplayLabels, Counter>,
    pub upstream_auth_failures: Family<AuthFailureLabels, Counter>,
    pub buffered_bytes: Gauge,
    pub credentials_expiry: Gauge<f64, AtomicU64>,
    pub clock_offset: Gauge<f64, AtomicU64>,
    /// `prime_proxy_rate_limit_shared_*`: the shared rate limit's series.
    pub shared_limit: crate::limit::SharedLimitMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Counts one request answered 503 `overloaded`; `reason` is one of [`OVERLOAD_REASONS`].
    pub fn overloaded_by(&self, reason: &'static str) {
        self.overloaded
            .get_or_create(&OverloadLabels { reason })
            .inc();
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("prime_proxy");
        let metrics = Metrics {
            requests: Family::default(),
            upstream_attempts: Family::default(),
            retries: Family::default(),
            request_duration: Family::new_with_constructor(DurationBuckets),
            rate_limited: Counter::default(),
            overloaded: Family::default(),
            retry_budget_exhausted: Family::default(),
            retry_budget_tokens: Family::default(),
            in_flight: Gauge::default(),
            upstream_connections: Family::default(),
            upstream_stream_waits: Family::default(),
            upstream_replays: Family::default(),
            upstream_auth_failures: Family::default(),
            buffered_bytes: Gauge::default(),
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
            "Time from request received to its answer complete (the head for a buffered answer, the end of the body for a streamed one), by region",
            metrics.request_duration.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests rejected by the local rate limit",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "overloaded",
            "Requests answered 503 overloaded, by reason (in_flight: listener.max_in_flight reached; memory_budget: the body did not fit listener.max_buffered_bytes)",
            metrics.overloaded.clone(),
        );
        // Both series exist from the start, so an alert on either has something to read.
        for reason in OVERLOAD_REASONS {
            drop(metrics.overloaded.get_or_create(&OverloadLabels { reason }));
        }
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the region's retry budget was empty",
            metrics.retry_budget_exhausted.clone(),
        );
        registry.register(
            "retry_budget_tokens",
            "Tokens left in the region's retry budget",
            metrics.retry_budget_tokens.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            metrics.in_flight.clone(),
        );
        registry.register(
            "upstream_connections",
            "Open TLS connections to the region's Prime endpoint",
            metrics.upstream_connections.clone(),
        );
        registry.register(
            "upstream_stream_waits",
            "HTTP/2 attempts that waited for a stream: every connection to the endpoint was at the server's SETTINGS_MAX_CONCURRENT_STREAMS and upstream.http2_max_connections were open",
            metrics.upstream_stream_waits.clone(),
        );
        registry.register(
            "upstream_unprocessed_replays",
            "HTTP/2 requests the server did not process (refused_stream, goaway: above the GOAWAY's last stream id, not_sent: the connection was gone before the stream left), sent again on another stream within the same attempt",
            metrics.upstream_replays.clone(),
        );
        registry.register(
            "upstream_auth_failures",
            "Prime's 403 answers, by region and the kind Prime names in x-amzn-ErrorType",
            metrics.upstream_auth_failures.clone(),
        );
        registry.register(
            "buffered_body_bytes",
            "Bytes of request and response bodies held against listener.max_buffered_bytes",
            metrics.buffered_bytes.clone(),
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
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stdout was not being read",
            crate::logging::LINES_DROPPED.clone(),
        );
        registry.register(
            "spans_dropped",
            "Trace spans dropped because the export queue was full (tracing on)",
            crate::telemetry::SPANS_DROPPED.clone(),
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

/// One region's series, resolved once at start so the request path increments a counter
/// instead of hashing a label set under the family's lock.
#[derive(Debug)]
pub struct RegionMetrics {
    pub region: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    /// `prime_proxy_requests_total` by status code, resolved on first use.
    by_status: Box<[OnceLock<Counter>]>,
    pub duration: Histogram,
    attempts: [Counter; ATTEMPT_OUTCOMES.len()],
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub budget_tokens: Gauge,
    pub connections: Gauge,
    pub stream_waits: Counter,
    replays: [Counter; REPLAY_REASONS.len()],
    auth_failures: Family<AuthFailureLabels, Counter>,
}

/// The handle of `family`'s series `labels` when `register`, else a handle that counts
/// nothing anyone scrapes (the series does not exist).
fn registered_if<S, M>(register: bool, family: &Family<S, M>, labels: &S) -> M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
{
    if register {
        family.get_or_create(labels).clone()
    } else {
        M::default()
    }
}

impl RegionMetrics {
    /// The handles of region `region` (or [`NO_REGION`]). Requests that matched no region
    /// have no upstream: their attempt, retry, budget and connection handles are not
    /// registered, so no `region="none"` budget at 0 or connection gauge shows up beside the
    /// real regions (a `min(prime_proxy_retry_budget_tokens)` alert would fire on it).
    pub fn new(metrics: &Metrics, region: &Arc<str>) -> Self {
        let labels = RegionLabels {
            region: Arc::clone(region),
        };
        let upstream = &**region != NO_REGION;
        let attempts = ATTEMPT_OUTCOMES.map(|outcome| {
            let labels = AttemptLabels {
                region: Arc::clone(region),
                outcome,
            };
            registered_if(upstream, &metrics.upstream_attempts, &labels)
        });
        Self {
            region: Arc::clone(region),
            requests: metrics.requests.clone(),
            by_status: (0..600).map(|_| OnceLock::new()).collect(),
            duration: metrics.request_duration.get_or_create(&labels).clone(),
            attempts,
            retries: registered_if(upstream, &metrics.retries, &labels),
            budget_exhausted: registered_if(upstream, &metrics.retry_budget_exhausted, &labels),
            budget_tokens: registered_if(upstream, &metrics.retry_budget_tokens, &labels),
            connections: registered_if(upstream, &metrics.upstream_connections, &labels),
            stream_waits: registered_if(upstream, &metrics.upstream_stream_waits, &labels),
            replays: REPLAY_REASONS.map(|reason| {
                let labels = ReplayLabels {
                    region: Arc::clone(region),
                    reason,
                };
                registered_if(upstream, &metrics.upstream_replays, &labels)
            }),
            auth_failures: metrics.upstream_auth_failures.clone(),
        }
    }

    /// Counts one answered request with `status`.
    pub fn request(&self, status: u16) {
        match self.by_status.get(usize::from(status)) {
            Some(slot) => slot
                .get_or_init(|| {
                    self.requests
                        .get_or_create(&RequestLabels {
                            region: Arc::clone(&self.region),
                            status,
                        })
                        .clone()
                })
                .inc(),
            None => self
                .requests
                .get_or_create(&RequestLabels {
                    region: Arc::clone(&self.region),
                    status,
                })
                .inc(),
        };
    }

    /// Counts one upstream attempt by its outcome label (one of [`ATTEMPT_OUTCOMES`]).
    pub fn attempt(&self, outcome: &'static str) {
        if let Some(i) = ATTEMPT_OUTCOMES.iter().position(|known| *known == outcome) {
            self.attempts[i].inc();
        }
    }

    /// Counts one HTTP/2 replay by its reason label (one of [`REPLAY_REASONS`]).
    pub fn replay(&self, reason: &'static str) {
        if let Some(i) = REPLAY_REASONS.iter().position(|known| *known == reason) {
            self.replays[i].inc();
        }
    }

    /// Counts one 403 from Prime of `kind`.
    pub fn auth_failure(&self, kind: &'static str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels {
                region: Arc::clone(&self.region),
                kind,
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
