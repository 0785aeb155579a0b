//! Regions are independent (SPEC item 1): one proxy, three upstreams on three
//! loopback addresses, traffic to all of them at once. Each request is signed for its region,
//! reaches that region's endpoint and no other, and never waits on another region's
//! connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// A request that hangs behind another region's connection shows as this: well under the
/// attempt timeout the tests configure (2 s), far above what one local request takes.
const SLOW: Duration = Duration::from_secs(1);

/// The production layout with a short attempt timeout, so that a request that waits for a
/// connection it is not given fails in 2 s instead of 10.
async fn setup() -> (Pki, Upstreams, TestProxy) {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let mut config = config_for_regions(&ups, &pki);
    config.upstream.attempt_timeout_ms = 2_000;
    let proxy = start_proxy(config).await;
    (pki, ups, proxy)
}

/// Sends `GET path` for `marketplace` with a request id of our choosing; returns the reply
/// and how long it took.
async fn timed_get(
    client: &PlainClient,
    proxy: &TestProxy,
    marketplace: &str,
    request_id: &str,
) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = get(
        client,
        &proxy.url("/v1/benefits?customerIdentifier=Atza%7Cx"),
        &[
            ("x-amz-marketplace", marketplace),
            ("x-amz-request-id", request_id),
        ],
    )
    .await;
    (reply, started.elapsed())
}

/// The request with this id reached exactly its marketplace's endpoint, once, signed for
/// its region, with that endpoint's `Host`.
#[track_caller]
fn assert_routed(ups: &Upstreams, marketplace: &str, request_id: &str) {
    let (key, signing_region) = region_of(marketplace);
    for (other, upstream) in [("na", &ups.na), ("eu", &ups.eu), ("fe", &ups.fe)] {
        let hits: Vec<Received> = upstream
            .requests()
            .into_iter()
            .filter(|r| r.header("x-amz-request-id") == Some(request_id))
            .collect();
        if other == key {
            assert_eq!(hits.len(), 1, "{request_id} ({marketplace}) at {other}");
            let (_, region) = hits[0].assert_signed();
            assert_eq!(region, signing_region, "{request_id} ({marketplace})");
            assert_eq!(hits[0].authority, upstream.authority());
            assert_eq!(hits[0].header("x-amz-marketplace"), Some(marketplace));
        } else {
            assert!(
                hits.is_empty(),
                "{request_id} ({marketplace}) also reached {other}"
            );
        }
    }
}

/// The failure this guards against: after one region has answered, the first request to another hung
/// until the attempt timeout (and came back 504), because an idle pooled connection to the
/// first region made the dial to the second "not needed".
#[tokio::test]
async fn the_first_request_to_another_region_does_not_wait_for_the_first() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    for (i, marketplace) in ["US", "DE", "JP", "CA", "FR", "SG"].iter().enumerate() {
        let id = format!("switch-{i}");
        let (reply, took) = timed_get(&client, &proxy, marketplace, &id).await;
        assert_eq!(
            reply.status, 200,
            "{marketplace} after {took:?}: {:?}",
            reply.body
        );
        assert!(took < SLOW, "{marketplace} (request {i}) took {took:?}");
        assert_routed(&ups, marketplace, &id);
    }
    // A POST to DE after a GET to US: a body does not change that.
    get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    let body = br#"{"customerIdentifier":"Atza|abc+/=","link":true}"#;
    let request = Request::post(proxy.url("/v1/link"))
        .header("x-amz-marketplace", "DE")
        .header("x-amz-request-id", "post-de")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let started = Instant::now();
    let reply = send(&client, request).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "after {took:?}: {:?}", reply.body);
    assert!(took < SLOW, "POST to DE after US took {took:?}");
    assert_routed(&ups, "DE", "post-de");
    assert_eq!(ups.eu.requests().pop().unwrap().body, body);
    proxy.stop().await;
}

#[tokio::test]
async fn us_de_jp_interleaved_on_one_keep_alive_client_each_reach_their_own_region() {
    let (_pki, ups, proxy) = setup().await;
    let client = keep_alive_client();
    let marketplaces = ["US", "DE", "JP", "MX", "UK", "AU", "CA", "NL", "SG", "us"];
    let mut sent = Vec::new();
    for i in 0..30 {
        let marketplace = marketplaces[i % marketplaces.len()];
        let id = format!("interleaved-{i}");
        let (reply, took) = timed_get(&client, &proxy, marketplace, &id).await;
        assert_eq!(
            reply.status, 200,
            "request {i} ({marketplace}) after {took:?}: {:?}",
            reply.body
        );
        assert_eq!(reply.json()["signatureValid"], true);
        assert!(took < SLOW, "request {i} ({marketplace}) took {took:?}");
        sent.push((marketplace, id));
    }
    for (marketplace, id) in &sent {
        assert_routed(&ups, marketplace, id);
    }
    assert_eq!((ups.na.count(), ups.eu.count(), ups.fe.count()), (12, 9, 9));
    // One request at a time: one connection per endpoint, reused.
    for upstream in ups.all() {
        assert_eq!(
            upstream.accepted(),
            1,
            "{} got {} connections for one sequential client",
            upstream.endpoint,
            upstream.accepted()
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_keep_alive_clients_over_three_regions_are_served_at_once() {
    let (_pki, ups, proxy) = setup().await;
    const CLIENTS: usize = 20;
    let run_for = Duration::from_secs(3);
    let url = proxy.url("/v1/benefits");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = keep_alive_client();
            // Each client walks the regions from its own starting point, so all three are
            // busy at every moment.
            let rotation = [["US", "DE", "JP"], ["FR", "SG", "CA"], ["AU", "MX", "IT"]];
            let deadline = Instant::now() + run_for;
            let mut done = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let marketplace = rotation[c % 3][(c + i) % 3];
                let id = format!("client{c}-{i}");
                let started = Instant::now();
                let reply = get(
                    &client,
                    &url,
                    &[
                        ("x-amz-marketplace", marketplace),
                        ("x-amz-request-id", &id),
                    ],
                )
                .await;
                done.push((marketplace, id, reply.status.as_u16(), started.elapsed()));
                i += 1;
            }
            done
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let failed: Vec<_> = all
        .iter()
        .filter(|(_, _, status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)]
    );
    let slowest = all.iter().max_by_key(|(_, _, _, took)| *took).unwrap();
    assert!(slowest.3 < SLOW, "slowest request: {slowest:?}");
    assert!(all.len() >= CLIENTS * 3, "only {} requests", all.len());
    for (marketplace, id, _, _) in &all {
        assert_routed(&ups, marketplace, id);
    }
    assert_eq!(ups.count(), all.len(), "every request went upstream once");
    for upstream in ups.all() {
        assert!(upstream.count() > 0);
        // At most one attempt per client is in flight to an endpoint at a time.
        assert!(
            upstream.accepted() <= CLIENTS,
            "{} got {} connections for {CLIENTS} clients",
            upstream.endpoint,
            upstream.accepted()
        );
    }
    proxy.stop().await;
}
