//! One request's journey, stage by stage: route → prepare → (limit, sign, forward with
//! retries, in [`crate::upstream`]) → respond; and its log line, written once when the
//! request is done ([`crate::access_log`]).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::error::ProxyError;
use crate::metrics::{Metrics, RegionMetrics, NO_REGION};
use crate::prepare::{self, PrepareError, X_AMZ_MARKETPLACE};
use crate::respond::{self, ClientBody};
use crate::route::MarketplaceTable;
use crate::telemetry::Telemetry;
use crate::upstream::{Forwarded, Outgoing, Upstream, UpstreamBody, UpstreamError};

/// The shared state of the request path.
pub struct Proxy {
    table: MarketplaceTable,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    max_body_bytes: u64,
    body_read_timeout: Duration,
    in_flight: Semaphore,
    /// Metric handles for requests that matched no region.
    no_region: Arc<RegionMetrics>,
    /// Set while tracing is on; with it off, a request pays this one branch.
    telemetry: Option<Arc<Telemetry>>,
}

/// A successful upstream exchange: the response, the attempts it took, and a 403's hint.
type Answer = (Response<UpstreamBody>, u32, Option<&'static str>);

/// Where a request got to: its region's metrics (once routed) and its answer, or the error
/// the proxy answers itself with the attempts made.
struct Processed {
    region: Option<Arc<RegionMetrics>>,
    result: Result<Answer, (ProxyError, u32)>,
}

impl Processed {
    fn failed(region: Option<Arc<RegionMetrics>>, error: ProxyError) -> Self {
        Self {
            region,
            result: Err((error, 0)),
        }
    }

    fn forwarded(region: Arc<RegionMetrics>, forwarded: Forwarded) -> Self {
        let Forwarded {
            result,
            attempts,
            hint,
        } = forwarded;
        Self {
            region: Some(region),
            result: match result {
                Ok(response) => Ok((response, attempts, hint)),
                Err(error) => Err((error.into(), attempts)),
            },
        }
    }
}

impl Proxy {
    pub fn new(
        config: &Config,
        table: MarketplaceTable,
        upstream: Upstream,
        metrics: Arc<Metrics>,
    ) -> Self {
        let no_region = Arc::new(RegionMetrics::new(&metrics, &Arc::from(NO_REGION)));
        Self {
            table,
            upstream,
            metrics,
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.listener.body_read_timeout_ms),
            // Validated to fit the semaphore at start.
            in_flight: Semaphore::new(config.listener.max_in_flight.min(Semaphore::MAX_PERMITS)),
            no_region,
            telemetry: None,
        }
    }

    /// Traces every request from now on (`[tracing]`).
    pub fn with_telemetry(mut self, telemetry: Option<Arc<Telemetry>>) -> Self {
        self.telemetry = telemetry;
        self
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Handles one client request; never fails: errors become the SPEC's JSON responses.
    ///
    /// If the client goes away first, this future is dropped: the upstream attempt with it,
    /// and the request's log line is written by [`AccessLog`]'s drop as 499. `received_at`:
    /// when the request's first byte arrived, where its logged duration starts.
    pub async fn handle<B>(&self, request: Request<B>, received_at: Instant) -> Response<ClientBody>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let request_id = prepare::request_id(request.headers());
        let mut log = AccessLog::start(
            received_at,
            request.method().clone(),
            request.uri().clone(),
            request.headers().get(&X_AMZ_MARKETPLACE).cloned(),
            request_id.clone(),
            Arc::clone(&self.no_region),
        );
        if let Some(telemetry) = &self.telemetry {
            log.set_trace(telemetry.server_span(
                request.method(),
                request.uri().path(),
                request.headers(),
            ));
        }
        let _in_flight = InFlight::enter(&self.metrics);
        let Processed { region, result } = match self.in_flight.try_acquire() {
            Ok(_permit) => self.process(request, &request_id, &mut log).await,
            Err(_) => Processed::failed(None, ProxyError::Overloaded),
        };
        if let Some(region) = &region {
            log.set_region(region);
        }
        match result {
            Ok((response, attempts, hint)) => {
                log.set_attempts(attempts);
                log.answered(response.status().as_u16(), None, hint.map(str::to_owned));
                if ClientBody::is_streamed(response.body()) {
                    // Written when the body ends, breaks off or is dropped.
                    respond::upstream(response, &request_id, Some(log))
                } else {
                    log.finish();
                    respond::upstream(response, &request_id, None)
                }
            }
            Err((error, attempts)) => {
                match &error {
                    ProxyError::Upstream(UpstreamError::RateLimited(_)) => {
                        self.metrics.rate_limited.inc();
                    }
                    ProxyError::Overloaded => {
                        self.metrics.overloaded_by("in_flight");
                    }
                    ProxyError::Prepare(PrepareError::OverBudget(_)) => {
                        self.metrics.overloaded_by("memory_budget");
                    }
                    _ => {}
                }
                let response = respond::error(&error, &request_id);
                log.set_attempts(attempts);
                log.answered(
                    response.status().as_u16(),
                    Some(error.code()),
                    Some(error.to_string()),
                );
                log.finish();
                response
            }
        }
    }

    /// The stages that can fail.
    async fn process<B>(
        &self,
        request: Request<B>,
        request_id: &HeaderValue,
        log: &mut AccessLog,
    ) -> Processed
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let fail = Processed::failed;
        let region = match self.table.route(request.headers()) {
            Ok(region) => Arc::clone(region),
            Err(e) => return fail(None, e.into()),
        };
        let metrics = self.upstream.region(&region).map_or_else(
            || Arc::clone(&self.no_region),
            |stack| Arc::clone(&stack.metrics),
        );
        // A client that goes away from here on is logged under its region.
        log.set_region(&metrics);
        let (parts, body) = request.into_parts();
        if let Err(e) = prepare::check_target(&parts.method, &parts.uri, parts.version)
            .and_then(|()| prepare::check_framing(&parts.headers, &parts.extensions))
            .and_then(|()| prepare::check_signed_headers(&parts.headers))
        {
            return fail(Some(metrics), e.into());
        }
        let query = match prepare::normalize_query(parts.uri.query().unwrap_or_default()) {
            Ok(query) => query,
            Err(e) => return fail(Some(metrics), e.into()),
        };
        let uri = match prepare::upstream_uri(&region.origin, parts.uri.path(), &query) {
            Ok(uri) => uri,
            Err(e) => return fail(Some(metrics), e.into()),
        };
        let (body, held) = match prepare::read_body(
            body,
            &parts.headers,
            self.max_body_bytes,
            self.body_read_timeout,
            self.upstream.memory(),
        )
        .await
        {
            Ok(body) => body,
            Err(e) => return fail(Some(metrics), e.into()),
        };
        let mut headers =
            prepare::forward_headers(parts.headers, &region.host, request_id, body.len());
        prepare::add_static_headers(&mut headers, self.upstream.static_headers());
        let outgoing = Outgoing {
            method: parts.method,
            uri,
            headers,
            body,
            held,
            region: Arc::clone(&region),
            trace: log.trace().cloned(),
        };
        let forwarded = self.upstream.forward(&outgoing).await;
        Processed::forwarded(metrics, forwarded)
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
