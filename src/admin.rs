//! The admin listener: liveness, readiness (valid credentials held, not draining) and
//! Prometheus metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::credentials::CredentialStore;
use crate::metrics::Metrics;
use crate::respond::ClientBody;
use crate::upstream::Upstream;

/// What the admin endpoints report on.
pub struct AdminState {
    pub credentials: Arc<CredentialStore>,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts, so load balancers stop sending traffic while we drain.
    pub draining: AtomicBool,
}

impl AdminState {
    pub fn new(credentials: Arc<CredentialStore>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            credentials,
            metrics,
            draining: AtomicBool::new(false),
        })
    }

    /// Answers one admin request.
    pub fn handle<B>(&self, request: &Request<B>, upstream: &Upstream) -> Response<ClientBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if self.credentials.valid(SystemTime::now()).is_none() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no valid AWS credentials\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                self.metrics
                    .credentials_expiry
                    .set(self.credentials.seconds_to_expiry(SystemTime::now()));
                self.metrics
                    .clock_offset
                    .set(upstream.clock().offset_secs());
                for region in upstream.regions() {
                    region
                        .metrics
                        .connections
                        .set(i64::try_from(region.open_connections()).unwrap_or(i64::MAX));
                }
                self.metrics
                    .buffered_bytes
                    .set(i64::try_from(upstream.memory().reserved_bytes()).unwrap_or(i64::MAX));
                match self.metrics.encode() {
                    Ok(body) => {
                        let mut response = text(StatusCode::OK, body);
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        response
                    }
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n",
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ClientBody> {
    let mut response = Response::new(ClientBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
