//! Prime's 403s explained: the kind Prime names in `x-amzn-ErrorType`, the usual cause of
//! that kind in plain words, and a warning at most once per kind per minute per region.

use std::sync::Mutex;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

/// The header in which API Gateway names the kind of a refusal.
const ERROR_TYPE: &str = "x-amzn-errortype";

/// At most one warning per kind per region in this time.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The kinds Prime (API Gateway) answers 403 with, and what usually causes each.
const KINDS: [(&str, &str); 6] = [
    (
        "InvalidSignatureException",
        "the signature did not match: usually clock skew (check NTP on the node), a wrong \
         signing_region for this endpoint, or a proxy in between that rewrote the host, path \
         or a signed header",
    ),
    (
        "IncompleteSignatureException",
        "the signature is incomplete: a signed header or part of the credential scope is \
         missing, usually because something between the proxy and Prime removed a header",
    ),
    (
        "MissingAuthenticationTokenException",
        "wrong path or API stage (API Gateway answers this for a route that does not exist), \
         or the request reached Prime unsigned",
    ),
    (
        "UnrecognizedClientException",
        "the credentials are not recognised: a wrong or deleted access key, or a session \
         token from another account or partition",
    ),
    (
        "ExpiredTokenException",
        "the credentials have expired: check the credential source (IRSA token file, SSO \
         session, Pod Identity agent) and the node's clock",
    ),
    (
        "AccessDeniedException",
        "the role lacks execute-api:Invoke on this API: check the IAM policy of the role the \
         proxy signs as, and that Prime has allow-listed that role",
    ),
];

/// For kinds Prime does not name, or names otherwise.
const OTHER_HINT: &str =
    "Prime refused the request (403) without a known error type: see the response body";

/// The `kind` label for a 403 with these headers: one of the known kinds, else `other`.
///
/// API Gateway sends `x-amzn-ErrorType: Kind` or `Kind:http://internal…`.
pub fn kind(headers: &HeaderMap) -> &'static str {
    let Some(value) = headers.get(ERROR_TYPE).and_then(|v| v.to_str().ok()) else {
        return "other";
    };
    let named = value.split(':').next().unwrap_or_default().trim();
    KINDS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(named))
        .map_or("other", |(known, _)| known)
}

/// The usual cause of `kind`, in plain words.
pub fn hint(kind: &str) -> &'static str {
    KINDS
        .iter()
        .find(|(known, _)| *known == kind)
        .map_or(OTHER_HINT, |(_, hint)| hint)
}

/// Prime's own message from a small JSON error body, when it is short and cannot carry
/// request data. API Gateway's signature errors quote the canonical request (with the query,
/// and so the customer's LWA token): those are never shown.
pub fn safe_message(body: &[u8]) -> Option<String> {
    if body.len() > 1024 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value
        .get("message")
        .or_else(|| value.get("Message"))?
        .as_str()?;
    let lower = message.to_ascii_lowercase();
    let risky = [
        "canonical",
        "string to sign",
        "customeridentifier",
        "atza",
        "signature",
        "=",
    ];
    if message.len() > 160 || message.contains('\n') || risky.iter().any(|r| lower.contains(r)) {
        return None;
    }
    Some(message.to_owned())
}

/// When each kind was last warned about, in one region.
#[derive(Debug, Default)]
pub struct WarnedKinds {
    last: Mutex<Vec<(&'static str, Instant)>>,
}

impl WarnedKinds {
    /// True when `kind` was not warned about in the last minute (and records this one).
    pub fn should_warn(&self, kind: &'static str, now: Instant) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        match last.iter_mut().find(|(known, _)| *known == kind) {
            Some((_, at)) if now.duration_since(*at) < WARN_EVERY => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                last.push((kind, now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http::HeaderValue;

    fn headers(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn kinds_are_read_from_x_amzn_error_type() {
        assert_eq!(
            kind(&headers("InvalidSignatureException")),
            "InvalidSignatureException"
        );
        assert_eq!(
            kind(&headers(
                "AccessDeniedException:http://internal.amazon.com/coral/"
            )),
            "AccessDeniedException"
        );
        assert_eq!(kind(&headers("SomethingNew")), "other");
        assert_eq!(kind(&HeaderMap::new()), "other");
        assert!(hint("InvalidSignatureException").contains("clock skew"));
        assert!(hint("AccessDeniedException").contains("execute-api:Invoke"));
        assert!(hint("MissingAuthenticationTokenException").contains("path"));
        assert_eq!(hint("other"), OTHER_HINT);
    }

    #[test]
    fn messages_quoting_the_request_are_never_shown() {
        assert_eq!(
            safe_message(br#"{"message":"User is not authorized to access this resource"}"#)
                .as_deref(),
            Some("User is not authorized to access this resource")
        );
        let leaky = br#"{"message":"The request signature we calculated does not match. The Canonical String for this request should have been 'GET\n/v1\ncustomerIdentifier=Atza%7Cxyz'"}"#;
        assert_eq!(safe_message(leaky), None);
        assert_eq!(safe_message(b"not json"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_kind_is_warned_about_at_most_once_a_minute() {
        let warned = WarnedKinds::default();
        let start = Instant::now();
        assert!(warned.should_warn("InvalidSignatureException", start));
        assert!(!warned.should_warn("InvalidSignatureException", start + Duration::from_secs(59)));
        assert!(warned.should_warn("AccessDeniedException", start + Duration::from_secs(1)));
        assert!(warned.should_warn("InvalidSignatureException", start + Duration::from_secs(61)));
    }
}
