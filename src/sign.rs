//! SigV4 signing of one prepared upstream request, with aws-sigv4.
//!
//! A pure function of the request, the credentials and the time it is given: retries call it
//! again with a new time, and clock-skew correction is just a different time.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::prepare::{X_AMZ_MARKETPLACE, X_AMZ_REQUEST_ID};

/// The client headers that are signed (besides what aws-sigv4 adds: `x-amz-date`,
/// `x-amz-content-sha256`, `x-amz-security-token`). Other client headers are forwarded
/// unsigned, so a hop that adds or rewrites one (`accept-encoding`, tracing headers)
/// cannot break the signature.
const SIGNED_CLIENT_HEADERS: [&HeaderName; 4] = [
    &header::HOST,
    &X_AMZ_MARKETPLACE,
    &X_AMZ_REQUEST_ID,
    &header::CONTENT_TYPE,
];

/// Headers a previous signature put on the request; removed before signing again.
const SIGNATURE_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Signing failed: only possible on input the proxy built itself.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(String);

/// Where and as whom to sign.
#[derive(Debug, Clone, Copy)]
pub struct SigningScope<'a> {
    /// SigV4 region, from the route.
    pub region: &'a str,
    /// SigV4 service name (`execute-api`).
    pub service: &'a str,
}

/// Settings shared by every signature: the payload hash is sent as `x-amz-content-sha256`
/// and signed; paths are normalised and double-encoded as SigV4 prescribes for every
/// service but S3 (the defaults).
fn settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings
}

/// Converts credentials into the identity aws-sigv4 signs with (done once per refresh).
pub fn identity(credentials: &Credentials) -> Identity {
    credentials.clone().into()
}

/// Signs the request in place: adds `authorization`, `x-amz-date`, `x-amz-content-sha256`
/// and, with temporary credentials, `x-amz-security-token`.
///
/// `uri` must be exactly what is sent (the canonical query string is not re-ordered here).
pub fn sign_request(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    identity: &Identity,
    scope: SigningScope<'_>,
    time: SystemTime,
) -> Result<(), SignError> {
    for name in SIGNATURE_HEADERS {
        headers.remove(name);
    }
    let signed_headers = SIGNED_CLIENT_HEADERS.iter().filter_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?;
        Some((name.as_str(), value))
    });
    let uri_text = uri.to_string();
    let signable = SignableRequest::new(
        method.as_str(),
        uri_text.as_str(),
        signed_headers,
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(scope.region)
        .name(scope.service)
        .time(time)
        .settings(settings())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (new_headers, _params) = instructions.into_parts();
    for new_header in new_headers {
        let mut value =
            HeaderValue::from_str(new_header.value()).map_err(|e| SignError(e.to_string()))?;
        // Keeps the signature and session token out of any Debug output.
        value.set_sensitive(new_header.sensitive() || new_header.name() == "authorization");
        headers.insert(new_header.name(), value);
    }
    Ok(())
}
