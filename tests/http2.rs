//! `upstream.http2 = true` against real HTTP/2 TLS upstreams (ALPN `h2` only, hyper's HTTP/2
//! server), one per region: signatures, no `host` header
//! beside `:authority`, one multiplexed connection per endpoint under concurrent requests,
//! more connections when the server's stream limit is reached, REFUSED_STREAM sent again,
//! retries, streaming. tests/nginx_h2.rs has the same against nginx.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Version;

const LARGE: usize = 300 * 1024;

async fn setup() -> (Pki, Upstreams, TestProxy) {
    let pki = Pki::new();
    let ups = Upstreams::start_h2(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.http2 = true;
    config.upstream.attempt_timeout_ms = 2_000;
    let proxy = start_proxy(config).await;
    (pki, ups, proxy)
}

/// Every request an upstream received came over HTTP/2, signed for its region, with the
/// endpoint's authority as `:authority` and no `host` header (RFC 9113 §8.3.1).
#[track_caller]
fn assert_all_h2_and_signed(ups: &Upstreams) {
    for (key, signing_region, _, _) in REGIONS {
        let upstream = ups.region(key);
        for received in upstream.requests() {
            assert_eq!(received.version, Version::HTTP_2, "{key}");
            let (_, region) = received.assert_signed();
            assert_eq!(region, signing_region, "{key}");
            assert_eq!(received.authority, upstream.authority(), "{key}");
            assert_eq!(
                received.header_count("host"),
                0,
                "{key}: a host header beside :authority"
            );
            assert!(
                received.signed_headers().iter().any(|h| h == "host"),
                "{key}"
            );
        }
    }
}

#[tokio::test]
async fn http2_requests_to_every_region_are_signed_and_share_one_connection_per_endpoint() {
    let (_pki, ups, proxy) = setup().await;
    // The first request to each endpoint opens its connection (one after the other: which of
    // several simultaneous first requests dials is hyper's business).
    for marketplace in ["US", "DE", "JP"] {
        let started = Instant::now();
        let reply = get(
            &client(),
            &proxy.url("/v1/warm"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
        assert_eq!(reply.status, 200, "{marketplace}: {:?}", reply.body);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Then 60 at once, 20 per region, each from its own client connection.
    let marketplaces = ["US", "CA", "MX", "DE", "FR", "UK", "JP", "SG", "AU"];
    let mut tasks = Vec::new();
    for i in 0..60 {
        let marketplace = marketplaces[i % marketplaces.len()];
        let url = proxy.url(&format!("/v1/benefits?customerIdentifier=Atza%7C{i}"));
        tasks.push(tokio::spawn(async move {
            let id = format!("h2-{i}");
            let started = Instant::now();
            let reply = get(
                &client(),
                &url,
                &[
                    ("x-amz-marketplace", marketplace),
                    ("x-amz-request-id", &id),
                ],
            )
            .await;
            (marketplace, id, reply, started.elapsed())
        }));
    }
    for task in tasks {
        let (marketplace, id, reply, took) = task.await.unwrap();
        assert_eq!(reply.status, 200, "{id} {marketplace}: {:?}", reply.body);
        assert!(
            took < Duration::from_secs(1),
            "{id} {marketplace}: {took:?}"
        );
        let (at, _) = ups.find(&id).unwrap();
        assert_eq!(at, region_of(marketplace).0, "{id} {marketplace}");
    }
    assert_eq!(ups.count(), 63);
    assert_all_h2_and_signed(&ups);
    for upstream in ups.all() {
        assert_eq!(
            upstream.accepted(),
            1,
            "{}: HTTP/2 multiplexes, yet {} connections were opened",
            upstream.endpoint,
            upstream.accepted()
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn http2_retries_a_503_signed_afresh_with_the_same_request_id() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    for marketplace in ["US", "DE", "JP"] {
        let upstream = ups.for_marketplace(marketplace);
        upstream.push([Action::status(503)]);
        let reply = get(
            &client,
            &proxy.url("/v1/retry"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
        assert_eq!(reply.status, 200, "{marketplace}: {:?}", reply.body);
        let attempts = upstream.requests();
        assert_eq!(attempts.len(), 2, "{marketplace}: 503, then 200");
        let id = reply.header("x-amz-request-id").unwrap();
        for attempt in &attempts {
            assert_eq!(attempt.header("x-amz-request-id"), Some(id));
        }
        assert_eq!(
            attempts[0].connection, attempts[1].connection,
            "{marketplace}: the retry goes over the same HTTP/2 connection"
        );
    }
    assert_all_h2_and_signed(&ups);
    proxy.stop().await;
}

#[tokio::test]
async fn http2_responses_stream_while_other_requests_share_the_connection() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    let streaming_client = keep_alive_client();
    const FIRST: usize = 4 * 1024;
    for marketplace in ["US", "DE", "JP"] {
        let upstream = ups.for_marketplace(marketplace);
        // Its own client connection: the proxy side must not serialise the requests.
        let url = proxy.url("/v1/stream");
        let held =
            HeldStream::open(&streaming_client, &url, upstream, marketplace, FIRST, LARGE).await;
        // While that stream is open, other requests to the region go over the same
        // connection without waiting for it.
        for ask in [ASK_LENGTH, ASK_CHUNKED] {
            let started = Instant::now();
            let length = LARGE.to_string();
            let mut other = get_head(
                &client,
                &proxy.url("/v1/big"),
                &[("x-amz-marketplace", marketplace), (ask, &length)],
            )
            .await;
            assert_eq!(other.status(), 200, "{marketplace} {ask}");
            let body = read_to_end(other.body_mut()).await.unwrap();
            assert!(body == pattern(LARGE), "{marketplace} {ask}: bytes differ");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{marketplace} {ask}: {:?}",
                started.elapsed()
            );
        }
        held.finish().await;
        assert_eq!(upstream.accepted(), 1, "{marketplace}");
    }
    assert_all_h2_and_signed(&ups);
    proxy.stop().await;
}

/// Requests `count` at once to `marketplace`, each from its own client connection; returns
/// each reply and how long all of them took.
async fn burst(
    proxy: &TestProxy,
    marketplace: &'static str,
    count: usize,
) -> (Vec<Reply>, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let url = proxy.url(&format!("/v1/burst/{i}"));
            tokio::spawn(async move {
                get(&client(), &url, &[("x-amz-marketplace", marketplace)]).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    (replies, started.elapsed())
}

#[tokio::test]
async fn http2_opens_another_connection_when_every_one_is_at_the_servers_stream_limit() {
    let pki = Pki::new();
    // Four streams per connection, each answered after ROUND.
    let ups = Upstreams::start_h2_limited(&pki, 4).await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.http2 = true;
    config.upstream.http2_max_connections = 4;
    config.upstream.attempt_timeout_ms = 20_000;
    config.upstream.total_timeout_ms = 30_000;
    config.retry.max_attempts = 1;
    let proxy = start_proxy(config).await;
    const ROUND: Duration = Duration::from_millis(1_000);
    ups.na.push((0..32).map(|_| Action::Sleep(ROUND)));
    let (replies, took) = burst(&proxy, "US", 32).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // 32 requests, 4 streams on each of 4 connections: two rounds (one connection: eight).
    assert!(took >= 2 * ROUND, "{took:?}");
    assert!(
        took < 3 * ROUND + Duration::from_millis(1_500),
        "{took:?}: queued on too few connections"
    );
    assert_eq!(ups.na.accepted(), 4, "up to the cap, and no more");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(&metrics, "prime_proxy_upstream_connections{region=\"na\"}"),
        Some(4.0)
    );
    // Half of them found all four connections full and waited for a stream.
    let waits = metric_value(
        &metrics,
        "prime_proxy_upstream_stream_waits_total{region=\"na\"}",
    )
    .unwrap();
    assert!((16.0..=28.0).contains(&waits), "{waits}");
    assert_eq!(ups.na.count(), 32);
    assert_all_h2_and_signed(&ups);
    proxy.stop().await;
}

#[tokio::test]
async fn http2_sends_a_refused_stream_again_without_spending_an_attempt() {
    let pki = Pki::new();
    let ups = Upstreams::start_h2(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.http2 = true;
    // No retries at all: what the server did not process is not a failed attempt.
    config.retry.max_attempts = 1;
    let proxy = start_proxy(config).await;
    let client = keep_alive_client();
    for marketplace in ["US", "DE", "JP"] {
        let upstream = ups.for_marketplace(marketplace);
        upstream.push([Action::RefuseStream, Action::RefuseStream]);
        let reply = get(
            &client,
            &proxy.url("/v1/refused"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
        assert_eq!(reply.status, 200, "{marketplace}: {:?}", reply.body);
        let id = reply.header("x-amz-request-id").unwrap();
        let sent = upstream.requests();
        assert_eq!(sent.len(), 3, "{marketplace}: refused twice, then answered");
        for request in &sent {
            assert_eq!(request.header("x-amz-request-id"), Some(id));
        }
    }
    let metrics = proxy.metrics().await;
    for region in ["na", "eu", "fe"] {
        let series = |name: &str| metric_value(&metrics, &format!("{name}{{region=\"{region}\"}}"));
        assert_eq!(
            metric_value(&metrics, &format!("prime_proxy_upstream_unprocessed_replays_total{{region=\"{region}\",reason=\"refused_stream\"}}")),
            Some(2.0),
            "{region}"
        );
        assert_eq!(
            metric_value(&metrics, &format!("prime_proxy_upstream_attempts_total{{region=\"{region}\",outcome=\"response\"}}")),
            Some(1.0),
            "{region}"
        );
        assert_eq!(series("prime_proxy_retries_total"), Some(0.0), "{region}");
    }
    assert_all_h2_and_signed(&ups);
    proxy.stop().await;
}
