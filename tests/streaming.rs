//! Streamed responses across three regions: chunked bodies and bodies over the
//! proxy's buffering threshold (256 KiB) after traffic to the same and to other regions,
//! byte for byte; proof that the client reads while the upstream is still sending; and a
//! body that stalls half-way (the real binary, `upstream.body_idle_timeout_ms`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// Over the 256 KiB up to which the proxy reads a `Content-Length` body whole.
const LARGE: usize = 300 * 1024;

/// A request held behind another region's connection takes the attempt timeout (2 s here).
const SLOW: Duration = Duration::from_secs(1);

async fn setup() -> (Pki, Upstreams, TestProxy) {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.attempt_timeout_ms = 2_000;
    let proxy = start_proxy(config).await;
    (pki, ups, proxy)
}

/// Some ordinary traffic: a GET and a POST.
async fn other_traffic(client: &PlainClient, proxy: &TestProxy, marketplace: &str) {
    let reply = get(
        client,
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", marketplace)],
    )
    .await;
    assert_eq!(reply.status, 200, "{marketplace}: {:?}", reply.body);
    let request = Request::post(proxy.url("/v1/link"))
        .header("x-amz-marketplace", marketplace)
        .body(Full::new(Bytes::from_static(b"{\"link\":1}")))
        .unwrap();
    let reply = send(client, request).await;
    assert_eq!(reply.status, 200, "{marketplace}: {:?}", reply.body);
}

/// Asks for a body of `len` bytes (`ask` = [`ASK_CHUNKED`] or [`ASK_LENGTH`]) and checks it
/// arrives whole, in order, and that the head came without waiting.
async fn streamed(
    client: &PlainClient,
    proxy: &TestProxy,
    ups: &Upstreams,
    marketplace: &str,
    ask: &str,
    len: usize,
) {
    let before = ups.for_marketplace(marketplace).count();
    let started = Instant::now();
    let length = len.to_string();
    let mut response = get_head(
        client,
        &proxy.url("/v1/stream"),
        &[("x-amz-marketplace", marketplace), (ask, &length)],
    )
    .await;
    let head_after = started.elapsed();
    let status = response.status();
    let body = read_to_end(response.body_mut()).await;
    if status != 200 {
        let text = match &body {
            Ok(bytes) | Err((_, bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        };
        panic!("{marketplace} {ask} {len}: {status} after {head_after:?}: {text}");
    }
    assert!(
        head_after < SLOW,
        "{marketplace} {ask} {len}: the head took {head_after:?}"
    );
    let body = body.unwrap_or_else(|(e, got)| {
        panic!(
            "{marketplace} {ask} {len}: broken after {} bytes: {e}",
            got.len()
        )
    });
    assert_eq!(body.len(), len, "{marketplace} {ask}");
    assert!(body == pattern(len), "{marketplace} {ask}: bytes differ");
    if ask == ASK_CHUNKED {
        assert_eq!(response.headers().get("content-length"), None);
    } else {
        assert_eq!(
            response.headers()["content-length"].to_str().unwrap(),
            length
        );
    }
    let upstream = ups.for_marketplace(marketplace);
    assert_eq!(upstream.count(), before + 1, "{marketplace}: one attempt");
    let (_, region) = upstream.requests().pop().unwrap().assert_signed();
    assert_eq!(region, region_of(marketplace).1);
}

#[tokio::test]
async fn chunked_responses_after_traffic_to_the_same_and_other_regions_arrive_byte_identical() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    other_traffic(&client, &proxy, "US").await;
    // Another region's stream after US traffic.
    streamed(&client, &proxy, &ups, "JP", ASK_CHUNKED, 40 * 1024).await;
    // The same region again, then a large one, then one after a DE POST.
    streamed(&client, &proxy, &ups, "US", ASK_CHUNKED, 40 * 1024).await;
    streamed(&client, &proxy, &ups, "US", ASK_CHUNKED, LARGE).await;
    other_traffic(&client, &proxy, "DE").await;
    streamed(&client, &proxy, &ups, "JP", ASK_CHUNKED, LARGE).await;
    streamed(&client, &proxy, &ups, "FR", ASK_CHUNKED, LARGE).await;
    // Small requests still work after the streams, on every region.
    for marketplace in ["US", "DE", "JP"] {
        other_traffic(&client, &proxy, marketplace).await;
    }
    proxy.stop().await;
}

#[tokio::test]
async fn responses_over_256_kib_after_traffic_elsewhere_arrive_byte_identical() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    other_traffic(&client, &proxy, "DE").await;
    streamed(&client, &proxy, &ups, "DE", ASK_LENGTH, LARGE).await;
    streamed(&client, &proxy, &ups, "US", ASK_LENGTH, LARGE).await;
    other_traffic(&client, &proxy, "JP").await;
    streamed(&client, &proxy, &ups, "SG", ASK_LENGTH, LARGE).await;
    streamed(&client, &proxy, &ups, "UK", ASK_LENGTH, 2 * LARGE).await;
    // Below the threshold too (read whole by the proxy), interleaved.
    streamed(&client, &proxy, &ups, "MX", ASK_LENGTH, 100 * 1024).await;
    streamed(&client, &proxy, &ups, "AU", ASK_LENGTH, 100 * 1024).await;
    proxy.stop().await;
}

/// Streaming, not just the right length: the client holds the first bytes while the
/// upstream has not sent the rest (it waits for the test), in every region in turn.
#[tokio::test]
async fn the_client_reads_the_first_bytes_while_the_upstream_is_still_sending() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    const FIRST: usize = 4 * 1024;
    const REST: usize = LARGE;
    for marketplace in ["US", "DE", "JP"] {
        let upstream = ups.for_marketplace(marketplace);
        let url = proxy.url("/v1/stream");
        HeldStream::open(&client, &url, upstream, marketplace, FIRST, REST)
            .await
            .finish()
            .await;
        // Other traffic between the streams.
        other_traffic(&client, &proxy, "CA").await;
    }
    proxy.stop().await;
}

/// Issue 8 item 6: a body that goes silent after 64 KiB of 1 MiB is ended after
/// `upstream.body_idle_timeout_ms`: the client sees a broken body (not a hang), the request is
/// logged with `error = "upstream_body_stalled"`, the connection is discarded, and the next
/// request to that region works on a fresh one.
#[tokio::test]
async fn a_body_that_stalls_after_64_kib_of_1_mib_is_cut_off_logged_and_its_connection_dropped() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &ups, "[upstream]\nbody_idle_timeout_ms = 500\n");
    let proxy = ProxyProcess::start(command_with_static_key(pki.dir.path()), &file).await;
    let client = keep_alive_client();
    let warm = get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "DE")]).await;
    assert_eq!(warm.status, 200);

    const SENT: usize = 64 * 1024;
    const DECLARED: usize = 1024 * 1024;
    ups.eu.push([Action::StallAfter {
        sent: SENT,
        declared: DECLARED,
    }]);
    let started = Instant::now();
    let mut response = get_head(
        &client,
        &proxy.url("/v1/stall"),
        &[
            ("x-amz-marketplace", "DE"),
            ("x-amz-request-id", "stalled-1"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(8), read_to_end(response.body_mut())).await;
    let took = started.elapsed();
    let got = match read {
        Err(_) => panic!(
            "the client still waits for the stalled body after {took:?}\n{}",
            proxy.logs()
        ),
        Ok(Ok(body)) => {
            assert!(
                body.len() < DECLARED,
                "a stalled body cannot arrive whole ({} bytes)",
                body.len()
            );
            body
        }
        Ok(Err((_, body))) => body,
    };
    assert!(got.len() <= SENT, "{} bytes", got.len());
    assert!(got == pattern(DECLARED)[..got.len()], "bytes differ");
    let stalled = ups.eu.requests().pop().unwrap();
    assert_eq!(stalled.header("x-amz-request-id"), Some("stalled-1"));

    let logged = eventually(Duration::from_secs(5), || {
        proxy.request_lines().iter().any(|l| {
            l["request_id"] == "stalled-1"
                && l["error"] == "upstream_body_stalled"
                && l["region"] == "eu"
        })
    })
    .await;
    assert!(
        logged,
        "no request line with error upstream_body_stalled:\n{}",
        proxy.logs()
    );
    assert!(
        eventually(Duration::from_secs(5), || !ups
            .eu
            .is_open(stalled.connection))
        .await,
        "the stalled connection is still open"
    );

    let started = Instant::now();
    let next = get(
        &client,
        &proxy.url("/v1/after"),
        &[("x-amz-marketplace", "FR")],
    )
    .await;
    assert_eq!(next.status, 200, "{:?}", next.body);
    assert!(started.elapsed() < Duration::from_secs(1));
    let fresh = ups.eu.requests().pop().unwrap();
    fresh.assert_signed();
    assert_ne!(
        fresh.connection, stalled.connection,
        "the stalled connection was reused"
    );
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
