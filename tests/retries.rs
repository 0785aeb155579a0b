//! Retries across three regions: a connection closed without an answer is retried for GET and
//! POST with the same body on every attempt, and every attempt, retries
//! included, takes a rate-limit permit (SPEC item 7).
//!
//! The limiter tests run on the wall clock: real sockets and TLS do not advance under
//! tokio's paused time, so the bounds are generous instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_retried_with_the_same_body_for_get_and_post() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.attempt_timeout_ms = 2_000;
    let proxy = start_proxy(config).await;
    let client = keep_alive_client();
    let json = br#"{"customerIdentifier":"Atza|abc+/=","amount":1}"#.to_vec();
    let large = pattern(200 * 1024);
    let cases: [(&str, &str, Vec<u8>); 5] = [
        ("GET", "US", Vec::new()),
        ("POST", "DE", json.clone()),
        ("POST", "JP", large.clone()),
        ("GET", "FR", Vec::new()),
        ("POST", "CA", large),
    ];
    for (i, (method, marketplace, body)) in cases.into_iter().enumerate() {
        let upstream = ups.for_marketplace(marketplace);
        upstream.push([Action::CloseWithoutResponse]);
        let id = format!("closed-{i}");
        let request = Request::builder()
            .method(method)
            .uri(proxy.url("/v1/link?customerIdentifier=Atza%7Cx"))
            .header("x-amz-marketplace", marketplace)
            .header("x-amz-request-id", &id)
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let reply = send(&client, request).await;
        assert_eq!(
            reply.status,
            200,
            "{method} {marketplace}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["signatureValid"], true);
        let attempts: Vec<Received> = upstream
            .requests()
            .into_iter()
            .filter(|r| r.header("x-amz-request-id") == Some(id.as_str()))
            .collect();
        assert_eq!(
            attempts.len(),
            2,
            "{method} {marketplace}: closed, then answered"
        );
        for attempt in &attempts {
            let (_, region) = attempt.assert_signed();
            assert_eq!(region, region_of(marketplace).1);
            assert_eq!(attempt.method, method);
            assert!(
                attempt.body == body,
                "{method} {marketplace}: attempt body of {} bytes differs from the {} sent",
                attempt.body.len(),
                body.len()
            );
            if !body.is_empty() {
                assert_eq!(
                    attempt.header("content-length"),
                    Some(body.len().to_string().as_str())
                );
            }
        }
    }
    assert_eq!(ups.count(), 10, "two attempts per request, nowhere else");
    proxy.stop().await;
}

/// One permit a second, none to wait for: the first attempt takes the only one.
fn one_permit(config: &mut prime_sigv4_proxy::config::Config) {
    config.rate_limit.requests_per_second = 1.0;
    config.rate_limit.burst = 1;
    config.rate_limit.max_wait_ms = 0;
}

#[tokio::test]
async fn a_retry_that_gets_no_permit_ends_with_the_upstream_response() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    one_permit(&mut config);
    let proxy = start_proxy(config).await;
    ups.eu.push([Action::Respond {
        status: 503,
        headers: vec![("x-upstream".into(), "first".into())],
        body: "{\"busy\":true}".into(),
    }]);
    let reply = get(
        &client(),
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "DE")],
    )
    .await;
    assert_eq!(
        reply.status,
        503,
        "the retry went without a permit: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("x-upstream"), Some("first"));
    assert_eq!(reply.header("x-prime-proxy-error"), None, "passed through");
    assert_eq!(&reply.body[..], b"{\"busy\":true}");
    assert_eq!(ups.eu.count(), 1, "one attempt: the retry had no permit");
    assert_eq!(ups.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_retry_that_gets_no_permit_after_a_connect_failure_is_rate_limited() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    // `fe` points at a port where nothing listens: its first attempt fails to connect.
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    config.regions.get_mut("fe").unwrap().endpoint = format!("https://127.0.0.3:{closed}");
    one_permit(&mut config);
    let proxy = start_proxy(config).await;
    let reply = get(
        &client(),
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "JP")],
    )
    .await;
    reply.assert_error(429, "rate_limited");
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let text = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "prime_proxy_upstream_attempts_total{region=\"fe\",outcome=\"connect_error\"}"
        ),
        Some(1.0),
        "one attempt, no retry without a permit:\n{text}"
    );
    assert_eq!(ups.count(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_retry_waits_for_its_permit_within_max_wait() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    config.rate_limit.requests_per_second = 1.0;
    config.rate_limit.burst = 1;
    config.rate_limit.max_wait_ms = 3_000;
    let proxy = start_proxy(config).await;
    ups.na.push([Action::status(503)]);
    let started = Instant::now();
    let reply = get(
        &client(),
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let attempts = ups.na.requests();
    assert_eq!(attempts.len(), 2);
    let gap = attempts[1].at - attempts[0].at;
    // The backoff alone is at most 200 ms here; the next permit comes a second after the first.
    assert!(
        gap >= Duration::from_millis(700),
        "the retry went after {gap:?}, without waiting for a permit"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    for attempt in &attempts {
        attempt.assert_signed();
    }
    proxy.stop().await;
}
