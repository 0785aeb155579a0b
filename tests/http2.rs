//! `upstream.http2 = true` against real HTTP/2 TLS upstreams (ALPN `h2` only, hyper's HTTP/2
//! server), one per region (issue 8 item 2): signatures, one multiplexed connection per
//! endpoint under concurrent requests, retries, streaming.
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
/// endpoint's authority.
#[track_caller]
fn assert_all_h2_and_signed(ups: &Upstreams) {
    for (key, signing_region, _, _) in REGIONS {
        let upstream = ups.region(key);
        for received in upstream.requests() {
            assert_eq!(received.version, Version::HTTP_2, "{key}");
            let (_, region) = received.assert_signed();
            assert_eq!(region, signing_region, "{key}");
            assert_eq!(received.authority, upstream.authority(), "{key}");
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
