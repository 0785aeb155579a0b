//! A client that goes away before its answer (SPEC "Logs"), through the real
//! binary: the request still gets its log line (status 499, `error = "client_closed"`) and its
//! metrics, the in-flight gauge returns to 0, and the upstream attempt is dropped with its
//! connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_logged_499_and_its_attempt_dropped() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &ups, "");
    let proxy = ProxyProcess::start(command_with_static_key(pki.dir.path()), &file).await;
    // One request first, so the proxy is warm (same region: this test is about the client
    // leaving, tests/regions.rs about switching regions).
    let warm = get(
        &client(),
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "FR")],
    )
    .await;
    assert_eq!(warm.status, 200);

    ups.eu.push([Action::Sleep(Duration::from_secs(2))]);
    let mut leaving = TcpStream::connect(proxy.addr).await.unwrap();
    leaving
        .write_all(
            b"GET /v1/slow HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: DE\r\nx-amz-request-id: gone-1\r\n\r\n",
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || ups.eu.count() == 2).await,
        "the request did not reach eu"
    );
    let attempt = ups.eu.requests().pop().unwrap();
    assert!(ups.eu.is_open(attempt.connection));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(leaving);

    let line = proxy.request_line(|l| l["request_id"] == "gone-1").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    assert_eq!(line["region"], "eu", "{line}");
    assert_eq!(line["marketplace"], "DE", "{line}");
    assert_eq!(line["path"], "/v1/slow", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() < 1_500.0, "{line}");

    let text = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "prime_proxy_requests_total{region=\"eu\",status=\"499\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "prime_proxy_in_flight_requests"),
        Some(0.0),
        "{text}"
    );
    // The attempt was dropped: its connection is closed, not returned to the pool once the
    // upstream answers (at 2 s).
    assert!(
        eventually(Duration::from_secs(5), || !ups
            .eu
            .is_open(attempt.connection))
        .await,
        "the abandoned attempt's upstream connection is still open"
    );
    assert_eq!(ups.eu.count(), 2, "an abandoned request is not retried");
    // And the region serves the next request.
    let next = get(
        &client(),
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "FR")],
    )
    .await;
    assert_eq!(next.status, 200);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
