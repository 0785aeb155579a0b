//! One region's upstream stack: its pooled client and connection gate, its retry budget,
//! its metric handles and its 403 bookkeeping. Built once per region at start; nothing in
//! it is shared with another region.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::auth_failure::{self, WarnedKinds};
use super::body::WireBody;
use super::body::{StreamedBody, UpstreamBody};
use super::client::Transport;
use super::gate::ConnectionGate;
use super::retry::{Outcome, RetryBudget};
use crate::error_chain::error_chain;
use crate::memory::MemoryBudget;
use crate::metrics::RegionMetrics;

/// Response bodies up to this size (by `Content-Length`) are read whole inside the attempt,
/// so a connection reset mid-body is retried instead of reaching the client as a truncated
/// response. Larger or chunked bodies are streamed.
pub const BUFFER_RESPONSE_UP_TO: u64 = 256 * 1024;

/// One failed attempt.
#[derive(Debug)]
pub struct Failure {
    pub outcome: Outcome,
    pub reason: String,
}

/// What one attempt came to.
pub type AttemptResult = Result<Response<UpstreamBody>, Failure>;

/// Everything that belongs to one region's endpoint.
pub struct RegionUpstream {
    transport: Transport,
    gate: Arc<ConnectionGate>,
    pub budget: RetryBudget,
    pub metrics: Arc<RegionMetrics>,
    warned: WarnedKinds,
}

impl RegionUpstream {
    pub fn new(
        transport: Transport,
        gate: Arc<ConnectionGate>,
        budget: RetryBudget,
        metrics: Arc<RegionMetrics>,
    ) -> Self {
        metrics.budget_tokens.set(i64::from(budget.tokens()));
        Self {
            transport,
            gate,
            budget,
            metrics,
            warned: WarnedKinds::default(),
        }
    }

    /// Open connections to this region's endpoint.
    pub fn open_connections(&self) -> usize {
        self.gate.open()
    }

    /// One attempt: the response head, and a small body read whole, within `limit`.
    pub async fn attempt(
        &self,
        request: Request<Full<Bytes>>,
        limit: Duration,
        memory: &MemoryBudget,
        body_idle: Duration,
    ) -> AttemptResult {
        let exchange = async {
            // This attempt needs a connection until its response (or small body) is in.
            let demand = self.gate.demand();
            let response = match &self.transport {
                Transport::Http1(client) => client
                    .request(request)
                    .await
                    .map(|response| response.map(WireBody::Http1))
                    .map_err(|e| Failure {
                        outcome: if e.is_connect() {
                            Outcome::ConnectError
                        } else {
                            Outcome::ConnectionClosed
                        },
                        reason: error_chain(&e),
                    })?,
                Transport::Http2(pool) => {
                    let (parts, body) = request.into_parts();
                    // A `Full` body is one frame, at hand.
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    pool.send(&parts, &body)
                        .await
                        .map(|response| response.map(WireBody::Http2))
                        .map_err(|e| Failure {
                            outcome: if e.is_connect() {
                                Outcome::ConnectError
                            } else {
                                Outcome::ConnectionClosed
                            },
                            reason: error_chain(&e),
                        })?
                }
            };
            let (parts, body) = response.into_parts();
            let length = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            // A small body is read whole if the memory budget has room; otherwise it streams.
            let held = length
                .filter(|len| *len <= BUFFER_RESPONSE_UP_TO)
                .and_then(|len| memory.try_reserve(len).ok());
            let body = match held {
                Some(held) => {
                    let bytes = body
                        .collect()
                        .await
                        .map_err(|e| Failure {
                            outcome: Outcome::ConnectionClosed,
                            reason: error_chain(&e),
                        })?
                        .to_bytes();
                    UpstreamBody::buffered(bytes, held)
                }
                None => UpstreamBody::Streamed(StreamedBody::new(body, demand, body_idle)),
            };
            Ok(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure {
                outcome: Outcome::Timeout,
                reason: format!("no response within {} ms", limit.as_millis()),
            }),
        }
    }

    /// Counts and explains a 403 from Prime; returns the likely cause for the request's log
    /// line. The response itself is passed through unchanged.
    pub fn explain_forbidden(&self, response: &Response<UpstreamBody>) -> Option<&'static str> {
        if response.status() != StatusCode::FORBIDDEN {
            return None;
        }
        let kind = auth_failure::kind(response.headers());
        let hint = auth_failure::hint(kind);
        self.metrics.auth_failure(kind);
        if self.warned.should_warn(kind, Instant::now()) {
            let message = match response.body() {
                UpstreamBody::Buffered {
                    data: Some(data), ..
                } => auth_failure::safe_message(data),
                _ => None,
            };
            tracing::warn!(
                region = &*self.metrics.region,
                kind,
                cause = hint,
                prime_message = message.as_deref(),
                "Prime answered 403 (logged once a minute per kind)"
            );
        }
        Some(hint)
    }
}
