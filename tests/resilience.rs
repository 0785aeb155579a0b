//! Retries, timeouts, the retry budget, clock skew and rate limits, against three TLS
//! upstreams (one per region) that inject faults. Every attempt's signature is checked, and
//! attempts are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sigv4_verifier;

use std::time::{Duration, Instant};

use common::*;
use prime_sigv4_proxy::config::{Config, RouteLimitConfig};

async fn setup() -> (Pki, Upstreams) {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    (pki, upstreams)
}

fn us() -> [(&'static str, &'static str); 1] {
    [("x-amz-marketplace", "US")]
}

/// Every attempt was signed validly and carried the same request id.
#[track_caller]
fn assert_attempts_signed_with_one_id(received: &[Received]) {
    let id = received[0].header("x-amz-request-id").unwrap().to_owned();
    for attempt in received {
        attempt.assert_signed();
        assert_eq!(attempt.header("x-amz-request-id"), Some(id.as_str()));
    }
}

async fn metrics(proxy: &TestProxy) -> String {
    let reply = get(&client(), &format!("http://{}/metrics", proxy.admin), &[]).await;
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn retryable_statuses_are_retried_until_success_each_attempt_signed_afresh() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    ups.na.push([Action::status(503), Action::status(500)]);
    let reply = get(
        &client(),
        &proxy.url("/v1/benefits?customerIdentifier=Atza%7Cx"),
        &us(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let received = ups.na.requests();
    assert_eq!(received.len(), 3);
    assert_attempts_signed_with_one_id(&received);
    assert_eq!(
        reply.header("x-amz-request-id"),
        received[0].header("x-amz-request-id")
    );
    let text = metrics(&proxy).await;
    assert!(
        text.contains(
            "prime_proxy_upstream_attempts_total{region=\"na\",outcome=\"retryable_status\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("prime_proxy_upstream_attempts_total{region=\"na\",outcome=\"response\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("prime_proxy_retries_total{region=\"na\"} 2"),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn when_attempts_run_out_the_last_upstream_response_is_passed_through() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    ups.na.push([
        Action::status(503),
        Action::status(502),
        Action::Respond {
            status: 504,
            headers: vec![("x-upstream".into(), "last".into())],
            body: "{\"last\":true}".into(),
        },
    ]);
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-upstream"), Some("last"));
    assert_eq!(
        reply.header("x-prime-proxy-error"),
        None,
        "an upstream response, not ours"
    );
    assert_eq!(&reply.body[..], b"{\"last\":true}");
    assert_eq!(ups.na.count(), 3, "max_attempts = 3");
    proxy.stop().await;
}

#[tokio::test]
async fn max_attempts_1_means_no_retries() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.retry.max_attempts = 1;
    let proxy = start_proxy(config).await;
    ups.na.push([Action::status(503)]);
    assert_eq!(get(&client(), &proxy.url("/v1/a"), &us()).await.status, 503);
    assert_eq!(ups.na.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn bad_request_and_forbidden_are_never_retried() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    for status in [400, 403] {
        ups.na.push([Action::status(status)]);
        let before = ups.na.count();
        let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(ups.na.count() - before, 1, "{status} was retried");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.retry.max_delay_ms = 5_000;
    let proxy = start_proxy(config).await;
    ups.na.push([Action::with_header(429, "retry-after", "1")]);
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 200);
    let received = ups.na.requests();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, Retry-After said 1 s"
    );
    assert!(waited < Duration::from_millis(2_000), "{waited:?}");
    assert_attempts_signed_with_one_id(&received);
    proxy.stop().await;
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured_and_capped_by_max_delay() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.retry.max_delay_ms = 300;
    let proxy = start_proxy(config).await;
    let in_an_hour =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    ups.na
        .push([Action::with_header(503, "retry-after", &in_an_hour)]);
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 200);
    let received = ups.na.requests();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    // Capped at max_delay_ms, far below the hour the Retry-After asked for.
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_retry_after_beyond_the_total_timeout_passes_the_response_through_at_once() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.retry.max_delay_ms = 60_000;
    config.upstream.total_timeout_ms = 20_000;
    let proxy = start_proxy(config).await;
    ups.na.push([Action::with_header(429, "retry-after", "30")]);
    let started = Instant::now();
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(ups.na.count(), 1);
    // At once: not after waiting out (part of) the 20 s total timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_reset_mid_response_is_retried() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    ups.na
        .push([Action::ResetMidBody, Action::CloseWithoutResponse]);
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(reply.json()["signatureValid"].as_bool().unwrap());
    let received = ups.na.requests();
    assert_eq!(received.len(), 3);
    assert_attempts_signed_with_one_id(&received);
    let text = metrics(&proxy).await;
    assert!(text.contains("outcome=\"connection_closed\"} 2"), "{text}");
    proxy.stop().await;
}

#[tokio::test]
async fn attempts_that_time_out_are_retried_then_504() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.attempt_timeout_ms = 300;
    let proxy = start_proxy(config).await;
    // One slow attempt, then a fast one: retried and answered.
    ups.na.push([Action::Sleep(Duration::from_secs(2))]);
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(ups.na.count(), 2);
    // Every attempt slow: upstream_timeout after max_attempts.
    ups.na.push([
        Action::Sleep(Duration::from_secs(20)),
        Action::Sleep(Duration::from_secs(20)),
        Action::Sleep(Duration::from_secs(20)),
    ]);
    let started = Instant::now();
    get(&client(), &proxy.url("/v1/a"), &us())
        .await
        .assert_error(504, "upstream_timeout");
    assert_eq!(ups.na.count(), 5);
    // Three 300 ms attempts and their backoff, not one 20 s answer.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_total_timeout_bounds_all_attempts_together() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.attempt_timeout_ms = 60_000;
    config.upstream.total_timeout_ms = 500;
    let proxy = start_proxy(config).await;
    ups.na.push([Action::Sleep(Duration::from_secs(30))]);
    let started = Instant::now();
    get(&client(), &proxy.url("/v1/a"), &us())
        .await
        .assert_error(504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(10),
        "{took:?} (the total timeout is 500 ms; the upstream answers after 30 s)"
    );
    assert_eq!(ups.na.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn refused_connections_are_retried_then_502() {
    // No upstream at all: every region points at a port where nothing listens.
    let pki = Pki::new();
    // A port that was just free: nothing listens there.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut config = Config::default();
    for region in config.regions.values_mut() {
        region.endpoint = format!("https://127.0.0.1:{port}");
    }
    config.upstream.ca_file = pki.ca_file.display().to_string();
    config.retry.base_delay_ms = 10;
    let proxy = start_proxy(config).await;
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    reply.assert_error(502, "upstream_unreachable");
    let text = metrics(&proxy).await;
    assert!(
        text.contains(
            "prime_proxy_upstream_attempts_total{region=\"na\",outcome=\"connect_error\"} 3"
        ),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_connect_failure_never_a_request() {
    let (pki, ups) = setup().await;
    let other_ca = Pki::new();
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.ca_file = other_ca.ca_file.display().to_string();
    let proxy = start_proxy(config).await;
    get(&client(), &proxy.url("/v1/a"), &us())
        .await
        .assert_error(502, "upstream_unreachable");
    assert_eq!(
        ups.count(),
        0,
        "no request may be sent over an unverified connection"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_empty_retry_budget_fails_fast_instead_of_retrying() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.retry.budget_tokens = 10;
    config.retry.budget_retry_cost = 5;
    config.retry.budget_success_refill = 1;
    let proxy = start_proxy(config).await;
    ups.na.push((0..10).map(|_| Action::status(503)));
    // First request: 3 attempts, spending the whole budget (2 retries × 5).
    assert_eq!(get(&client(), &proxy.url("/v1/a"), &us()).await.status, 503);
    assert_eq!(ups.na.count(), 3);
    // Second request: no tokens left, so one attempt and the 503 passes through.
    assert_eq!(get(&client(), &proxy.url("/v1/a"), &us()).await.status, 503);
    assert_eq!(ups.na.count(), 4);
    let text = metrics(&proxy).await;
    assert!(
        text.contains("prime_proxy_retry_budget_exhausted_total{region=\"na\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("prime_proxy_retry_budget_tokens{region=\"na\"} 0"),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_403_with_a_skewed_date_corrects_the_signing_clock() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let prime_now = std::time::SystemTime::now() + Duration::from_secs(20 * 60);
    ups.na.push([Action::Respond {
        status: 403,
        headers: vec![("date".into(), httpdate::fmt_http_date(prime_now))],
        body: "{\"message\":\"Signature expired\"}".into(),
    }]);
    let reply = get(&client(), &proxy.url("/v1/a"), &us()).await;
    assert_eq!(reply.status, 403, "403 is passed through, not retried");
    assert_eq!(ups.na.count(), 1);
    get(&client(), &proxy.url("/v1/a"), &us()).await;
    let second = ups.na.requests().pop().unwrap();
    let signed_at = sigv4_verifier::parse_amz_date(second.header("x-amz-date").unwrap()).unwrap();
    let ahead = signed_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        ahead > Duration::from_secs(19 * 60) && ahead < Duration::from_secs(21 * 60),
        "{ahead:?}"
    );
    let text = metrics(&proxy).await;
    let offset: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("prime_proxy_clock_offset_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((offset - 1200.0).abs() < 5.0, "{offset}");
    proxy.stop().await;
}

#[tokio::test]
async fn the_global_rate_limit_rejects_with_retry_after_and_nothing_goes_upstream() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.rate_limit.requests_per_second = 1.0;
    config.rate_limit.burst = 2;
    let proxy = start_proxy(config).await;
    let client = client();
    assert_eq!(get(&client, &proxy.url("/v1/a"), &us()).await.status, 200);
    assert_eq!(get(&client, &proxy.url("/v1/a"), &us()).await.status, 200);
    let limited = get(&client, &proxy.url("/v1/a"), &us()).await;
    limited.assert_error(429, "rate_limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    assert_eq!(ups.na.count(), 2);
    assert!(metrics(&proxy)
        .await
        .contains("prime_proxy_rate_limited_total 1"));
    proxy.stop().await;
}

#[tokio::test]
async fn requests_wait_for_a_permit_up_to_max_wait() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.rate_limit.requests_per_second = 5.0;
    config.rate_limit.burst = 1;
    config.rate_limit.max_wait_ms = 1_000;
    let proxy = start_proxy(config).await;
    let client = client();
    let started = Instant::now();
    for _ in 0..4 {
        assert_eq!(get(&client, &proxy.url("/v1/a"), &us()).await.status, 200);
    }
    // 1 immediately, then one every 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ups.na.count(), 4);
    proxy.stop().await;
}

#[tokio::test]
async fn route_limits_apply_on_top_of_the_global_one() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.rate_limit.routes.push(RouteLimitConfig {
        path_prefix: "/v1/link".into(),
        method: "POST".into(),
        requests_per_second: 1.0,
        burst: 1,
    });
    let proxy = start_proxy(config).await;
    let client = client();
    let post = |path: &str| {
        http::Request::post(proxy.url(path))
            .header("x-amz-marketplace", "US")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    assert_eq!(send(&client, post("/v1/link/accounts")).await.status, 200);
    send(&client, post("/v1/link/accounts"))
        .await
        .assert_error(429, "rate_limited");
    for _ in 0..5 {
        assert_eq!(send(&client, post("/v1/benefits")).await.status, 200);
        assert_eq!(
            get(&client, &proxy.url("/v1/link/accounts"), &us())
                .await
                .status,
            200
        );
    }
    assert_eq!(ups.na.count(), 11);
    proxy.stop().await;
}
