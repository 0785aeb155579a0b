//! What the client receives: the upstream response passed through (plus `x-amz-request-id`),
//! or the proxy's own JSON error.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::Response;
use http_body_util::{Either, Full};

use crate::error::ProxyError;
use crate::limit::retry_after_secs;
use crate::prepare::{remove_hop_by_hop, X_AMZ_REQUEST_ID};
use crate::upstream::ResponseBody;

/// The header that marks a response the proxy produced itself.
pub static X_PRIME_PROXY_ERROR: HeaderName = HeaderName::from_static("x-prime-proxy-error");

/// Passes an upstream response through: status, headers and body unchanged but for the
/// hop-by-hop headers, with the request id added when upstream did not echo one.
pub fn upstream(
    mut response: Response<ResponseBody>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let headers = response.headers_mut();
    remove_hop_by_hop(headers);
    if !headers.contains_key(&X_AMZ_REQUEST_ID) {
        headers.insert(X_AMZ_REQUEST_ID.clone(), request_id.clone());
    }
    response
}

/// The SPEC's error response: JSON `{"error", "message", "requestId"}`, the code again in
/// `x-prime-proxy-error`, and `Retry-After` when the client should come back later.
pub fn error(error: &ProxyError, request_id: &HeaderValue) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": error.code(),
        "message": error.to_string(),
        "requestId": request_id.to_str().unwrap_or_default(),
    });
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
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

    async fn json(response: Response<ResponseBody>) -> serde_json::Value {
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
        let response = error(&limited.into(), &id);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(json(response).await["error"], "rate_limited");
    }

    #[test]
    fn upstream_responses_lose_hop_by_hop_headers_only() {
        let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(b"{}"))));
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
        let response = upstream(response, &HeaderValue::from_static("id-9"));
        let mut names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-type", "x-amz-request-id", "x-amzn-requestid"]
        );
        assert_eq!(response.headers()["x-amz-request-id"], "id-9");
    }
}
