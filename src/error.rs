//! The error contract: every failure the proxy answers itself, mapped to the SPEC's
//! status, `error` code and message in exactly one place ([`ProxyError::status`],
//! [`ProxyError::code`]). Each stage has its own error enum; they meet here, and only
//! [`crate::respond`] turns them into responses.

use std::time::Duration;

use http::StatusCode;

use crate::limit::LimitError;
use crate::memory::OverBudget;
use crate::prepare::PrepareError;
use crate::route::RouteError;
use crate::upstream::UpstreamError;

/// A request the proxy answers itself instead of passing an upstream response through.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the proxy has too many requests in flight; retry shortly")]
    Overloaded,
}

impl ProxyError {
    /// The HTTP status of the error response.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(_) => StatusCode::BAD_REQUEST,
            ProxyError::Prepare(PrepareError::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Prepare(PrepareError::BodyTimeout) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Prepare(PrepareError::OverBudget(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Prepare(_) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(UpstreamError::RateLimited(_)) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Upstream(UpstreamError::Credentials(_)) | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // Signing only fails on input the proxy built itself: a bug, not the client's fault.
            ProxyError::Upstream(UpstreamError::Sign(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::Unreachable { .. }) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable `error` code of the JSON body and of the `x-prime-proxy-error` header.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Route(RouteError::MissingMarketplace) => "missing_marketplace",
            ProxyError::Route(RouteError::UnknownMarketplace { .. }) => "unknown_marketplace",
            ProxyError::Route(_) => "bad_request",
            ProxyError::Prepare(PrepareError::BodyTooLarge { .. }) => "body_too_large",
            ProxyError::Prepare(PrepareError::BodyTimeout) => "request_timeout",
            ProxyError::Prepare(PrepareError::OverBudget(_)) => "overloaded",
            ProxyError::Prepare(_) => "bad_request",
            ProxyError::Upstream(UpstreamError::RateLimited(_)) => "rate_limited",
            ProxyError::Upstream(UpstreamError::Credentials(_)) => "credentials_unavailable",
            ProxyError::Upstream(UpstreamError::Sign(_)) => "internal_error",
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => "upstream_timeout",
            ProxyError::Upstream(UpstreamError::Unreachable { .. }) => "upstream_unreachable",
            ProxyError::Overloaded => "overloaded",
        }
    }

    /// How long the client should wait before trying again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::Upstream(UpstreamError::RateLimited(LimitError::RateLimited {
                retry_after,
            })) => Some(*retry_after),
            ProxyError::Overloaded | ProxyError::Prepare(PrepareError::OverBudget(OverBudget)) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}
