//! Forwarding to Prime: one [`RegionUpstream`] stack per region (client, connection gate,
//! retry budget, metric handles), and the retry loop that carries out what
//! [`retry::RetryPolicy`] decides: every attempt takes a rate-limit permit, is signed afresh
//! and runs within the attempt and total timeouts.

pub mod auth_failure;
pub mod body;
pub mod client;
pub mod clock;
pub mod gate;
pub mod h2pool;
pub mod region;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, DATE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tokio::time::Instant;

use crate::config::Config;
use crate::credentials::{CredentialStore, CredentialsError, HeldCredentials};
use crate::limit::{LimitError, RateLimiter};
use crate::memory::{MemoryBudget, Reservation};
use crate::metrics::{Metrics, RegionMetrics};
use crate::route::{MarketplaceTable, Region};
use crate::sign::{self, SignError, SignedHeaders, SigningScope};
pub use body::{StreamError, UpstreamBody};
use clock::SigningClock;
use region::{AttemptResult, Failure, RegionUpstream};
use retry::{Decision, Outcome, RetryBudget, RetryPolicy};

/// Right after start, the first request may wait this long for the first credentials fetch
/// (or for a refresh of credentials found expired).
const CREDENTIALS_WAIT: Duration = Duration::from_secs(5);

/// Why a request got no upstream response to pass through.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream endpoint could not be reached: {reason}")]
    Unreachable { reason: String },
    #[error("the upstream did not answer in time: {reason}")]
    Timeout { reason: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    RateLimited(#[from] LimitError),
}

/// A prepared request, ready to be signed and sent (as often as the policy allows).
#[derive(Debug)]
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body's bytes held against the memory budget until the request is done.
    pub held: Reservation,
    pub region: Arc<Region>,
    /// The request's trace while tracing is on: each attempt gets a client span in it.
    pub trace: Option<crate::telemetry::RequestTrace>,
}

/// The result of [`Upstream::forward`]: the response or error, and the attempts it took.
pub struct Forwarded {
    pub result: Result<Response<UpstreamBody>, UpstreamError>,
    pub attempts: u32,
    /// For a 403 from Prime: the usual cause of its kind, in plain words.
    pub hint: Option<&'static str>,
}

/// Everything needed to get a request answered by Prime.
pub struct Upstream {
    /// Indexed by [`Region::index`].
    regions: Vec<RegionUpstream>,
    policy: RetryPolicy,
    clock: SigningClock,
    attempt_timeout: Duration,
    total_timeout: Duration,
    body_idle_timeout: Duration,
    service: String,
    signed_headers: SignedHeaders,
    /// `[upstream.headers]`, parsed once; their names are in `signed_headers`.
    static_headers: HeaderMap,
    credentials: Arc<CredentialStore>,
    limiter: Arc<RateLimiter>,
    memory: MemoryBudget,
}

impl Upstream {
    /// Builds one stack per region of `table`.
    pub fn new(
        config: &Config,
        table: &MarketplaceTable,
        credentials: Arc<CredentialStore>,
        limiter: Arc<RateLimiter>,
        memory: MemoryBudget,
        metrics: &Metrics,
    ) -> Result<Self, client::ClientError> {
        let tls = client::tls_config(&config.upstream)?;
        let regions = table
            .regions()
            .iter()
            .map(|region| {
                let metrics = Arc::new(RegionMetrics::new(metrics, &region.key));
                let (transport, gate) =
                    client::build(&config.upstream, tls.clone(), &region.origin, &metrics);
                RegionUpstream::new(transport, gate, RetryBudget::new(&config.retry), metrics)
            })
            .collect();
        // Validated by config: every entry is a valid name and value.
        let static_headers: HeaderMap = config
            .upstream
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                    http::HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        Ok(Self {
            regions,
            policy: RetryPolicy::new(&config.retry),
            clock: SigningClock::default(),
            attempt_timeout: config.upstream.attempt_timeout(),
            total_timeout: config.upstream.total_timeout(),
            body_idle_timeout: config.upstream.body_idle_timeout(),
            service: config.signing.service.clone(),
            signed_headers: SignedHeaders::with_static(static_headers.keys()),
            static_headers,
            credentials,
            limiter,
            memory,
        })
    }

    /// The stack of `region`.
    pub fn region(&self, region: &Region) -> Option<&RegionUpstream> {
        self.regions.get(region.index)
    }

    /// Every region's stack, in index order.
    pub fn regions(&self) -> &[RegionUpstream] {
        &self.regions
    }

    /// The signing clock (its offset is exported as a metric).
    pub fn clock(&self) -> &SigningClock {
        &self.clock
    }

    /// `[upstream.headers]`, added to every request before it is forwarded.
    pub fn static_headers(&self) -> &HeaderMap {
        &self.static_headers
    }

    /// The memory budget for buffered bodies.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Sends the request, retrying what the policy retries. Every attempt first takes a
    /// rate-limit permit. Once attempts, budget, permits or time run out, the last upstream
    /// response is passed through; with none, the last failure is reported.
    pub async fn forward(&self, out: &Outgoing) -> Forwarded {
        let Some(region) = self.region(&out.region) else {
            // The table and the stacks are built from the same list: unreachable.
            let reason = format!("no upstream stack for region {}", out.region.key);
            return Forwarded {
                result: Err(UpstreamError::Unreachable { reason }),
                attempts: 0,
                hint: None,
            };
        };
        let deadline = Instant::now() + self.total_timeout;
        let mut attempts = 0;
        let mut spent = 0;
        // The latest upstream response, and the latest attempt's failure.
        let mut response: Option<Response<UpstreamBody>> = None;
        let mut hint = None;
        loop {
            let stop =
                |error: UpstreamError, response: Option<Response<UpstreamBody>>| match response {
                    Some(response) => Ok(response),
                    None => Err(error),
                };
            let mut span = out
                .trace
                .as_ref()
                .map(|trace| attempt_span(trace, out, attempts));
            let waiting = span.is_some().then(Instant::now);
            if let Err(limited) = self.limiter.acquire(&out.method, out.uri.path()).await {
                if let Some(span) = &mut span {
                    span.stopped("rate_limit");
                }
                return Forwarded {
                    result: stop(limited.into(), response),
                    attempts,
                    hint,
                };
            }
            let permitted = waiting.map(|start| (start, Instant::now()));
            let request = match self
                .credentials_now(attempts)
                .await
                .and_then(|held| self.signed_request(out, &held).map_err(UpstreamError::from))
            {
                Ok(mut request) => {
                    if let (Some(span), Some((start, permitted))) = (&mut span, permitted) {
                        span.waited(permitted - start, permitted.elapsed());
                        span.inject(request.headers_mut());
                    }
                    request
                }
                Err(error) => {
                    if let Some(span) = &mut span {
                        span.stopped(match error {
                            UpstreamError::Credentials(_) => "credentials",
                            _ => "signing",
                        });
                    }
                    return Forwarded {
                        result: stop(error, response),
                        attempts,
                        hint,
                    };
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let reason = format!("total timeout of {} ms", self.total_timeout.as_millis());
                if let Some(span) = &mut span {
                    span.stopped("total_timeout");
                }
                return Forwarded {
                    result: stop(UpstreamError::Timeout { reason }, response),
                    attempts,
                    hint,
                };
            }
            attempts += 1;
            let result = region
                .attempt(
                    request,
                    remaining.min(self.attempt_timeout),
                    &self.memory,
                    self.body_idle_timeout,
                )
                .await;
            let outcome = self.outcome(&result);
            region.metrics.attempt(outcome.label());
            if let Some(span) = &mut span {
                match &result {
                    Ok(answer) => span.answered(answer.status().as_u16(), outcome.label()),
                    Err(_) => span.failed(outcome.label()),
                }
            }
            let retry_after = match &result {
                Ok(answer) => {
                    self.learn_clock(answer);
                    hint = region.explain_forbidden(answer);
                    answer
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| retry::parse_retry_after(value, SystemTime::now()))
                }
                Err(_) => None,
            };
            let decision =
                self.policy
                    .decide(attempts, outcome, retry_after, Instant::now(), deadline);
            let failure = match result {
                Ok(answer) => {
                    response = Some(answer);
                    None
                }
                Err(failure) => Some(failure),
            };
            let delay = match decision {
                Decision::RetryAfter(delay) => delay,
                Decision::Finish => {
                    if outcome == Outcome::Response {
                        region.budget.on_success(spent);
                        region
                            .metrics
                            .budget_tokens
                            .set(i64::from(region.budget.tokens()));
                    }
                    return Forwarded {
                        result: finish(response, failure),
                        attempts,
                        hint,
                    };
                }
            };
            match region.budget.try_spend(outcome == Outcome::Timeout) {
                Some(cost) => spent += cost,
                None => {
                    region.metrics.budget_exhausted.inc();
                    return Forwarded {
                        result: finish(response, failure),
                        attempts,
                        hint,
                    };
                }
            }
            region
                .metrics
                .budget_tokens
                .set(i64::from(region.budget.tokens()));
            region.metrics.retries.inc();
            if let Some(mut span) = span.take() {
                // Ended here: the back-off belongs to no attempt.
                span.retried(outcome.label());
            }
            if let Some(failure) = &failure {
                tracing::debug!(attempts, outcome = outcome.label(), reason = %failure.reason, "upstream attempt failed; retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn outcome(&self, result: &AttemptResult) -> Outcome {
        match result {
            Ok(response) if self.policy.retries_status(response.status()) => {
                Outcome::RetryableStatus
            }
            Ok(_) => Outcome::Response,
            Err(failure) => failure.outcome,
        }
    }

    /// Credentials to sign attempt `attempts + 1` with. The first attempt may wait (bounded)
    /// for the first fetch or a refresh; a retry signs only with valid ones held.
    async fn credentials_now(&self, attempts: u32) -> Result<Arc<HeldCredentials>, UpstreamError> {
        if attempts == 0 {
            Ok(self.credentials.valid_or_first(CREDENTIALS_WAIT).await?)
        } else {
            Ok(self
                .credentials
                .valid(SystemTime::now())
                .ok_or(CredentialsError)?)
        }
    }

    /// A fresh copy of the request, signed now (with the learnt clock offset).
    fn signed_request(
        &self,
        out: &Outgoing,
        held: &HeldCredentials,
    ) -> Result<Request<Full<Bytes>>, SignError> {
        // Every attempt signs its own copy: hyper consumes the request, and a retry needs the
        // unsigned original. The copy has room for the headers the signer adds
        // (`HeaderMap::clone` is sized exactly, so the signer's inserts would grow it again:
        // a new table and a realloc per attempt). `extend` appends, keeping repeated values
        // in order.
        let mut headers = HeaderMap::with_capacity(out.headers.len() + sign::ADDED_HEADERS);
        headers.extend(
            out.headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        let scope = SigningScope {
            region: &out.region.signing_region,
            service: &self.service,
        };
        sign::sign_request_with(
            &out.method,
            &out.uri,
            &mut headers,
            &out.body,
            &held.identity,
            scope,
            self.clock.now(),
            &self.signed_headers,
        )?;
        let mut request = Request::new(Full::new(out.body.clone()));
        *request.method_mut() = out.method.clone();
        *request.uri_mut() = out.uri.clone();
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// A 403 with a `Date` header may mean our clock is off: sign later requests with
    /// Prime's time (the request itself is not retried: 403 never is).
    fn learn_clock(&self, response: &Response<UpstreamBody>) {
        if response.status() != StatusCode::FORBIDDEN {
            return;
        }
        let Some(date) = response.headers().get(DATE).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Some(offset) = self.clock.learn(date, SystemTime::now()) {
            tracing::warn!(
                offset_s = offset,
                "Prime's clock differs from ours: signing with the corrected time from now on"
            );
        }
    }
}

/// The client span of attempt `done + 1`.
fn attempt_span(
    trace: &crate::telemetry::RequestTrace,
    out: &Outgoing,
    done: u32,
) -> crate::telemetry::AttemptSpan {
    let host = out.uri.host().unwrap_or_default();
    let port = out
        .uri
        .port_u16()
        .unwrap_or(if out.uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    trace.attempt(done + 1, &out.method, &out.region.key, host, port)
}

/// The client's answer once no more attempts are made: the latest upstream response if any
/// attempt got one (so 502/504 mean that every attempt failed), else the last failure.
fn finish(
    response: Option<Response<UpstreamBody>>,
    failure: Option<Failure>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    match (response, failure) {
        (Some(response), _) => Ok(response),
        (None, Some(failure)) if failure.outcome == Outcome::Timeout => {
            Err(UpstreamError::Timeout {
                reason: failure.reason,
            })
        }
        (None, Some(failure)) => Err(UpstreamError::Unreachable {
            reason: failure.reason,
        }),
        (None, None) => Err(UpstreamError::Unreachable {
            reason: "no attempt was made".to_owned(),
        }),
    }
}
