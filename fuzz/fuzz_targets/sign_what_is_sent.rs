//! Prepare and sign a request built from arbitrary path, query and body, then check with the
//! independent verifier (tests/support) that the signature matches the bytes that are sent.
#![no_main]

#[path = "../../tests/support/sigv4_verifier.rs"]
mod sigv4_verifier;

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use prime_sigv4_proxy::prepare;
use prime_sigv4_proxy::sign::{sign_request, SigningIdentity, SigningScope};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // path \n query \n body
    let mut parts = text.splitn(3, '\n');
    let (path, query, body) = (parts.next().unwrap_or("/"), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = format!("/{}", path.trim_start_matches('/'));
    let Ok(path_uri) = path.parse::<Uri>() else { return };
    if path_uri.query().is_some() || prepare::check_target(&Method::POST, &path_uri, Version::HTTP_11).is_err() {
        return;
    }
    let Ok(canonical) = prepare::normalize_query(query) else { return };
    let Ok(uri) = prepare::upstream_uri("https://prime-apis.amazon.eu", path_uri.path(), &canonical) else { return };
    let mut client = HeaderMap::new();
    client.insert("x-amz-marketplace", HeaderValue::from_static("DE"));
    let host = HeaderValue::from_static("prime-apis.amazon.eu");
    let id = prepare::new_request_id();
    let mut headers = prepare::forward_headers(client, &host, &id, body.len());
    let credentials = Credentials::new("AKIDFUZZ", "fuzz/secret", Some("tok".into()), None, "fuzz");
    let now = SystemTime::now();
    let scope = SigningScope { region: "eu-west-1", service: "execute-api" };
    if sign_request(&Method::POST, &uri, &mut headers, body.as_bytes(), &SigningIdentity::new(&credentials).unwrap(), scope, now).is_err() {
        panic!("signing failed for {uri}");
    }
    let wire: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let received = sigv4_verifier::ReceivedRequest {
        method: "POST",
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: &wire,
        body: body.as_bytes(),
    };
    let mut options = sigv4_verifier::VerifyOptions::new(now);
    options.max_skew = Duration::from_secs(60);
    if let Err(e) = sigv4_verifier::verify(&received, |_| Some("fuzz/secret".to_owned()), &options) {
        panic!("signed request does not verify: {e}\n{uri}");
    }
});
