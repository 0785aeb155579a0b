//! One request's journey, stage by stage: route → prepare → limit → sign and forward
//! (with retries) → respond; plus the per-request log line and metrics.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ProxyError;
use crate::limit::RateLimiter;
use crate::metrics::{Metrics, RegionLabels, RequestLabels, NO_REGION};
use crate::prepare::{self, X_AMZ_MARKETPLACE};
use crate::respond;
use crate::route::{MarketplaceTable, Region};
use crate::upstream::{Forwarded, Outgoing, ResponseBody, Upstream};

/// The shared state of the request path.
pub struct Proxy {
    table: MarketplaceTable,
    limiter: RateLimiter,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    max_body_bytes: u64,
    body_read_timeout: Duration,
    in_flight: Semaphore,
    no_region: Arc<str>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        table: MarketplaceTable,
        upstream: Upstream,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            table,
            limiter: RateLimiter::new(&config.rate_limit, &metrics),
            upstream,
            metrics,
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.listener.body_read_timeout_ms),
            in_flight: Semaphore::new(config.listener.max_in_flight),
            no_region: Arc::from(NO_REGION),
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Handles one client request; never fails: errors become the SPEC's JSON responses.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let request_id = prepare::request_id(request.headers());
        let method = request.method().clone();
        let uri = request.uri().clone();
        let marketplace = request.headers().get(&X_AMZ_MARKETPLACE).cloned();

        let _in_flight = InFlight::enter(&self.metrics);
        let (region, outcome) = match self.in_flight.try_acquire() {
            Ok(_permit) => self.process(request, &request_id).await,
            Err(_) => (
                None,
                Forwarded {
                    result: Err(ProxyError::Overloaded),
                    attempts: 0,
                },
            ),
        };
        let (response, error_code) = match outcome.result {
            Ok(response) => (respond::upstream(response, &request_id), None),
            Err(error) => {
                if matches!(error, ProxyError::Limit(_)) {
                    self.metrics.rate_limited.inc();
                }
                (
                    respond::error(&error, &request_id),
                    Some((error.code(), error.to_string())),
                )
            }
        };

        let elapsed = started.elapsed();
        let region_label = region.as_ref().map_or(&self.no_region, |r| &r.key);
        let status = response.status().as_u16();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                region: Arc::clone(region_label),
                status,
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&RegionLabels {
                region: Arc::clone(region_label),
            })
            .observe(elapsed.as_secs_f64());
        // The query is never logged: it carries customerIdentifier (an LWA token).
        tracing::info!(
            method = %method,
            path = uri.path(),
            marketplace = marketplace.as_ref().and_then(|m| m.to_str().ok()).unwrap_or(""),
            region = &**region_label,
            status,
            attempts = outcome.attempts,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = request_id.to_str().unwrap_or(""),
            error = error_code.as_ref().map(|(code, _)| *code),
            reason = error_code.as_ref().map(|(_, message)| message.as_str()),
            "request"
        );
        response
    }

    /// The stages that can fail; returns the region when routing succeeded (for metrics).
    async fn process<B>(
        &self,
        request: Request<B>,
        request_id: &HeaderValue,
    ) -> (Option<Arc<Region>>, Forwarded)
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let fail = |region: Option<Arc<Region>>, error: ProxyError| {
            (
                region,
                Forwarded {
                    result: Err(error),
                    attempts: 0,
                },
            )
        };
        let region = match self.table.route(request.headers().get(&X_AMZ_MARKETPLACE)) {
            Ok(region) => Arc::clone(region),
            Err(e) => return fail(None, e.into()),
        };
        let (parts, body) = request.into_parts();
        if let Err(e) = prepare::check_target(&parts.method, &parts.uri, parts.version)
            .and_then(|()| prepare::check_signed_headers(&parts.headers))
        {
            return fail(Some(region), e.into());
        }
        let query = match prepare::normalize_query(parts.uri.query().unwrap_or_default()) {
            Ok(query) => query,
            Err(e) => return fail(Some(region), e.into()),
        };
        let uri = match prepare::upstream_uri(&region.origin, parts.uri.path(), &query) {
            Ok(uri) => uri,
            Err(e) => return fail(Some(region), e.into()),
        };
        let body = match prepare::read_body(
            body,
            &parts.headers,
            self.max_body_bytes,
            self.body_read_timeout,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => return fail(Some(region), e.into()),
        };
        if let Err(e) = self.limiter.acquire(&parts.method, parts.uri.path()).await {
            return fail(Some(region), e.into());
        }
        let headers = prepare::forward_headers(parts.headers, &region.host, request_id, body.len());
        let outgoing = Outgoing {
            method: parts.method,
            uri,
            headers,
            body,
            region: Arc::clone(&region),
        };
        let forwarded = self.upstream.forward(&outgoing).await;
        (Some(region), forwarded)
    }
}

/// Counts a request in `prime_proxy_in_flight_requests` for as long as it lives.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}
