//! Forwarding to Prime: each attempt signed afresh on the shared pooled TLS client, retried
//! per [`retry::RetryPolicy`] within the attempt and total timeouts and the retry budget.

pub mod client;
pub mod clock;
pub mod gate;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_LENGTH, DATE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::Config;
use crate::credentials::{CredentialStore, CredentialsError, HeldCredentials};
use crate::error::{error_chain, ProxyError};
use crate::metrics::{AttemptLabels, Metrics, RegionLabels};
use crate::route::Region;
use crate::sign::{self, SignError, SigningScope};
use client::UpstreamClient;
use clock::SigningClock;
use gate::ConnectionGate;
use retry::{Outcome, RetryBudget, RetryPolicy};

/// Response bodies up to this size (by `Content-Length`) are read whole inside the attempt,
/// so a connection reset mid-body is retried instead of reaching the client as a truncated
/// response. Larger or chunked bodies are streamed.
const BUFFER_RESPONSE_UP_TO: u64 = 256 * 1024;

/// Right after start, the first request may wait this long for the first credentials fetch.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(5);

/// A response body as the client receives it: read whole, or streamed from upstream.
pub type ResponseBody = Either<Full<Bytes>, StreamedBody>;

/// An upstream body streamed to the client. Its connection stays counted as in demand until
/// the body is done, so the connection gate lets other requests dial meanwhile.
#[derive(Debug)]
pub struct StreamedBody {
    inner: Incoming,
    _demand: gate::Demand,
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// No upstream response could be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream endpoint could not be reached: {reason}")]
    Unreachable { reason: String },
    #[error("the upstream did not answer in time: {reason}")]
    Timeout { reason: String },
}

/// A prepared request, ready to be signed and sent (as often as the policy allows).
#[derive(Debug)]
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub region: Arc<Region>,
}

/// One failed attempt.
struct Failure {
    outcome: Outcome,
    reason: String,
}

/// The result of [`Upstream::forward`]: the response or error, and the attempts it took.
pub struct Forwarded {
    pub result: Result<Response<ResponseBody>, ProxyError>,
    pub attempts: u32,
}

/// Everything needed to get a request answered by Prime.
pub struct Upstream {
    client: UpstreamClient,
    gate: Arc<ConnectionGate>,
    policy: RetryPolicy,
    budget: RetryBudget,
    clock: SigningClock,
    attempt_timeout: Duration,
    total_timeout: Duration,
    service: String,
    credentials: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(
        config: &Config,
        (client, gate): (UpstreamClient, Arc<ConnectionGate>),
        credentials: Arc<CredentialStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let budget = RetryBudget::new(&config.retry);
        metrics.retry_budget_tokens.set(i64::from(budget.tokens()));
        Self {
            client,
            gate,
            policy: RetryPolicy::new(&config.retry),
            budget,
            clock: SigningClock::default(),
            attempt_timeout: config.upstream.attempt_timeout(),
            total_timeout: config.upstream.total_timeout(),
            service: config.signing.service.clone(),
            credentials,
            metrics,
        }
    }

    /// Open upstream connections.
    pub fn open_connections(&self) -> usize {
        self.gate.open()
    }

    /// The signing clock (its offset is exported as a metric).
    pub fn clock(&self) -> &SigningClock {
        &self.clock
    }

    /// Sends the request, retrying what is retryable. Once attempts, budget or time run out,
    /// the last upstream response is passed through; with none, the last failure is reported.
    pub async fn forward(&self, out: &Outgoing) -> Forwarded {
        let deadline = Instant::now() + self.total_timeout;
        let mut spent = 0;
        let mut attempt = 0;
        loop {
            let held = if attempt == 0 {
                self.credentials.valid_or_first(FIRST_FETCH_WAIT).await
            } else {
                self.credentials
                    .valid(SystemTime::now())
                    .ok_or(CredentialsError)
            };
            let held = match held {
                Ok(held) => held,
                Err(e) => {
                    return Forwarded {
                        result: Err(e.into()),
                        attempts: attempt,
                    }
                }
            };
            let request = match self.signed_request(out, &held) {
                Ok(request) => request,
                Err(e) => {
                    return Forwarded {
                        result: Err(e.into()),
                        attempts: attempt,
                    }
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let reason = format!("total timeout of {} ms", self.total_timeout.as_millis());
                return Forwarded {
                    result: Err(UpstreamError::Timeout { reason }.into()),
                    attempts: attempt,
                };
            }
            attempt += 1;
            let result = self
                .attempt(request, remaining.min(self.attempt_timeout))
                .await;
            let outcome = match &result {
                Ok(response) if self.policy.retries_status(response.status()) => {
                    Outcome::RetryableStatus
                }
                Ok(_) => Outcome::Response,
                Err(failure) => failure.outcome,
            };
            self.metrics
                .upstream_attempts
                .get_or_create(&AttemptLabels {
                    region: Arc::clone(&out.region.key),
                    outcome: outcome.label(),
                })
                .inc();
            if let Ok(response) = &result {
                self.learn_clock(response);
            }
            if outcome == Outcome::Response {
                self.budget.on_success(spent);
                self.metrics
                    .retry_budget_tokens
                    .set(i64::from(self.budget.tokens()));
                return Forwarded {
                    result: finish(result),
                    attempts: attempt,
                };
            }
            if attempt >= self.policy.max_attempts {
                return Forwarded {
                    result: finish(result),
                    attempts: attempt,
                };
            }
            let retry_after = result
                .as_ref()
                .ok()
                .and_then(|response| response.headers().get(RETRY_AFTER))
                .and_then(|value| value.to_str().ok())
                .and_then(|value| retry::parse_retry_after(value, SystemTime::now()));
            let delay = self.policy.delay(attempt, retry_after);
            if Instant::now() + delay >= deadline {
                return Forwarded {
                    result: finish(result),
                    attempts: attempt,
                };
            }
            match self.budget.try_spend(outcome == Outcome::Timeout) {
                Some(cost) => spent += cost,
                None => {
                    self.metrics.retry_budget_exhausted.inc();
                    return Forwarded {
                        result: finish(result),
                        attempts: attempt,
                    };
                }
            }
            self.metrics
                .retry_budget_tokens
                .set(i64::from(self.budget.tokens()));
            self.metrics
                .retries
                .get_or_create(&RegionLabels {
                    region: Arc::clone(&out.region.key),
                })
                .inc();
            if let Err(failure) = &result {
                tracing::debug!(attempt, outcome = outcome.label(), reason = %failure.reason, "upstream attempt failed; retrying");
            }
            drop(result);
            tokio::time::sleep(delay).await;
        }
    }

    /// A fresh copy of the request, signed now (with the learnt clock offset).
    fn signed_request(
        &self,
        out: &Outgoing,
        held: &HeldCredentials,
    ) -> Result<Request<Full<Bytes>>, SignError> {
        let mut headers = out.headers.clone();
        let scope = SigningScope {
            region: &out.region.signing_region,
            service: &self.service,
        };
        sign::sign_request(
            &out.method,
            &out.uri,
            &mut headers,
            &out.body,
            &held.identity,
            scope,
            self.clock.now(),
        )?;
        let mut request = Request::new(Full::new(out.body.clone()));
        *request.method_mut() = out.method.clone();
        *request.uri_mut() = out.uri.clone();
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// One attempt: the response head, and a small body read whole, within `limit`.
    async fn attempt(
        &self,
        request: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<Response<ResponseBody>, Failure> {
        let exchange = async {
            // This attempt needs a connection until its response (or small body) is in.
            let demand = self.gate.demand();
            let response = self.client.request(request).await.map_err(|e| {
                let outcome = if e.is_connect() {
                    Outcome::ConnectError
                } else {
                    Outcome::ConnectionClosed
                };
                Failure {
                    outcome,
                    reason: error_chain(&e),
                }
            })?;
            let (parts, body) = response.into_parts();
            let length = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if length.is_some_and(|len| len <= BUFFER_RESPONSE_UP_TO) {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| Failure {
                        outcome: Outcome::ConnectionClosed,
                        reason: error_chain(&e),
                    })?
                    .to_bytes();
                Ok(Response::from_parts(parts, Either::Left(Full::new(bytes))))
            } else {
                let body = StreamedBody {
                    inner: body,
                    _demand: demand,
                };
                Ok(Response::from_parts(parts, Either::Right(body)))
            }
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                outcome: Outcome::Timeout,
                reason: format!("no response within {} ms", limit.as_millis()),
            }),
        }
    }

    /// A 403 with a `Date` header may mean our clock is off: sign later requests with
    /// Prime's time (the request itself is not retried: 403 never is).
    fn learn_clock(&self, response: &Response<ResponseBody>) {
        if response.status() != StatusCode::FORBIDDEN {
            return;
        }
        let Some(date) = response.headers().get(DATE).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Some(offset) = self.clock.learn(date, SystemTime::now()) {
            self.metrics.clock_offset.set(offset);
            tracing::warn!(
                offset_s = offset,
                "Prime's clock differs from ours: signing with the corrected time from now on"
            );
        }
    }
}

/// The last attempt's result as the client's answer.
fn finish(
    result: Result<Response<ResponseBody>, Failure>,
) -> Result<Response<ResponseBody>, ProxyError> {
    result.map_err(|failure| match failure.outcome {
        Outcome::Timeout => UpstreamError::Timeout {
            reason: failure.reason,
        }
        .into(),
        _ => UpstreamError::Unreachable {
            reason: failure.reason,
        }
        .into(),
    })
}
