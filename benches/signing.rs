//! The proxy's per-request CPU work, without I/O: query normalisation alone, and preparing
//! plus signing one request with a long LWA token in the query.
//!
//! `cargo bench --bench signing`

use std::hint::black_box;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use prime_sigv4_proxy::prepare;
use prime_sigv4_proxy::sign::{sign_request, SigningIdentity, SigningScope};

/// A realistic LWA access token: `Atza|` and ~390 base64 characters with `+`, `/`, `=`.
fn lwa_token() -> String {
    let body: String = (0..388)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 37 + 11) % 64]
                as char
        })
        .collect();
    format!("Atza|{body}==")
}

/// The token as most HTTP clients send it: percent-encoded.
fn encoded_query(token: &str) -> String {
    let encoded: String = token
        .bytes()
        .map(|b| match b {
            b'|' => "%7C".to_owned(),
            b'+' => "%2B".to_owned(),
            b'/' => "%2F".to_owned(),
            b'=' => "%3D".to_owned(),
            b => (b as char).to_string(),
        })
        .collect();
    format!("customerIdentifier={encoded}&marketplaceId=ATVPDKIKX0DER")
}

fn bench(c: &mut Criterion) {
    let token = lwa_token();
    let raw_query = format!("customerIdentifier={token}&marketplaceId=ATVPDKIKX0DER");
    let encoded = encoded_query(&token);

    let mut group = c.benchmark_group("normalize_query");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lwa_token_raw", |b| {
        b.iter(|| prepare::normalize_query(black_box(&raw_query)))
    });
    group.bench_function("lwa_token_percent_encoded", |b| {
        b.iter(|| prepare::normalize_query(black_box(&encoded)))
    });
    group.finish();

    let credentials = Credentials::new(
        "ASIAEXAMPLEEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD".repeat(12)),
        None,
        "bench",
    );
    let identity = SigningIdentity::new(&credentials).unwrap_or_else(|e| panic!("{e}"));
    let host = HeaderValue::from_static("prime-apis.amazon.com");
    let mut client_headers = HeaderMap::new();
    client_headers.insert("x-amz-marketplace", HeaderValue::from_static("US"));
    client_headers.insert("accept", HeaderValue::from_static("application/json"));
    client_headers.insert("user-agent", HeaderValue::from_static("okhttp/4.12.0"));
    let scope = SigningScope {
        region: "us-east-1",
        service: "execute-api",
    };

    let mut group = c.benchmark_group("prepare_and_sign");
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_with_lwa_token", |b| {
        b.iter(|| {
            let query = prepare::normalize_query(black_box(&encoded)).unwrap_or_default();
            let uri = prepare::upstream_uri(
                "https://prime-apis.amazon.com",
                "/v1/customers/benefits",
                &query,
            );
            let id = prepare::new_request_id();
            let mut headers = prepare::forward_headers(client_headers.clone(), &host, &id, 0);
            if let Ok(uri) = uri {
                let _ = sign_request(
                    &Method::GET,
                    &uri,
                    &mut headers,
                    b"",
                    &identity,
                    scope,
                    SystemTime::now(),
                );
            }
            headers
        })
    });
    let uri = prepare::upstream_uri(
        "https://prime-apis.amazon.com",
        "/v1/customers/benefits",
        &prepare::normalize_query(&encoded).unwrap_or_default(),
    );
    group.bench_function("sign_only", |b| {
        let base =
            prepare::forward_headers(client_headers.clone(), &host, &prepare::new_request_id(), 0);
        b.iter(|| {
            let mut headers = base.clone();
            if let Ok(uri) = &uri {
                let _ = sign_request(
                    &Method::GET,
                    uri,
                    &mut headers,
                    b"",
                    &identity,
                    scope,
                    SystemTime::now(),
                );
            }
            headers
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
