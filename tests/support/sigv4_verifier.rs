//! Independent AWS Signature Version 4 verifier (header-based signing,
//! `AWS4-HMAC-SHA256`) for integration tests.
//!
//! A fake upstream server hands the raw request it received from the proxy to
//! [`verify`], which recomputes the signature from scratch and compares it with
//! the one in the `Authorization` header.
//!
//! This module is written from the SigV4 specification and deliberately does
//! not use the `aws-sigv4` crate (which the proxy itself uses), so that the two
//! implementations check each other. It is validated against the AWS signing
//! test suite in `tests/fixtures/sigv4-test-suite` by `tests/sigv4_vectors.rs`.
//!
//! Rules implemented (non-S3 services):
//! * canonical URI: the raw path, optionally normalised (RFC 3986 dot-segment
//!   removal plus collapsing of empty segments, i.e. repeated slashes), then
//!   every segment URI-encoded with the unreserved set `A-Za-z0-9-_.~`. The raw
//!   path is encoded as is, so an already percent-encoded path is encoded a
//!   second time (`%20` becomes `%2520`).
//! * canonical query: split on `&` and the first `=`, percent-decode name and
//!   value (`+` is a literal plus, not a space), re-encode with the unreserved
//!   set and uppercase hex, sort by name then value, join with `&`. A name
//!   without `=` gets an empty value.
//! * canonical headers: the headers listed in `SignedHeaders=`, lowercase name,
//!   value trimmed with inner runs of spaces collapsed to one space, repeated
//!   headers joined with `,` in arrival order.
//! * payload hash: hex SHA-256 of the body, or `UNSIGNED-PAYLOAD` when the
//!   `x-amz-content-sha256` header says so.
#![allow(dead_code)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac};
use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The only algorithm this verifier accepts.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `x-amz-content-sha256` value for a payload that is not covered by the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Terminator of a SigV4 credential scope.
pub const SCOPE_TERMINATOR: &str = "aws4_request";

/// Everything except the RFC 3986 unreserved characters `A-Za-z0-9-_.~` is
/// percent-encoded (`percent-encoding` emits uppercase hex digits).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One request as the upstream received it off the wire.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedRequest<'a> {
    pub method: &'a str,
    /// Raw request path as sent on the wire, without the query, e.g. "/v1/a%20b".
    pub path: &'a str,
    /// Raw query string as sent, without '?' ("" when none).
    pub query: &'a str,
    /// Headers in arrival order; names in any case; a name may repeat.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What a successful [`verify`] established about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    /// The request timestamp in ISO 8601 basic format (`YYYYMMDDTHHMMSSZ`): the
    /// `x-amz-date` value, or the `date` header converted to that format.
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub session_token: Option<String>,
    pub canonical_request: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// No `Authorization` header.
    MissingAuthorization,
    /// Syntactically invalid authorization data, date, path or header set.
    Malformed(String),
    /// The `Authorization` header uses an algorithm other than `AWS4-HMAC-SHA256`.
    UnsupportedAlgorithm(String),
    /// `secret_for` does not know the access key id.
    UnknownAccessKey(String),
    /// Neither `x-amz-date` nor `date` is present.
    MissingDate,
    /// The header carrying the request date is not in `SignedHeaders`.
    DateNotSigned(String),
    /// The request date is further than `max_skew` from `now`.
    Skewed,
    /// The credential scope does not match the request (e.g. scope date differs
    /// from the day of the request date).
    ScopeMismatch(String),
    /// `host` is not in `SignedHeaders`.
    HostNotSigned,
    /// A header named in `SignedHeaders` is absent from the request.
    SignedHeaderMissing(String),
    /// `x-amz-security-token` is present but not in `SignedHeaders`.
    UnsignedSecurityToken,
    /// `require_payload_hash_header` is set and `x-amz-content-sha256` is absent.
    MissingPayloadHash,
    /// `x-amz-content-sha256` does not match the SHA-256 of the received body.
    PayloadHashMismatch { header: String, body: String },
    /// The recomputed signature differs from the one in the request.
    BadSignature {
        expected: String,
        got: String,
        canonical_request: String,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAuthorization => f.write_str("missing Authorization header"),
            Self::Malformed(why) => write!(f, "malformed SigV4 request: {why}"),
            Self::UnsupportedAlgorithm(alg) => {
                write!(
                    f,
                    "unsupported signing algorithm {alg:?} (want {ALGORITHM})"
                )
            }
            Self::UnknownAccessKey(akid) => write!(f, "unknown access key id {akid:?}"),
            Self::MissingDate => f.write_str("neither x-amz-date nor date header present"),
            Self::DateNotSigned(name) => write!(f, "date header {name:?} is not signed"),
            Self::Skewed => f.write_str("request date is outside the allowed clock skew"),
            Self::ScopeMismatch(why) => write!(f, "credential scope mismatch: {why}"),
            Self::HostNotSigned => f.write_str("host header is not signed"),
            Self::SignedHeaderMissing(name) => {
                write!(f, "signed header {name:?} is not present in the request")
            }
            Self::UnsignedSecurityToken => {
                f.write_str("x-amz-security-token is present but not signed")
            }
            Self::MissingPayloadHash => f.write_str("x-amz-content-sha256 header is required"),
            Self::PayloadHashMismatch { header, body } => write!(
                f,
                "x-amz-content-sha256 {header} does not match body SHA-256 {body}"
            ),
            Self::BadSignature {
                expected,
                got,
                canonical_request,
            } => write!(
                f,
                "signature mismatch: expected {expected}, got {got}; \
                 canonical request:\n{canonical_request}"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Normalise the path (remove `.`/`..` segments, collapse repeated slashes)
    /// before encoding it. True for every AWS service except S3.
    pub normalize_path: bool,
    /// The verifier's notion of the current time.
    pub now: SystemTime,
    /// Largest accepted distance between the request date and `now`.
    pub max_skew: Duration,
    /// Reject requests without an `x-amz-content-sha256` header.
    pub require_payload_hash_header: bool,
}

impl VerifyOptions {
    /// Non-S3 defaults: normalised paths, AWS's 15 minute skew window, payload
    /// hash header optional.
    pub fn new(now: SystemTime) -> Self {
        Self {
            normalize_path: true,
            now,
            max_skew: Duration::from_secs(15 * 60),
            require_payload_hash_header: false,
        }
    }
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// `YYYYMMDD` from the credential scope.
    pub scope_date: String,
    pub region: String,
    pub service: String,
    /// In the order given by the header (validated to be lowercase, sorted and unique).
    pub signed_headers: Vec<String>,
    /// Lowercase hex.
    pub signature: String,
}

impl Authorization {
    /// `YYYYMMDD/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        credential_scope(&self.scope_date, &self.region, &self.service)
    }
}

/// `YYYYMMDD/region/service/aws4_request`.
pub fn credential_scope(date_yyyymmdd: &str, region: &str, service: &str) -> String {
    format!("{date_yyyymmdd}/{region}/{service}/{SCOPE_TERMINATOR}")
}

fn malformed(why: impl Into<String>) -> VerifyError {
    VerifyError::Malformed(why.into())
}

/// Parses an `Authorization` header value:
/// `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=<64 hex>` (spaces after the commas
/// optional).
pub fn parse_authorization(value: &str) -> Result<Authorization, VerifyError> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (algorithm, rest) = value
        .split_once(' ')
        .ok_or_else(|| malformed("Authorization header has no credentials"))?;
    if algorithm != ALGORITHM {
        return Err(VerifyError::UnsupportedAlgorithm(algorithm.to_owned()));
    }

    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim_matches(|c| c == ' ' || c == '\t');
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| malformed(format!("Authorization component {part:?} has no '='")))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            other => {
                return Err(malformed(format!(
                    "unknown Authorization component {other:?}"
                )))
            }
        };
        if slot.replace(val).is_some() {
            return Err(malformed(format!(
                "duplicate Authorization component {key}"
            )));
        }
    }
    let credential = credential.ok_or_else(|| malformed("Authorization lacks Credential="))?;
    let signed_headers =
        signed_headers.ok_or_else(|| malformed("Authorization lacks SignedHeaders="))?;
    let signature = signature.ok_or_else(|| malformed("Authorization lacks Signature="))?;

    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = parts[..] else {
        return Err(malformed(format!(
            "Credential {credential:?} is not AKID/date/region/service/aws4_request"
        )));
    };
    if akid.is_empty() || region.is_empty() || service.is_empty() {
        return Err(malformed(format!(
            "Credential {credential:?} has an empty component"
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!(
            "credential date {date:?} is not YYYYMMDD"
        )));
    }
    if terminator != SCOPE_TERMINATOR {
        return Err(VerifyError::ScopeMismatch(format!(
            "credential scope ends in {terminator:?}, not {SCOPE_TERMINATOR:?}"
        )));
    }

    let names: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    for name in &names {
        if name.is_empty() {
            return Err(malformed(format!(
                "empty name in SignedHeaders={signed_headers}"
            )));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(malformed(format!(
                "SignedHeaders name {name:?} is not lowercase"
            )));
        }
    }
    if names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(malformed(format!(
            "SignedHeaders={signed_headers} is not sorted and unique"
        )));
    }

    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed(format!(
            "Signature {signature:?} is not 64 lowercase hex digits"
        )));
    }

    Ok(Authorization {
        access_key_id: akid.to_owned(),
        scope_date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers: names,
        signature: signature.to_owned(),
    })
}

/// Values of every header named `name` (case-insensitive), in arrival order.
pub fn header_values<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The single value of header `name`; an error if it is repeated.
fn single_header<'h>(
    headers: &'h [(String, String)],
    name: &str,
) -> Result<Option<&'h str>, VerifyError> {
    match header_values(headers, name)[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(malformed(format!("header {name} is repeated"))),
    }
}

/// Trims spaces and tabs at both ends and collapses every inner run of spaces
/// to a single space (the SigV4 "trimall" rule).
pub fn canonical_header_value(value: &str) -> String {
    let trimmed = value.trim_matches(|c| c == ' ' || c == '\t');
    let mut out = String::with_capacity(trimmed.len());
    let mut previous_space = false;
    for c in trimmed.chars() {
        if c == ' ' {
            if !previous_space {
                out.push(' ');
            }
            previous_space = true;
        } else {
            out.push(c);
            previous_space = false;
        }
    }
    out
}

fn uri_encode(bytes: &[u8]) -> String {
    percent_encode(bytes, UNRESERVED).to_string()
}

/// Canonical URI for non-S3 services: optionally normalised, then every
/// segment of the raw path URI-encoded (so `%` becomes `%25`).
pub fn canonical_uri(path: &str, normalize_path: bool) -> Result<String, VerifyError> {
    if path.is_empty() {
        return Ok("/".to_owned());
    }
    if !path.starts_with('/') {
        return Err(malformed(format!("path {path:?} does not start with '/'")));
    }
    if !normalize_path {
        let segments: Vec<String> = path.split('/').map(|s| uri_encode(s.as_bytes())).collect();
        return Ok(segments.join("/"));
    }

    // RFC 3986 section 5.2.4 remove_dot_segments, plus dropping empty segments
    // (repeated slashes), which the AWS test vectors require.
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut out = String::from("/");
    let encoded: Vec<String> = kept.iter().map(|s| uri_encode(s.as_bytes())).collect();
    out.push_str(&encoded.join("/"));
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Canonical query string from the raw query (without `?`).
pub fn canonical_query_string(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            let name: Vec<u8> = percent_decode_str(name).collect();
            let value: Vec<u8> = percent_decode_str(value).collect();
            (uri_encode(&name), uri_encode(&value))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

/// The hashed-payload line of the canonical request: the body's SHA-256, or
/// `UNSIGNED-PAYLOAD` when `x-amz-content-sha256` says so. Any other
/// `x-amz-content-sha256` value must equal the body's hash.
pub fn payload_hash(req: &ReceivedRequest<'_>) -> Result<String, VerifyError> {
    let body = sha256_hex(req.body);
    match single_header(req.headers, "x-amz-content-sha256")? {
        None => Ok(body),
        Some(value) => {
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            if value == UNSIGNED_PAYLOAD {
                Ok(UNSIGNED_PAYLOAD.to_owned())
            } else if value == body {
                Ok(body)
            } else if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                Err(VerifyError::PayloadHashMismatch {
                    header: value.to_owned(),
                    body,
                })
            } else {
                Err(malformed(format!(
                    "unsupported x-amz-content-sha256 value {value:?}"
                )))
            }
        }
    }
}

/// The SigV4 canonical request over `signed_headers` (names in any case and
/// order; they are lowercased and sorted).
pub fn canonical_request(
    req: &ReceivedRequest<'_>,
    signed_headers: &[String],
    normalize_path: bool,
) -> Result<String, VerifyError> {
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();

    let mut headers = String::new();
    for name in &names {
        let values = header_values(req.headers, name);
        if values.is_empty() {
            return Err(VerifyError::SignedHeaderMissing(name.clone()));
        }
        let values: Vec<String> = values.into_iter().map(canonical_header_value).collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }

    Ok(format!(
        "{method}\n{uri}\n{query}\n{headers}\n{signed}\n{payload}",
        method = req.method,
        uri = canonical_uri(req.path, normalize_path)?,
        query = canonical_query_string(req.query),
        signed = names.join(";"),
        payload = payload_hash(req)?,
    ))
}

/// `AWS4-HMAC-SHA256\n<amz_date>\n<scope>\n<hex sha256(canonical request)>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
pub fn signing_key(secret: &str, date_yyyymmdd: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date_yyyymmdd.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, SCOPE_TERMINATOR.as_bytes())
}

/// Lowercase hex HMAC-SHA256 of `string_to_sign` under the derived signing key.
pub fn signature(
    secret: &str,
    date_yyyymmdd: &str,
    region: &str,
    service: &str,
    string_to_sign: &str,
) -> String {
    let key = signing_key(secret, date_yyyymmdd, region, service);
    hex(&hmac_sha256(&key, string_to_sign.as_bytes()))
}

/// Signs `req` the way a client would and returns the `Authorization` header
/// value. `req` must already carry the headers to be signed (including `host`
/// and the date header). Useful to build requests for negative tests.
#[allow(clippy::too_many_arguments)]
pub fn authorization_header(
    req: &ReceivedRequest<'_>,
    signed_headers: &[String],
    normalize_path: bool,
    access_key_id: &str,
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
) -> Result<String, VerifyError> {
    let day = amz_date
        .get(..8)
        .ok_or_else(|| malformed(format!("bad date {amz_date:?}")))?;
    let creq = canonical_request(req, signed_headers, normalize_path)?;
    let scope = credential_scope(day, region, service);
    let sts = string_to_sign(amz_date, &scope, &creq);
    let sig = signature(secret, day, region, service, &sts);
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={sig}",
        names.join(";")
    ))
}

// ---- dates -----------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses an ISO 8601 basic timestamp `YYYYMMDDTHHMMSSZ` (the `x-amz-date` format).
pub fn parse_amz_date(value: &str) -> Result<SystemTime, VerifyError> {
    let bad = || malformed(format!("date {value:?} is not YYYYMMDDTHHMMSSZ"));
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, VerifyError> {
        let digits = &b[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(digits
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Formats `time` (UTC, whole seconds) as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The request timestamp: `x-amz-date` if present, else the `date` header
/// (RFC 7231 format). Returns (header name used, `YYYYMMDDTHHMMSSZ`, time).
fn request_date(
    headers: &[(String, String)],
) -> Result<(&'static str, String, SystemTime), VerifyError> {
    if let Some(value) = single_header(headers, "x-amz-date")? {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let time = parse_amz_date(value)?;
        return Ok(("x-amz-date", value.to_owned(), time));
    }
    if let Some(value) = single_header(headers, "date")? {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let time = httpdate::parse_http_date(value)
            .map_err(|e| malformed(format!("date header {value:?}: {e}")))?;
        return Ok(("date", format_amz_date(time), time));
    }
    Err(VerifyError::MissingDate)
}

// ---- verification ----------------------------------------------------------

/// Verifies the SigV4 `Authorization` header of `req`.
///
/// `secret_for` maps an access key id to its secret access key (`None` for an
/// unknown key). Checks, in order: header syntax, `host` and the date header
/// are signed, every signed header is present, date syntax and scope day,
/// clock skew, session token signed, payload hash header, then the signature.
pub fn verify(
    req: &ReceivedRequest<'_>,
    secret_for: impl Fn(&str) -> Option<String>,
    opts: &VerifyOptions,
) -> Result<Verified, VerifyError> {
    let auth_value =
        single_header(req.headers, "authorization")?.ok_or(VerifyError::MissingAuthorization)?;
    let auth = parse_authorization(auth_value)?;
    let is_signed = |name: &str| auth.signed_headers.iter().any(|h| h == name);

    if !is_signed("host") {
        return Err(VerifyError::HostNotSigned);
    }
    if let Some(name) = auth
        .signed_headers
        .iter()
        .find(|name| header_values(req.headers, name).is_empty())
    {
        return Err(VerifyError::SignedHeaderMissing(name.clone()));
    }

    let (date_header, amz_date, time) = request_date(req.headers)?;
    if !is_signed(date_header) {
        return Err(VerifyError::DateNotSigned(date_header.to_owned()));
    }
    if amz_date.get(..8) != Some(auth.scope_date.as_str()) {
        return Err(VerifyError::ScopeMismatch(format!(
            "scope date {} is not the day of request date {amz_date}",
            auth.scope_date
        )));
    }
    let skew = match opts.now.duration_since(time) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > opts.max_skew {
        return Err(VerifyError::Skewed);
    }

    let session_token = single_header(req.headers, "x-amz-security-token")?.map(str::to_owned);
    if session_token.is_some() && !is_signed("x-amz-security-token") {
        return Err(VerifyError::UnsignedSecurityToken);
    }

    if opts.require_payload_hash_header
        && single_header(req.headers, "x-amz-content-sha256")?.is_none()
    {
        return Err(VerifyError::MissingPayloadHash);
    }

    let secret = secret_for(&auth.access_key_id)
        .ok_or_else(|| VerifyError::UnknownAccessKey(auth.access_key_id.clone()))?;

    // Also rejects an x-amz-content-sha256 that disagrees with the body.
    let creq = canonical_request(req, &auth.signed_headers, opts.normalize_path)?;
    let sts = string_to_sign(&amz_date, &auth.scope(), &creq);
    let expected = signature(&secret, &auth.scope_date, &auth.region, &auth.service, &sts);
    if constant_time::verify_slices_are_equal(expected.as_bytes(), auth.signature.as_bytes())
        .is_err()
    {
        return Err(VerifyError::BadSignature {
            expected,
            got: auth.signature,
            canonical_request: creq,
        });
    }

    Ok(Verified {
        access_key_id: auth.access_key_id,
        date: amz_date,
        region: auth.region,
        service: auth.service,
        signed_headers: auth.signed_headers,
        session_token,
        canonical_request: creq,
    })
}
