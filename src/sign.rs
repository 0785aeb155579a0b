//! SigV4 signing of one prepared upstream request.
//!
//! A pure function of the request, the credentials and the time it is given: retries call it
//! again with a new time, and clock-skew correction is just a different time.
//!
//! Why not aws-sigv4's `http_request::sign`: it derives the signing key (four HMACs) and
//! re-parses and re-canonicalises the whole request on every call (`benches/signing.rs`
//! measures both side by side). Our requests have a fixed shape (the query is already
//! canonical, the signed headers are a known set), so the canonical request is built here
//! directly and the signing key is derived once per credentials, day, region and service.
//! The crypto is aws-lc (the same library as TLS). aws-sigv4 stays the reference: a property
//! test checks that both produce the same `Authorization` for generated requests, the AWS
//! test suite's vectors run through this signer (`tests/sigv4_vectors.rs`), and the
//! integration tests verify every signature with an independent verifier.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_lc_rs::{digest, hmac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::prepare::{X_AMZ_MARKETPLACE, X_AMZ_REQUEST_ID};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
static X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
static X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
static X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");

/// Path bytes left as they are in the canonical URI: SigV4's unreserved set plus `/`.
/// Everything else, `%` included, is encoded again ("double encoding", as SigV4 prescribes
/// for every service but S3).
const PATH_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

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

/// One signing key, valid for a day, a region and a service.
struct DerivedKey {
    date: [u8; 8],
    region: String,
    service: String,
    key: hmac::Key,
}

/// Credentials ready for signing, with the signing keys derived from them so far.
pub struct SigningIdentity {
    credentials: Credentials,
    session_token: Option<HeaderValue>,
    /// A handful of entries (one per region and day): a short scan under a lock that is
    /// never held across an await.
    keys: Mutex<Vec<DerivedKey>>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug redacts the secret; the token and keys are never shown.
        f.debug_struct("SigningIdentity")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    pub fn new(credentials: &Credentials) -> Result<Self, SignError> {
        let session_token = credentials
            .session_token()
            .map(|token| {
                let mut value = HeaderValue::from_str(token).map_err(|_| {
                    SignError("the session token is not a valid header value".into())
                })?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        Ok(Self {
            credentials: credentials.clone(),
            session_token,
            keys: Mutex::new(Vec::new()),
        })
    }

    /// HMAC-SHA256 of `data` with the signing key for the scope, derived on first use
    /// (kSecret → kDate → kRegion → kService → kSigning). A cached key is used where it is,
    /// under the lock (never held across an await): no copy of the key per request.
    fn sign_with_key(&self, date: &[u8; 8], scope: SigningScope<'_>, data: &[u8]) -> hmac::Tag {
        if let Ok(keys) = self.keys.lock() {
            if let Some(cached) = keys
                .iter()
                .find(|k| &k.date == date && k.region == scope.region && k.service == scope.service)
            {
                return hmac::sign(&cached.key, data);
            }
        }
        let key = self.derive_key(date, scope);
        let tag = hmac::sign(&key, data);
        if let Ok(mut keys) = self.keys.lock() {
            // Keys of past days are never needed again.
            keys.retain(|k| &k.date == date);
            keys.push(DerivedKey {
                date: *date,
                region: scope.region.to_owned(),
                service: scope.service.to_owned(),
                key,
            });
        }
        tag
    }

    fn derive_key(&self, date: &[u8; 8], scope: SigningScope<'_>) -> hmac::Key {
        let mut secret = Vec::with_capacity(4 + self.credentials.secret_access_key().len());
        secret.extend_from_slice(b"AWS4");
        secret.extend_from_slice(self.credentials.secret_access_key().as_bytes());
        let mut material = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), date);
        for part in [
            scope.region.as_bytes(),
            scope.service.as_bytes(),
            b"aws4_request",
        ] {
            material = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, material.as_ref()), part);
        }
        hmac::Key::new(hmac::HMAC_SHA256, material.as_ref())
    }
}

/// The headers that are signed when present, in canonical (sorted) order. Other client
/// headers are forwarded unsigned, so a hop that adds or rewrites one (`accept-encoding`,
/// tracing headers) cannot break the signature.
fn signed_header_names() -> [&'static HeaderName; 7] {
    [
        &header::CONTENT_TYPE,
        &header::HOST,
        &X_AMZ_CONTENT_SHA256,
        &X_AMZ_DATE,
        &X_AMZ_MARKETPLACE,
        &X_AMZ_REQUEST_ID,
        &X_AMZ_SECURITY_TOKEN,
    ]
}

/// The names of the headers that are signed when present, in canonical (sorted) order: the
/// fixed set above plus the configured `[upstream.headers]`. Built once at start.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    names: Vec<HeaderName>,
    /// Bytes of all names together, to size the signer's buffer.
    names_len: usize,
}

impl SignedHeaders {
    /// The fixed set only.
    pub fn standard() -> Self {
        Self::with_static(std::iter::empty())
    }

    /// The fixed set plus `extra` names.
    pub fn with_static<'a>(extra: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        let mut names: Vec<HeaderName> = signed_header_names().into_iter().cloned().collect();
        names.extend(extra.into_iter().cloned());
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        let names_len = names.iter().map(|name| name.as_str().len() + 1).sum();
        Self { names, names_len }
    }
}

/// Headers [`sign_request`] may add: `x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token`, `authorization`. A map with room for them is not regrown.
pub const ADDED_HEADERS: usize = 4;

/// Signs the request in place: sets `x-amz-date`, `x-amz-content-sha256`, with temporary
/// credentials `x-amz-security-token`, and `authorization`.
///
/// `uri` must be exactly what is sent: its query is already canonical (see
/// [`crate::prepare::normalize_query`]) and is signed as it stands.
pub fn sign_request(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    identity: &SigningIdentity,
    scope: SigningScope<'_>,
    time: SystemTime,
) -> Result<(), SignError> {
    static STANDARD: std::sync::OnceLock<SignedHeaders> = std::sync::OnceLock::new();
    let signed = STANDARD.get_or_init(SignedHeaders::standard);
    sign_request_with(method, uri, headers, body, identity, scope, time, signed)
}

/// [`sign_request`], signing the headers of `signed` that are present.
#[allow(clippy::too_many_arguments)] // the request's parts, as the signer needs them
pub fn sign_request_with(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    identity: &SigningIdentity,
    scope: SigningScope<'_>,
    time: SystemTime,
    signed: &SignedHeaders,
) -> Result<(), SignError> {
    let amz_date = AmzDate::new(time)?;
    // The payload hash; for the usual empty body a constant (no digest, no allocation).
    let body_hash =
        (!body.is_empty()).then(|| hex32(digest::digest(&digest::SHA256, body).as_ref()));
    let payload_hash: &[u8] = body_hash
        .as_ref()
        .map_or(EMPTY_SHA256.as_bytes(), |h| &h[..]);
    // Room for the headers set here: at most one regrowth (none when the caller made the
    // map big enough) instead of one per insert.
    headers
        .try_reserve(ADDED_HEADERS)
        .map_err(|_| SignError("too many headers".into()))?;
    headers.insert(&X_AMZ_DATE, header_value(amz_date.as_bytes())?);
    let content_sha256 = match body_hash {
        None => HeaderValue::from_static(EMPTY_SHA256),
        Some(hash) => header_value(&hash)?,
    };
    headers.insert(&X_AMZ_CONTENT_SHA256, content_sha256);
    match &identity.session_token {
        Some(token) => headers.insert(&X_AMZ_SECURITY_TOKEN, token.clone()),
        None => headers.remove(&X_AMZ_SECURITY_TOKEN),
    };
    headers.remove(header::AUTHORIZATION);

    // One buffer holds, one after the other, the canonical request, the string to sign and
    // the Authorization value: one allocation for all three. Sized for the usual request
    // (the session token is the largest signed value); a larger one only grows it.
    let path = uri.path();
    let query = uri.query().unwrap_or_default();
    let mut buf = Vec::with_capacity(
        1024 + 3 * path.len()
            + query.len()
            + 2 * signed.names_len
            + identity.session_token.as_ref().map_or(0, HeaderValue::len),
    );
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b'\n');
    push_canonical_path(&mut buf, path);
    buf.push(b'\n');
    buf.extend_from_slice(query.as_bytes());
    buf.push(b'\n');
    for name in &signed.names {
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.push(b':');
        // A repeated header is signed as its values joined by commas, in order.
        for (i, value) in values.enumerate() {
            let value = value
                .to_str()
                .map_err(|_| SignError(format!("header {name} is not visible ASCII")))?;
            if i > 0 {
                buf.push(b',');
            }
            push_trimmed(&mut buf, value);
        }
        buf.push(b'\n');
    }
    buf.push(b'\n');
    // The signed-header list: a second pass over the same names (a few hash lookups)
    // rather than a collection of the names found present.
    let signed_list_start = buf.len();
    for name in signed
        .names
        .iter()
        .filter(|name| headers.contains_key(*name))
    {
        if buf.len() > signed_list_start {
            buf.push(b';');
        }
        buf.extend_from_slice(name.as_str().as_bytes());
    }
    let signed_list = signed_list_start..buf.len();
    buf.push(b'\n');
    buf.extend_from_slice(payload_hash);
    let canonical_hash = hex32(digest::digest(&digest::SHA256, &buf).as_ref());

    let date = amz_date.date();
    let string_to_sign_start = buf.len();
    buf.extend_from_slice(ALGORITHM.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(amz_date.as_bytes());
    buf.push(b'\n');
    push_credential_scope(&mut buf, date, scope);
    buf.push(b'\n');
    buf.extend_from_slice(&canonical_hash);
    let signature = hex32(
        identity
            .sign_with_key(date, scope, &buf[string_to_sign_start..])
            .as_ref(),
    );

    let authorization_start = buf.len();
    buf.extend_from_slice(ALGORITHM.as_bytes());
    buf.extend_from_slice(b" Credential=");
    buf.extend_from_slice(identity.credentials.access_key_id().as_bytes());
    buf.push(b'/');
    push_credential_scope(&mut buf, date, scope);
    buf.extend_from_slice(b", SignedHeaders=");
    buf.extend_from_within(signed_list);
    buf.extend_from_slice(b", Signature=");
    buf.extend_from_slice(&signature);
    let mut authorization = header_value(&buf[authorization_start..])?;
    authorization.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, authorization);
    Ok(())
}

/// `YYYYMMDD/region/service/aws4_request`.
fn push_credential_scope(out: &mut Vec<u8>, date: &[u8; 8], scope: SigningScope<'_>) {
    out.extend_from_slice(date);
    out.push(b'/');
    out.extend_from_slice(scope.region.as_bytes());
    out.push(b'/');
    out.extend_from_slice(scope.service.as_bytes());
    out.extend_from_slice(b"/aws4_request");
}

/// A header value from bytes the signer wrote (one copy into the value's own buffer).
fn header_value(bytes: &[u8]) -> Result<HeaderValue, SignError> {
    HeaderValue::from_bytes(bytes).map_err(|e| SignError(e.to_string()))
}

/// The canonical URI: the path normalised as SigV4 does for services other than S3 (empty
/// and `.` segments dropped, `..` resolved, a trailing slash kept), then every byte outside
/// the unreserved set encoded again.
fn push_canonical_path(out: &mut Vec<u8>, path: &str) {
    let path = if path.is_empty() { "/" } else { path };
    let push_encoded = |out: &mut Vec<u8>, text: &str| {
        for chunk in percent_encoding::utf8_percent_encode(text, PATH_UNRESERVED) {
            out.extend_from_slice(chunk.as_bytes());
        }
    };
    if !(path.contains("//") || path.contains('.')) {
        push_encoded(out, path);
        return;
    }
    // Segments are resolved in `out` itself: `..` cuts back to the previous `/` written
    // after `base` (an encoded segment holds no `/`).
    let base = out.len();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                let parent = out[base..].iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(base + parent);
            }
            segment => {
                out.push(b'/');
                push_encoded(out, segment);
            }
        }
    }
    let trailing = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|end| path.ends_with(end));
    if out.len() == base || trailing {
        out.push(b'/');
    }
}

/// A header value in canonical form: surrounding spaces trimmed, inner runs of spaces
/// collapsed to one. `value` is visible ASCII (checked by the caller), so bytes are chars.
fn push_trimmed(out: &mut Vec<u8>, value: &str) {
    let value = value.trim_matches(' ');
    if !value.contains("  ") {
        // The usual case: copied as it is.
        out.extend_from_slice(value.as_bytes());
        return;
    }
    let mut previous_space = false;
    for &byte in value.as_bytes() {
        if byte != b' ' || !previous_space {
            out.push(byte);
        }
        previous_space = byte == b' ';
    }
}

/// SHA-256 of the empty body, the payload hash of every GET.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lowercase hex of a 32-byte SHA-256 digest or HMAC-SHA256 tag, on the stack.
fn hex32(bytes: &[u8]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'0'; 64];
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    text
}

/// `YYYYMMDDTHHMMSSZ` for a time, without allocating.
struct AmzDate([u8; 16]);

impl AmzDate {
    fn new(time: SystemTime) -> Result<Self, SignError> {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SignError("the signing time is before 1970".into()))?
            .as_secs();
        let days = i64::try_from(secs / 86_400)
            .map_err(|_| SignError("the signing time is out of range".into()))?;
        let (year, month, day) = civil_from_days(days);
        let rem = secs % 86_400;
        let mut text = *b"00000000T000000Z";
        write_digits(&mut text[0..4], u64::try_from(year).unwrap_or(0));
        write_digits(&mut text[4..6], u64::from(month));
        write_digits(&mut text[6..8], u64::from(day));
        write_digits(&mut text[9..11], rem / 3600);
        write_digits(&mut text[11..13], rem % 3600 / 60);
        write_digits(&mut text[13..15], rem % 60);
        Ok(Self(text))
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        // Only ASCII digits, 'T' and 'Z' are ever written.
        std::str::from_utf8(&self.0).unwrap_or("19700101T000000Z")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn date(&self) -> &[u8; 8] {
        self.0.first_chunk::<8>().unwrap_or(&[b'0'; 8])
    }
}

fn write_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn amz_dates_are_utc_calendar_dates() {
        let at = |secs: u64| {
            AmzDate::new(UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap()
                .as_str()
                .to_owned()
        };
        assert_eq!(at(0), "19700101T000000Z");
        // The AWS test suite's timestamp: 2015-08-30T12:36:00Z.
        assert_eq!(at(1_440_938_160), "20150830T123600Z");
        assert_eq!(at(951_782_400), "20000229T000000Z"); // leap day of a century leap year
        assert_eq!(at(4_107_542_399), "21000228T235959Z"); // 2100 is not a leap year
        assert_eq!(at(1_795_000_000), "20261118T110640Z");
    }

    fn canonical_path(path: &str) -> String {
        let mut out = b"GET\n".to_vec(); // resolving `..` must not cut into what came before
        push_canonical_path(&mut out, path);
        String::from_utf8(out).unwrap().split_off(4)
    }

    #[test]
    fn paths_are_normalised_and_encoded_again() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(canonical_path("/v1/a%20b"), "/v1/a%2520b");
        assert_eq!(canonical_path("//example//"), "/example/");
        assert_eq!(canonical_path("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_path("/a/b/.."), "/a/");
        assert_eq!(canonical_path("/~user/x-y_z.json"), "/~user/x-y_z.json");
        assert_eq!(canonical_path("/$x:y@z"), "/%24x%3Ay%40z");
        assert_eq!(canonical_path("/ሴ"), "/%E1%88%B4");
        assert_eq!(canonical_path("/.."), "/");
        assert_eq!(canonical_path("/../../a/b%2F/./../c."), "/a/c.");
        assert_eq!(canonical_path("/a/b/c/../../d//e/.."), "/a/d/");
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed() {
        let trimmed = |value: &str| {
            let mut out = Vec::new();
            push_trimmed(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(trimmed("  a   b c  "), "a b c");
        assert_eq!(trimmed("a b"), "a b");
        assert_eq!(trimmed("   "), "");
        assert_eq!(trimmed("a\t\tb  "), "a\t\tb");
    }

    #[test]
    fn hex_and_the_empty_payload_hash() {
        let empty = hex32(digest::digest(&digest::SHA256, b"").as_ref());
        assert_eq!(&empty[..], EMPTY_SHA256.as_bytes());
        let tag = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(&hex32(&tag)[..8], b"000fa5ff");
    }

    #[test]
    fn the_signing_key_is_the_one_aws_documents() {
        // AWS's example of deriving a signing key (secret, 20150830, us-east-1, iam), and the
        // kSigning it publishes.
        let identity = SigningIdentity::new(&Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "t",
        ))
        .unwrap();
        let scope = SigningScope {
            region: "us-east-1",
            service: "iam",
        };
        let published = "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9";
        let published: Vec<u8> = (0..published.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&published[i..i + 2], 16).unwrap())
            .collect();
        let ours = hmac::sign(&identity.derive_key(b"20150830", scope), b"probe");
        let theirs = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &published), b"probe");
        assert_eq!(ours.as_ref(), theirs.as_ref());
    }

    #[test]
    fn signing_keys_are_derived_once_per_day_region_and_service() {
        let identity =
            SigningIdentity::new(&Credentials::new("AKID", "secret", None, None, "t")).unwrap();
        let scope = SigningScope {
            region: "us-east-1",
            service: "execute-api",
        };
        let sign =
            |date: &[u8; 8], scope| identity.sign_with_key(date, scope, b"x").as_ref().to_vec();
        let a = sign(b"20260101", scope);
        let _ = sign(
            b"20260101",
            SigningScope {
                region: "eu-west-1",
                ..scope
            },
        );
        assert_eq!(identity.keys.lock().unwrap().len(), 2);
        let again = sign(b"20260101", scope);
        assert_eq!(identity.keys.lock().unwrap().len(), 2);
        assert_eq!(a, again);
        // The cached key is the derived one (whose derivation the next test checks).
        let expected = hmac::sign(&identity.derive_key(b"20260101", scope), b"x");
        assert_eq!(a, expected.as_ref());
        // A new day replaces the old day's keys.
        let next = sign(b"20260102", scope);
        assert_eq!(identity.keys.lock().unwrap().len(), 1);
        assert_ne!(a, next);
    }
}
