//! Abusive or broken clients (against three upstreams, one per region): slow heads, huge
//! heads, garbage, too many requests at once.
//! None of it may crash the proxy or stall other clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup() -> (Pki, Upstreams) {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    (pki, upstreams)
}

async fn healthy(proxy: &TestProxy) {
    let reply = get(
        &client(),
        &proxy.url("/v1/ok"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "a well-behaved client must still be served"
    );
}

#[tokio::test]
async fn a_slow_head_is_cut_off_without_stalling_others() {
    // The bounds below come from the contract's deadline, not from this machine's speed.
    const DEADLINE: Duration = Duration::from_millis(1500);
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.listener.header_read_timeout_ms = DEADLINE.as_millis() as u64;
    let proxy = start_proxy(config).await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let head_started = Instant::now();
    slow.write_all(b"GET /v1/slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile others are served: not held until the slow head's deadline.
    healthy(&proxy).await;
    assert!(
        head_started.elapsed() < DEADLINE,
        "a good client waited on a slow one"
    );
    // A header line every 100 ms, for more than twice the deadline: a deadline that every
    // byte extended would keep the connection open all that time.
    let (mut reader, mut writer) = slow.into_split();
    let dribble = tokio::spawn(async move {
        for _ in 0..(2 * DEADLINE.as_millis() / 100 + 10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(2 * DEADLINE, reader.read_to_end(&mut out)).await;
    let closed_after = head_started.elapsed();
    dribble.abort();
    assert!(
        read.is_ok() && closed_after < 2 * DEADLINE,
        "the dribbling connection was still open {closed_after:?} after its head started"
    );
    assert_eq!(ups.na.count(), 1);
    healthy(&proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_heads_and_too_many_headers_are_refused() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.listener.max_header_bytes = 16 * 1024;
    config.listener.max_headers = 20;
    let proxy = start_proxy(config).await;
    let huge = format!(
        "GET /v1/a HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let reply = raw(proxy.addr, huge.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /v1/a HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\n{many}\r\n");
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(ups.count(), 0);
    healthy(&proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_http_is_answered_or_closed_and_the_proxy_lives_on() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let garbage: [&[u8]; 8] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v1/a HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /v1/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
        b"POST /v1/a HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /v1/a HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
        b"GET /v1/\x00a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\n\r\n\r\n\r\n",
    ];
    for bytes in garbage {
        let reply = raw(proxy.addr, bytes, Duration::from_secs(3)).await;
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
            "{:?} → {reply:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // A client that connects and vanishes.
    drop(TcpStream::connect(proxy.addr).await.unwrap());
    assert_eq!(ups.count(), 0);
    healthy(&proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn requests_beyond_max_in_flight_get_503_overloaded_at_once() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.listener.max_in_flight = 2;
    let proxy = start_proxy(config).await;
    ups.na.push([
        Action::Sleep(Duration::from_millis(800)),
        Action::Sleep(Duration::from_millis(800)),
    ]);
    let mut slow = Vec::new();
    for _ in 0..2 {
        let url = proxy.url("/v1/slow");
        slow.push(tokio::spawn(async move {
            get(&client(), &url, &[("x-amz-marketplace", "US")]).await
        }));
    }
    assert!(eventually(Duration::from_secs(5), || ups.na.count() == 2).await);
    let started = Instant::now();
    let reply = get(
        &client(),
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    reply.assert_error(503, "overloaded");
    assert!(reply.header("retry-after").is_some());
    // "At once": answered while both slow requests still hold their places, not after
    // waiting for one of them to finish.
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "503 came after a slow request finished ({:?})",
        started.elapsed()
    );
    for task in slow {
        assert_eq!(task.await.unwrap().status, 200);
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"prime_proxy_overloaded_total{reason="in_flight"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"prime_proxy_overloaded_total{reason="memory_budget"}"#
        ),
        Some(0.0)
    );
    healthy(&proxy).await;
    proxy.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_instead_of_failing() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.listener.max_connections = 2;
    let proxy = start_proxy(config).await;
    // Two idle keep-alive connections hold both slots...
    let idle_a = TcpStream::connect(proxy.addr).await.unwrap();
    let idle_b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a third client is not served until one of them goes away.
    let url = proxy.url("/v1/a");
    let waiting =
        tokio::spawn(async move { get(&client(), &url, &[("x-amz-marketplace", "US")]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the third connection was served beyond max_connections"
    );
    drop(idle_a);
    let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    drop(idle_b);
    proxy.stop().await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.listener.header_read_timeout_ms = 300;
    config.listener.idle_timeout_ms = 600;
    let proxy = start_proxy(config).await;
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // A keep-alive connection that goes quiet after one request.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /v1/a HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let quiet_from = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        quiet_from.elapsed() >= Duration::from_millis(500),
        "{:?}",
        quiet_from.elapsed()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_upstream_does_not_make_a_connection_idle() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.listener.idle_timeout_ms = 300;
    config.listener.header_read_timeout_ms = 300;
    let proxy = start_proxy(config).await;
    ups.na.push([Action::Sleep(Duration::from_millis(900))]);
    let reply = get(
        &client(),
        &proxy.url("/v1/slow"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "a request in flight keeps its connection open"
    );
    proxy.stop().await;
}
