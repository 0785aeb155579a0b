//! Turns a client's plain request into the request Prime will receive (before signing):
//! target checks, the canonical query string, the forwarded headers, the buffered body.
//!
//! The query string is the subtle part. LWA access tokens travel in `customerIdentifier`
//! and contain `|`, `+`, `/`, `=`; clients send them raw or percent-encoded, and a `+` is
//! a literal plus (not a space). The proxy decodes each name and value once, re-encodes
//! them with the SigV4 unreserved set and sends exactly the canonical query string it
//! signs, so what is signed is what is sent.

use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Extensions, Method, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;

use crate::memory::{MemoryBudget, OverBudget, Reservation};

/// The request id header: kept from the client, else created; echoed on the response.
pub static X_AMZ_REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");
/// The header that selects the region.
pub static X_AMZ_MARKETPLACE: HeaderName = HeaderName::from_static("x-amz-marketplace");

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, never the next.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Besides the hop-by-hop ones, headers a client must not control: the proxy's own framing
/// decisions, and anything that would carry or fake a signature.
static CLIENT_MUST_NOT_SET: [HeaderName; 7] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-amz-date"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("x-amz-content-sha256"),
    // Set by the proxy: Host from the region, Content-Length from the buffered body.
    header::HOST,
    header::CONTENT_LENGTH,
    // The proxy has already read the whole body; upstream must not wait for a 100.
    header::EXPECT,
];

/// Why a request cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("CONNECT is not supported: this is a signing reverse proxy, not a tunnel")]
    Connect,
    #[error("absolute-form request targets are not accepted: send the path only, the marketplace picks the host")]
    AbsoluteForm,
    #[error("the request target must be a path starting with '/'")]
    NotAPath,
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the query string has a '%' that is not followed by two hex digits")]
    BadPercentEncoding,
    #[error("the query string decodes to bytes that are not UTF-8")]
    NotUtf8,
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("header {0} has a value the proxy cannot forward")]
    BadHeader(&'static str),
    #[error("the request has both Content-Length and Transfer-Encoding: its framing is ambiguous")]
    AmbiguousFraming,
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// Marks a request whose head had both Content-Length and Transfer-Encoding. hyper resolves
/// that framing before the service sees the request (Transfer-Encoding wins, the length is
/// removed), so the listener, which sees the raw head, attaches this to the request.
#[derive(Debug, Clone, Copy)]
pub struct FramingConflict;

/// Refuses a request whose body length is ambiguous (RFC 9112 §6.3: a proxy must not forward
/// it as it is; Envoy refuses it too), the classic request-smuggling shape: both headers
/// still present, or the listener saw both in the raw head ([`FramingConflict`]).
pub fn check_framing(headers: &HeaderMap, extensions: &Extensions) -> Result<(), PrepareError> {
    let both = headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH);
    if both || extensions.get::<FramingConflict>().is_some() {
        return Err(PrepareError::AmbiguousFraming);
    }
    Ok(())
}

/// Refuses what a reverse proxy must not forward: CONNECT, absolute-form and
/// asterisk-form targets, dot segments.
///
/// Over HTTP/2 every request carries `:scheme` and `:authority`, so only HTTP/1 targets with
/// a scheme are absolute-form.
pub fn check_target(method: &Method, uri: &Uri, version: Version) -> Result<(), PrepareError> {
    if method == Method::CONNECT {
        return Err(PrepareError::Connect);
    }
    if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(PrepareError::AbsoluteForm);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(PrepareError::NotAPath);
    }
    if path.split('/').any(is_dot_segment) {
        return Err(PrepareError::DotSegment);
    }
    Ok(())
}

/// `.` or `..`, with each dot possibly written `%2e` / `%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// The canonical query string: each name and value percent-decoded once (`+` stays a plus),
/// re-encoded as UTF-8 with the SigV4 unreserved set, pairs ordered by encoded name then
/// value. `flag` becomes `flag=`; empty pieces (`a=1&&b=2`) are dropped. A stray `%` or
/// decoded bytes that are not UTF-8 are refused.
pub fn normalize_query(raw: &str) -> Result<String, PrepareError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    // Every name and value is encoded into one buffer; pairs are ranges into it. Four
    // allocations per query whatever its length (this runs on every request). The buffers
    // are bytes, not `String`s: pushing a `char` re-encodes UTF-8 per byte, which made this
    // loop a tenth of a request's instructions under callgrind.
    let mut encoded: Vec<u8> = Vec::with_capacity(raw.len() + raw.len() / 2);
    let mut pairs: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(8);
    let mut scratch = Vec::with_capacity(raw.len());
    for piece in raw.split('&').filter(|piece| !piece.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = reencode(name, &mut scratch, &mut encoded)?;
        let value = reencode(value, &mut scratch, &mut encoded)?;
        pairs.push((name, value));
    }
    pairs.sort_unstable_by(|(a_name, a_value), (b_name, b_value)| {
        (&encoded[a_name.clone()], &encoded[a_value.clone()])
            .cmp(&(&encoded[b_name.clone()], &encoded[b_value.clone()]))
    });
    let mut canonical = Vec::with_capacity(encoded.len() + 2 * pairs.len());
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            canonical.push(b'&');
        }
        canonical.extend_from_slice(&encoded[name]);
        canonical.push(b'=');
        canonical.extend_from_slice(&encoded[value]);
    }
    // Only unreserved ASCII and `%XX` were written: always UTF-8.
    String::from_utf8(canonical).map_err(|_| PrepareError::NotUtf8)
}

/// Percent-decodes `text` strictly into `scratch`, then appends it to `out` encoded with the
/// unreserved set; returns where it went.
fn reencode(
    text: &str,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<Range<usize>, PrepareError> {
    let bytes = text.as_bytes();
    let start = out.len();
    // Most names and values (an LWA token among them) arrive already canonical: copied as
    // they are, without the decode and encode passes.
    if is_canonical(bytes) {
        out.extend_from_slice(bytes);
        return Ok(start..out.len());
    }
    scratch.clear();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => scratch.push(hi << 4 | lo),
                    _ => return Err(PrepareError::BadPercentEncoding),
                }
                i += 3;
            }
            byte => {
                scratch.push(byte);
                i += 1;
            }
        }
    }
    // SigV4 signers (aws-sigv4 among them) decode the query as UTF-8 text: bytes that are
    // not UTF-8 would be signed as U+FFFD and sent as themselves, a signature Prime rejects.
    std::str::from_utf8(scratch).map_err(|_| PrepareError::NotUtf8)?;
    out.reserve(scratch.len() * 3);
    for &byte in scratch.iter() {
        if UNRESERVED[usize::from(byte)] {
            out.push(byte);
        } else {
            out.extend_from_slice(&[
                b'%',
                UPPER_HEX[usize::from(byte >> 4)],
                UPPER_HEX[usize::from(byte & 0xf)],
            ]);
        }
    }
    Ok(start..out.len())
}

/// Whether `bytes` is already what [`reencode`] would write: unreserved bytes, and `%XX` in
/// upper-case hex for ASCII bytes outside the unreserved set (so the decoded text is UTF-8).
fn is_canonical(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if UNRESERVED[usize::from(byte)] {
            i += 1;
            continue;
        }
        if byte != b'%' {
            return false;
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            return false;
        };
        let (Some(hi_value), Some(lo_value)) = (upper_hex_value(hi), upper_hex_value(lo)) else {
            return false;
        };
        let decoded = hi_value << 4 | lo_value;
        if decoded >= 0x80 || UNRESERVED[usize::from(decoded)] {
            return false;
        }
        i += 3;
    }
    true
}

fn upper_hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// SigV4's unreserved set (RFC 3986): the bytes a canonical query carries as themselves.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        byte += 1;
    }
    table
};

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The client's `x-amz-request-id` when it sent a usable one, else a fresh UUIDv4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_AMZ_REQUEST_ID)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty() && bytes.len() <= 200 && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// A fresh UUIDv4 as a header value.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"))
}

/// Removes the hop-by-hop headers, including those a `Connection` header names
/// (`Connection: close, x-foo` makes `x-foo` hop-by-hop too). Used in both directions.
///
/// `Connection` cannot make the routing and request-id headers hop-by-hop: the proxy itself
/// reads them, and Prime must receive what was routed and signed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| *name != X_AMZ_MARKETPLACE && *name != X_AMZ_REQUEST_ID)
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The headers sent upstream: the client's, minus what it must not control, plus `Host`,
/// `x-amz-request-id` and a `Content-Length` that matches the buffered body.
pub fn forward_headers(
    mut headers: HeaderMap,
    host: &HeaderValue,
    request_id: &HeaderValue,
    body_len: usize,
) -> HeaderMap {
    let had_content_length = headers.contains_key(header::CONTENT_LENGTH);
    remove_hop_by_hop(&mut headers);
    for name in &CLIENT_MUST_NOT_SET {
        headers.remove(name);
    }
    headers.insert(header::HOST, host.clone());
    headers.insert(X_AMZ_REQUEST_ID.clone(), request_id.clone());
    if body_len > 0 || had_content_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    headers
}

/// Adds `[upstream.headers]`: they replace a client header of the same name.
pub fn add_static_headers(headers: &mut HeaderMap, statics: &HeaderMap) {
    for (name, value) in statics {
        headers.insert(name.clone(), value.clone());
    }
}

/// Client headers that are signed must be visible ASCII (SigV4 signs text): refused here
/// rather than forwarded unsigned or failing later.
pub fn check_signed_headers(headers: &HeaderMap) -> Result<(), PrepareError> {
    for value in headers.get_all(header::CONTENT_TYPE) {
        if value.to_str().is_err() {
            return Err(PrepareError::BadHeader("content-type"));
        }
    }
    Ok(())
}

/// Reads the whole request body, refusing more than `limit` bytes: it is hashed for the
/// signature and replayed on retries. The bytes are held against `budget` (the returned
/// reservation); a body that does not fit is read and discarded (so the client can read the
/// answer on a connection in a clean state) and refused with [`PrepareError::OverBudget`].
pub async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    limit: u64,
    timeout: Duration,
    budget: &MemoryBudget,
) -> Result<(Bytes, Reservation), PrepareError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(PrepareError::BodyTooLarge { limit });
    }
    if declared == Some(0) || body.is_end_stream() {
        return Ok((Bytes::new(), Reservation::none()));
    }
    tokio::time::timeout(timeout, collect_within(body, declared, limit, budget))
        .await
        .map_err(|_| PrepareError::BodyTimeout)?
}

/// The body's bytes, reserved against the budget up front when the length is declared, else
/// chunk by chunk.
async fn collect_within<B>(
    body: B,
    declared: Option<u64>,
    limit: u64,
    budget: &MemoryBudget,
) -> Result<(Bytes, Reservation), PrepareError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut reservation = match declared.map(|len| budget.try_reserve(len)) {
        Some(Ok(reservation)) => reservation,
        Some(Err(over)) => return Err(drain(body, limit, over).await),
        None => Reservation::none(),
    };
    let capacity = usize::try_from(declared.unwrap_or(0)).unwrap_or(0);
    let mut buffer = bytes::BytesMut::with_capacity(capacity);
    let mut first: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PrepareError::BodyRead(e.to_string()))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        // hyper's bodies hand out `Bytes`: this is a reference count, not a copy.
        let data = data.copy_to_bytes(data.remaining());
        let had = buffer.len() + first.as_ref().map_or(0, Bytes::len);
        let total = had as u64 + data.len() as u64;
        if total > limit {
            return Err(PrepareError::BodyTooLarge { limit });
        }
        if declared.is_none() {
            if let Err(over) = budget.try_grow(&mut reservation, data.len() as u64) {
                drop(reservation);
                return Err(drain(body, limit.saturating_sub(total), over).await);
            }
        }
        // A body that arrives as one frame is kept as it is: no copy.
        match first.take() {
            None if buffer.is_empty() => first = Some(data),
            None => buffer.extend_from_slice(&data),
            Some(earlier) => {
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
            }
        }
    }
    let bytes = first.unwrap_or_else(|| buffer.freeze());
    Ok((bytes, reservation))
}

/// Reads and discards up to `limit` more bytes of a refused body, then gives the refusal.
async fn drain<B>(mut body: std::pin::Pin<&mut B>, limit: u64, over: OverBudget) -> PrepareError
where
    B: Body,
{
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.remaining() as u64;
            if seen > limit {
                break;
            }
        }
    }
    PrepareError::OverBudget(over)
}

/// The upstream URI: the region's origin, the client's path as sent, the canonical query.
pub fn upstream_uri(origin: &str, path: &str, canonical_query: &str) -> Result<Uri, PrepareError> {
    let mut uri = String::with_capacity(origin.len() + path.len() + canonical_query.len() + 1);
    uri.push_str(origin);
    uri.push_str(path);
    if !canonical_query.is_empty() {
        uri.push('?');
        uri.push_str(canonical_query);
    }
    Uri::try_from(uri).map_err(|_| PrepareError::NotAPath)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An LWA token as Amazon issues them: `Atza|` prefix, base64 body with `+`, `/`, `=`.
    const TOKEN: &str = "Atza|IwEBIA+x/yz==";
    /// The same token in its canonical (SigV4-encoded) form, worked out by hand.
    const TOKEN_CANONICAL: &str = "Atza%7CIwEBIA%2Bx%2Fyz%3D%3D";

    #[test]
    fn every_spelling_of_an_lwa_token_gives_the_same_canonical_query() {
        let expected = format!("customerIdentifier={TOKEN_CANONICAL}");
        for spelling in [
            format!("customerIdentifier={TOKEN}"),
            "customerIdentifier=Atza%7CIwEBIA%2Bx%2Fyz%3D%3D".to_owned(),
            "customerIdentifier=Atza%7cIwEBIA%2bx%2fyz%3d%3d".to_owned(),
            "customerIdentifier=Atza|IwEBIA%2Bx/yz%3D=".to_owned(),
            "customer%49dentifier=Atza|IwEBIA+x/yz==".to_owned(),
        ] {
            assert_eq!(normalize_query(&spelling).unwrap(), expected, "{spelling}");
        }
    }

    #[test]
    fn plus_is_literal_and_space_must_be_percent_20() {
        assert_eq!(normalize_query("q=a+b").unwrap(), "q=a%2Bb");
        assert_eq!(normalize_query("q=a%20b").unwrap(), "q=a%20b");
    }

    #[test]
    fn pairs_are_ordered_by_encoded_name_then_value() {
        assert_eq!(
            normalize_query("b=2&a=2&a=1&B=0&%E1%88%B4=x&_=y").unwrap(),
            // Byte order of the encoded names: % < B < _ < a < b.
            "%E1%88%B4=x&B=0&_=y&a=1&a=2&b=2"
        );
    }

    #[test]
    fn raw_utf8_is_encoded_like_its_percent_encoded_form() {
        assert_eq!(normalize_query("name=Zoë").unwrap(), "name=Zo%C3%AB");
        assert_eq!(normalize_query("name=Zo%c3%ab").unwrap(), "name=Zo%C3%AB");
    }

    #[test]
    fn only_text_already_canonical_is_copied_as_it_is() {
        assert!(is_canonical(b"Atza%7CIwEB-abc_1.2~"));
        assert!(is_canonical(b""));
        // An escaped unreserved byte, lower-case hex, an escape of a non-ASCII byte, a byte
        // that needs escaping: each is re-encoded.
        for text in ["%41", "%7c", "%C3%AB", "a|b", "a+b", "%"] {
            assert!(!is_canonical(text.as_bytes()), "{text}");
        }
        assert_eq!(normalize_query("t=%41%7c%7C").unwrap(), "t=A%7C%7C");
    }

    #[test]
    fn names_without_equals_get_an_empty_value_and_empty_pieces_vanish() {
        assert_eq!(normalize_query("flag").unwrap(), "flag=");
        assert_eq!(normalize_query("b=1&&flag&").unwrap(), "b=1&flag=");
        assert_eq!(normalize_query("").unwrap(), "");
    }

    #[test]
    fn stray_percent_signs_are_refused() {
        for bad in ["a=%", "a=%2", "a=%zz", "%g1=x", "a=100%"] {
            assert!(
                matches!(normalize_query(bad), Err(PrepareError::BadPercentEncoding)),
                "{bad}"
            );
        }
    }

    #[test]
    fn decoded_bytes_must_be_utf8() {
        assert!(matches!(
            normalize_query("a=%AA"),
            Err(PrepareError::NotUtf8)
        ));
        assert!(matches!(
            normalize_query("%C3=x"),
            Err(PrepareError::NotUtf8)
        ));
        assert_eq!(normalize_query("a=%C3%A9").unwrap(), "a=%C3%A9");
    }

    #[test]
    fn unreserved_characters_stay_and_everything_else_is_encoded_uppercase() {
        assert_eq!(normalize_query("k=AZaz09-_.~").unwrap(), "k=AZaz09-_.~");
        assert_eq!(normalize_query("k=%7e!*'()").unwrap(), "k=~%21%2A%27%28%29");
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        let uri = |p: &str| p.parse::<Uri>().unwrap();
        for bad in [
            "/a/./b",
            "/a/../b",
            "/..",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/%2E/x",
            "/a/.",
        ] {
            assert!(
                matches!(
                    check_target(&Method::GET, &uri(bad), Version::HTTP_11),
                    Err(PrepareError::DotSegment)
                ),
                "{bad}"
            );
        }
        for good in [
            "/",
            "/a/b",
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/a/%2e%2e%2e",
            "//x",
        ] {
            assert!(
                check_target(&Method::GET, &uri(good), Version::HTTP_11).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn connect_and_absolute_form_targets_are_refused() {
        let absolute: Uri = "http://evil.example/steal".parse().unwrap();
        assert!(matches!(
            check_target(&Method::GET, &absolute, Version::HTTP_11),
            Err(PrepareError::AbsoluteForm)
        ));
        // HTTP/2 always has a scheme and authority: that is not absolute-form.
        assert!(check_target(&Method::GET, &absolute, Version::HTTP_2).is_ok());
        let authority: Uri = "evil.example:443".parse().unwrap();
        assert!(matches!(
            check_target(&Method::CONNECT, &authority, Version::HTTP_11),
            Err(PrepareError::Connect)
        ));
        let asterisk: Uri = "*".parse().unwrap();
        assert!(matches!(
            check_target(&Method::OPTIONS, &asterisk, Version::HTTP_11),
            Err(PrepareError::NotAPath)
        ));
    }

    #[test]
    fn client_headers_that_must_not_pass_are_dropped() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("host", "evil.example"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "AWS4-HMAC-SHA256 fake"),
            ("x-amz-date", "20200101T000000Z"),
            ("x-amz-security-token", "stolen"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("content-length", "3"),
            ("x-amz-marketplace", "US"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ] {
            client.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let host = HeaderValue::from_static("prime-apis.amazon.com");
        let id = HeaderValue::from_static("id-1");
        let out = forward_headers(client, &host, &id, 3);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "content-length",
                "content-type",
                "host",
                "x-amz-marketplace",
                "x-amz-request-id"
            ]
        );
        assert_eq!(out[header::HOST], "prime-apis.amazon.com");
        assert_eq!(out[header::CONTENT_LENGTH], "3");
    }

    #[test]
    fn a_client_request_id_is_kept_and_a_missing_one_is_a_fresh_uuid_v4() {
        let mut headers = HeaderMap::new();
        let fresh = request_id(&headers);
        let parsed = uuid::Uuid::parse_str(fresh.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(request_id(&headers), fresh);
        headers.insert(
            X_AMZ_REQUEST_ID.clone(),
            HeaderValue::from_static("client-chosen-42"),
        );
        assert_eq!(request_id(&headers), "client-chosen-42");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_before_or_while_reading() {
        use http_body_util::Full;
        let budget = MemoryBudget::new(1 << 20);
        let mut headers = HeaderMap::new();
        let timeout = Duration::from_secs(5);
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let (bytes, _held) = read_body(body.clone(), &headers, 10, timeout, &budget)
            .await
            .unwrap();
        assert_eq!(bytes, "0123456789");
        assert!(matches!(
            read_body(body.clone(), &headers, 9, timeout, &budget).await,
            Err(PrepareError::BodyTooLarge { limit: 9 })
        ));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
        assert!(matches!(
            read_body(body, &headers, 100, timeout, &budget).await,
            Err(PrepareError::BodyTooLarge { limit: 100 })
        ));
    }

    /// A body of `chunks` frames of `size` bytes each (frame `i` is all `i`), as a chunked
    /// upload arrives.
    fn chunked(chunks: u8, size: usize) -> Chunks {
        Chunks {
            next: 0,
            chunks,
            size,
        }
    }

    struct Chunks {
        next: u8,
        chunks: u8,
        size: usize,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            if self.next == self.chunks {
                return std::task::Poll::Ready(None);
            }
            let frame = http_body::Frame::data(Bytes::from(vec![self.next; self.size]));
            self.next += 1;
            std::task::Poll::Ready(Some(Ok(frame)))
        }
    }

    #[tokio::test]
    async fn bodies_are_held_against_the_memory_budget_until_dropped() {
        let budget = MemoryBudget::new(64 * 1024);
        let timeout = Duration::from_secs(5);
        let limit = 1 << 20;
        // Declared length: reserved up front, refused at once when it does not fit.
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("40960"));
        let (first, held) = read_body(chunked(10, 4096), &declared, limit, timeout, &budget)
            .await
            .unwrap();
        assert_eq!(first.len(), 40960);
        assert_eq!(budget.reserved_bytes(), 40960);
        assert!(matches!(
            read_body(chunked(10, 4096), &declared, limit, timeout, &budget).await,
            Err(PrepareError::OverBudget(_))
        ));
        // Chunked: reserved as it arrives; the refusal gives back what it had taken.
        assert!(matches!(
            read_body(
                chunked(10, 4096),
                &HeaderMap::new(),
                limit,
                timeout,
                &budget
            )
            .await,
            Err(PrepareError::OverBudget(_))
        ));
        assert_eq!(budget.reserved_bytes(), 40960);
        drop(held);
        assert_eq!(budget.reserved_bytes(), 0);
        let (joined, _held) = read_body(chunked(3, 5), &HeaderMap::new(), limit, timeout, &budget)
            .await
            .unwrap();
        assert_eq!(&joined[..], &[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing(&headers, &Extensions::new()).is_ok());
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(matches!(
            check_framing(&headers, &Extensions::new()),
            Err(PrepareError::AmbiguousFraming)
        ));
        // What the listener reports from the raw head counts too.
        let mut marked = Extensions::new();
        marked.insert(FramingConflict);
        assert!(matches!(
            check_framing(&HeaderMap::new(), &marked),
            Err(PrepareError::AmbiguousFraming)
        ));
    }

    #[test]
    fn connection_cannot_make_routing_headers_hop_by_hop() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-amz-marketplace, X-Amz-Request-Id, x-other"),
        );
        headers.insert(&X_AMZ_MARKETPLACE, HeaderValue::from_static("US"));
        headers.insert(&X_AMZ_REQUEST_ID, HeaderValue::from_static("id-1"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers[&X_AMZ_MARKETPLACE], "US");
        assert_eq!(headers[&X_AMZ_REQUEST_ID], "id-1");
        assert!(!headers.contains_key("x-other"));
        assert!(!headers.contains_key(header::CONNECTION));
    }
}
