//! Properties of query normalisation and request preparation, over generated input:
//! normalising twice changes nothing, nothing is lost or invented, what is signed is what is
//! sent (checked with the independent verifier), and no input panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/sigv4_verifier.rs"]
mod sigv4_verifier;

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use prime_sigv4_proxy::prepare;
use prime_sigv4_proxy::sign::{sign_request, SigningIdentity, SigningScope};
use proptest::prelude::*;

/// Percent-decodes (strictly) for the "nothing lost" property.
fn decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

fn pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Query text as clients write it: raw token characters, `%XX` escapes (valid or not),
/// separators, non-ASCII.
fn query_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[A-Za-z0-9._~-]{1,8}",
        2 => Just("|".to_owned()),
        2 => Just("+".to_owned()),
        2 => Just("/".to_owned()),
        2 => Just("=".to_owned()),
        2 => Just("&".to_owned()),
        2 => "%[0-9A-Fa-f]{2}",
        1 => "%[0-9A-Za-z]{0,2}",
        1 => Just("é".to_owned()),
        1 => Just("日本".to_owned()),
        1 => Just("!*'();:@$,[]".to_owned()),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// What a valid query looks like to the proxy (no stray `%`).
fn valid_query_text() -> impl Strategy<Value = String> {
    query_text().prop_filter("valid percent-encoding", |q| {
        prepare::normalize_query(q).is_ok()
    })
}

fn is_canonical_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%' | b'=' | b'&')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn normalising_twice_changes_nothing(query in query_text()) {
        if let Ok(once) = prepare::normalize_query(&query) {
            prop_assert_eq!(prepare::normalize_query(&once).unwrap(), once);
        }
    }

    #[test]
    fn the_canonical_query_loses_and_invents_nothing(query in valid_query_text()) {
        let canonical = prepare::normalize_query(&query).unwrap();
        prop_assert!(canonical.bytes().all(is_canonical_char), "{}", canonical);
        // Every escape is upper-case hex.
        for (i, _) in canonical.match_indices('%') {
            let hex = &canonical[i + 1..i + 3];
            prop_assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)), "{}", canonical);
        }
        prop_assert_eq!(pairs(&canonical), pairs(&query));
        // Sorted by encoded name, then value.
        let encoded: Vec<(&str, &str)> = canonical
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap())
            .collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        prop_assert_eq!(encoded, sorted);
    }

    #[test]
    fn only_stray_percent_signs_and_non_utf8_are_refused(query in query_text()) {
        let b = query.as_bytes();
        let stray = (0..b.len()).any(|i| {
            b[i] == b'%'
                && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        let not_utf8 = !stray
            && query.split('&').any(|piece| {
                let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
                std::str::from_utf8(&decode(name)).is_err() || std::str::from_utf8(&decode(value)).is_err()
            });
        prop_assert_eq!(prepare::normalize_query(&query).is_err(), stray || not_utf8);
    }

    #[test]
    fn no_request_target_panics(target in "\\PC{0,64}", method in "[A-Z]{1,8}") {
        if let (Ok(uri), Ok(method)) = (target.parse::<Uri>(), Method::from_bytes(method.as_bytes())) {
            let _ = prepare::check_target(&method, &uri, Version::HTTP_11);
            let _ = prepare::normalize_query(uri.query().unwrap_or_default());
        }
    }

    #[test]
    fn what_is_signed_is_what_is_sent(
        segments in prop::collection::vec("([A-Za-z0-9._~-]|%[0-9A-F]{2}|[!$&'()*+,;=:@]){1,10}", 1..5),
        query in valid_query_text(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        marketplace in prop::sample::select(vec!["US", "de", "Jp"]),
        session in any::<bool>(),
    ) {
        let path = format!("/{}", segments.join("/"));
        let path_uri: Uri = match path.parse() {
            Ok(uri) => uri,
            Err(_) => return Ok(()),
        };
        if prepare::check_target(&Method::POST, &path_uri, Version::HTTP_11).is_err() {
            return Ok(()); // dot segments are refused before signing
        }
        let canonical = prepare::normalize_query(&query).unwrap();
        let uri = prepare::upstream_uri("https://prime-apis.amazon.com", &path, &canonical).unwrap();
        let mut client_headers = HeaderMap::new();
        client_headers.insert("x-amz-marketplace", HeaderValue::from_str(marketplace).unwrap());
        client_headers.insert("content-type", HeaderValue::from_static("application/json"));
        client_headers.insert("accept", HeaderValue::from_static("*/*"));
        let host = HeaderValue::from_static("prime-apis.amazon.com");
        let id = prepare::new_request_id();
        let mut headers = prepare::forward_headers(client_headers, &host, &id, body.len());
        let token = session.then(|| "session/token+value".to_owned());
        let credentials = Credentials::new("AKIDPROP", "prop/secret+key", token.clone(), None, "proptest");
        let now = SystemTime::now();
        sign_request(&Method::POST, &uri, &mut headers, &body, &SigningIdentity::new(&credentials).unwrap(),
            SigningScope { region: "us-east-1", service: "execute-api" }, now).unwrap();

        // The wire: exactly the URI and headers the proxy hands to the client.
        let wire_headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let received = sigv4_verifier::ReceivedRequest {
            method: "POST",
            path: uri.path(),
            query: uri.query().unwrap_or_default(),
            headers: &wire_headers,
            body: &body,
        };
        let mut options = sigv4_verifier::VerifyOptions::new(now);
        options.max_skew = Duration::from_secs(60);
        options.require_payload_hash_header = true;
        let verified = sigv4_verifier::verify(&received, |id| (id == "AKIDPROP").then(|| "prop/secret+key".to_owned()), &options);
        prop_assert!(verified.is_ok(), "{:?}\npath {} query {}", verified.err().map(|e| e.to_string()), path, canonical);
        let verified = verified.unwrap();
        prop_assert_eq!(verified.session_token, token);
        // The query on the wire is already canonical: the verifier's canonical form is the same bytes.
        prop_assert_eq!(sigv4_verifier::canonical_query_string(uri.query().unwrap_or_default()), canonical);
        // The path on the wire is the client's, untouched.
        prop_assert_eq!(uri.path(), path.as_str());
        for signed in ["host", "x-amz-date", "x-amz-marketplace", "x-amz-request-id", "content-type", "x-amz-content-sha256"] {
            prop_assert!(verified.signed_headers.iter().any(|h| h == signed), "{} not signed", signed);
        }
        prop_assert!(!verified.signed_headers.iter().any(|h| h == "accept"));
    }
}

/// aws-sigv4's full request signer, the reference: the same request, credentials and time
/// must give the same `Authorization` (and the same added headers) as ours.
fn reference_signature(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> HeaderMap {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity: aws_smithy_runtime_api::client::identity::Identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("execute-api")
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signed = [
        "host",
        "x-amz-marketplace",
        "x-amz-request-id",
        "content-type",
    ];
    let signable_headers = headers
        .iter()
        .filter(|(n, _)| signed.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()));
    let uri_text = uri.to_string();
    let request = SignableRequest::new(
        method,
        uri_text.as_str(),
        signable_headers,
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let mut out = HeaderMap::new();
    for (name, value) in instructions.headers() {
        out.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn our_signature_is_the_one_aws_sigv4_computes(
        segments in prop::collection::vec("([A-Za-z0-9._~-]|%[0-9A-F]{2}|[!$&'()*+,;=:@]){1,10}", 1..5),
        double_slash in any::<bool>(),
        query in valid_query_text(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        content_type in prop::option::of(prop::sample::select(vec!["application/json", "text/plain;  charset=utf-8", " a  b "])),
        region in prop::sample::select(vec!["us-east-1", "eu-west-1", "us-west-2"]),
        session in any::<bool>(),
        seconds in 1_500_000_000u64..4_000_000_000,
    ) {
        let path = format!("/{}{}", if double_slash { "/" } else { "" }, segments.join("/"));
        let path_uri: Uri = match path.parse() {
            Ok(uri) => uri,
            Err(_) => return Ok(()),
        };
        if prepare::check_target(&Method::GET, &path_uri, Version::HTTP_11).is_err() {
            return Ok(());
        }
        let canonical = prepare::normalize_query(&query).unwrap();
        let uri = prepare::upstream_uri("https://prime-apis.amazon.com", &path, &canonical).unwrap();
        let mut client_headers = HeaderMap::new();
        client_headers.insert("x-amz-marketplace", HeaderValue::from_static("US"));
        if let Some(content_type) = content_type {
            client_headers.insert("content-type", HeaderValue::from_static(content_type));
        }
        let host = HeaderValue::from_static("prime-apis.amazon.com");
        let mut headers = prepare::forward_headers(client_headers, &host, &prepare::new_request_id(), body.len());
        let token = session.then(|| "FwoGZXIvYXdzEJr//////////wEaDLn+token=".to_owned());
        let credentials = Credentials::new("ASIAPROPTEST", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token, None, "proptest");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let expected = reference_signature("GET", &uri, &headers, &body, &credentials, region, time);
        sign_request(&Method::GET, &uri, &mut headers, &body, &SigningIdentity::new(&credentials).unwrap(),
            SigningScope { region, service: "execute-api" }, time).unwrap();
        for (name, value) in &expected {
            prop_assert_eq!(headers.get(name), Some(value), "{} differs for {}", name, uri);
        }
        prop_assert_eq!(expected.len(), if session { 4 } else { 3 });
    }
}
