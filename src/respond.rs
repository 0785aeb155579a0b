//! What the client receives: the upstream response passed through (plus `x-amz-request-id`),
//! or the proxy's own JSON error. This is the one place where errors become responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::Response;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::AccessLog;
use crate::error::ProxyError;
use crate::limit::retry_after_secs;
use crate::prepare::{remove_hop_by_hop, X_AMZ_REQUEST_ID};
use crate::upstream::{StreamError, UpstreamBody};

/// The header that marks a response the proxy produced itself.
pub static X_PRIME_PROXY_ERROR: HeaderName = HeaderName::from_static("x-prime-proxy-error");

/// A response body as the client receives it.
///
/// A streamed upstream body carries the request's [`AccessLog`], written when the body ends,
/// breaks off, or is dropped because the client went away.
#[derive(Debug)]
pub struct ClientBody {
    kind: Kind,
    log: Option<AccessLog>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ClientBody {
    /// A body the proxy wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            log: None,
        }
    }

    /// An upstream body, with the log line to write when it is done (streamed bodies).
    pub fn upstream(body: UpstreamBody, log: Option<AccessLog>) -> Self {
        Self {
            kind: Kind::Upstream(body),
            log,
        }
    }

    /// True when the body is streamed from upstream (its log line is written at its end).
    pub fn is_streamed(body: &UpstreamBody) -> bool {
        matches!(body, UpstreamBody::Streamed(_))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => {
                if let Some(log) = this.log.take() {
                    log.finish();
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(log) = this.log.take() {
                    log.finish_broken(error.code(), error.to_string());
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}

/// Passes an upstream response through: status, headers and body unchanged but for the
/// hop-by-hop headers, with the request id added when upstream did not echo one.
pub fn upstream(
    response: Response<UpstreamBody>,
    request_id: &HeaderValue,
    log: Option<AccessLog>,
) -> Response<ClientBody> {
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(&X_AMZ_REQUEST_ID) {
        parts
            .headers
            .insert(X_AMZ_REQUEST_ID.clone(), request_id.clone());
    }
    Response::from_parts(parts, ClientBody::upstream(body, log))
}

/// The SPEC's error response: JSON `{"error", "message", "requestId"}`, the code again in
/// `x-prime-proxy-error`, and `Retry-After` when the client should come back later.
pub fn error(error: &ProxyError, request_id: &HeaderValue) -> Response<ClientBody> {
    let body = serde_json::json!({
        "error": error.code(),
        "message": error.to_string(),
        "requestId": request_id.to_str().unwrap_or_default(),
    });
    let mut response = Response::new(ClientBody::full(body.to_string()));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        X_PRIME_PROXY_ERROR.clone(),
        HeaderValue::from_static(error.code()),
    );
    headers.insert(X_AMZ_REQUEST_ID.clone(), request_id.clone());
    if let Some(wait) = error.retry_after() {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(&wait)),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::limit::LimitError;
    use crate::route::RouteError;
    use http_body_util::BodyExt;
    use std::time::Duration;

    async fn json(response: Response<ClientBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_have_the_spec_shape() {
        let id = HeaderValue::from_static("req-1");
        let response = error(&RouteError::MissingMarketplace.into(), &id);
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            response.headers()["x-prime-proxy-error"],
            "missing_marketplace"
        );
        assert_eq!(response.headers()["x-amz-request-id"], "req-1");
        assert!(response.headers().get("retry-after").is_none());
        let body = json(response).await;
        assert_eq!(body["error"], "missing_marketplace");
        assert_eq!(body["requestId"], "req-1");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("x-amz-marketplace"));
    }

    #[tokio::test]
    async fn rate_limited_errors_say_when_to_come_back() {
        let id = HeaderValue::from_static("req-2");
        let limited = LimitError::RateLimited {
            retry_after: Duration::from_millis(1500),
        };
        let response = error(&crate::upstream::UpstreamError::from(limited).into(), &id);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(json(response).await["error"], "rate_limited");
    }

    #[test]
    fn upstream_responses_lose_hop_by_hop_headers_only() {
        let mut response = Response::new(UpstreamBody::buffered(
            Bytes::from_static(b"{}"),
            crate::memory::Reservation::none(),
        ));
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-amzn-requestid", "abc"),
        ] {
            response.headers_mut().insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let response = upstream(response, &HeaderValue::from_static("id-9"), None);
        let mut names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-type", "x-amz-request-id", "x-amzn-requestid"]
        );
        assert_eq!(response.headers()["x-amz-request-id"], "id-9");
    }
}
