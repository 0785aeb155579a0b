//! Requests the proxy must refuse before anything goes upstream, and headers a client cannot
//! make it drop: one `x-amz-marketplace` per request (SPEC item 1), a
//! `Connection` header naming the proxy's own headers, and ambiguous framing.
//! Raw bytes on a socket, so no client library tidies the request first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// A raw HTTP/1.1 reply: status, headers (lower-case names), body.
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    text: String,
}

impl RawReply {
    fn parse(text: String) -> Self {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
            text: text.clone(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The SPEC's JSON error with this code and status.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: {}",
            self.text
        );
        assert_eq!(self.header("x-prime-proxy-error"), Some(code), "{what}");
        let json: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", self.text));
        assert_eq!(json["error"], code, "{what}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

async fn send_raw(proxy: &TestProxy, request: &[u8]) -> RawReply {
    RawReply::parse(raw(proxy.addr, request, Duration::from_secs(10)).await)
}

async fn setup() -> (Pki, Upstreams, TestProxy) {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    (pki, ups, proxy)
}

#[track_caller]
fn assert_nothing_went_upstream(ups: &Upstreams) {
    assert_eq!(ups.count(), 0, "a refused request reached an upstream");
    for upstream in ups.all() {
        assert_eq!(upstream.accepted(), 0, "{} was dialled", upstream.endpoint);
    }
}

#[tokio::test]
async fn two_marketplace_headers_or_a_value_that_is_not_visible_ascii_are_bad_requests() {
    let (_pki, ups, proxy) = setup().await;
    let cases: [(&str, &[u8]); 6] = [
        (
            "US + DE",
            b"x-amz-marketplace: US\r\nx-amz-marketplace: DE\r\n",
        ),
        (
            "US + US",
            b"x-amz-marketplace: US\r\nx-amz-marketplace: US\r\n",
        ),
        (
            "US + us, apart",
            b"x-amz-marketplace: US\r\nAccept: */*\r\nx-amz-marketplace: us\r\n",
        ),
        (
            "US + a Latin-1 byte",
            b"x-amz-marketplace: US\r\nx-amz-marketplace: D\xc9\r\n",
        ),
        ("one Latin-1 value", b"x-amz-marketplace: U\xe9\r\n"),
        ("one UTF-8 value", b"x-amz-marketplace: J\xc3\xa9\r\n"),
    ];
    for (what, headers) in cases {
        for method in ["GET", "POST"] {
            let mut request =
                format!("{method} /v1/benefits HTTP/1.1\r\nHost: app.local\r\n").into_bytes();
            request.extend_from_slice(headers);
            if method == "POST" {
                request.extend_from_slice(b"Content-Length: 2\r\n");
            }
            request.extend_from_slice(b"Connection: close\r\n\r\n");
            if method == "POST" {
                request.extend_from_slice(b"{}");
            }
            let reply = send_raw(&proxy, &request).await;
            reply.assert_error(400, "bad_request", &format!("{method} {what}"));
        }
    }
    assert_nothing_went_upstream(&ups);
    // One header, well-formed: served.
    let reply = send_raw(
        &proxy,
        b"GET /v1/benefits HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: DE\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(ups.eu.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_connection_header_naming_the_proxy_headers_does_not_remove_them() {
    let (_pki, ups, proxy) = setup().await;
    let request = b"GET /v1/benefits HTTP/1.1\r\n\
        Host: app.local\r\n\
        x-amz-marketplace: DE\r\n\
        x-amz-request-id: app-id-42\r\n\
        X-Hop: hop-value\r\n\
        Connection: x-amz-marketplace, x-amz-request-id, X-Hop\r\n\
        \r\n";
    // Keep-alive (the Connection header names no `close`): read exactly one reply.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let reply = exchange(&mut stream, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-amz-request-id"), Some("app-id-42"));
    let received = ups.eu.requests().pop().expect("eu received nothing");
    let (_, region) = received.assert_signed();
    assert_eq!(region, "eu-west-1");
    assert_eq!(received.header("x-amz-marketplace"), Some("DE"));
    assert_eq!(received.header("x-amz-request-id"), Some("app-id-42"));
    let signed = received.signed_headers();
    for name in [
        "x-amz-marketplace",
        "x-amz-request-id",
        "host",
        "x-amz-date",
    ] {
        assert!(
            signed.iter().any(|s| s == name),
            "{name} not in SignedHeaders {signed:?}"
        );
    }
    // Other headers the Connection header names are still hop-by-hop.
    assert_eq!(received.header("x-hop"), None);
    assert_eq!(received.header("connection"), None);
    assert_eq!(ups.count(), 1);
    proxy.stop().await;
}

/// Both Content-Length and Transfer-Encoding: 400 `bad_request`, nothing upstream, in either
/// order and whatever the length says; as the first request on a connection and after
/// keep-alive requests on it.
#[tokio::test]
async fn content_length_together_with_transfer_encoding_is_refused() {
    let (_pki, ups, proxy) = setup().await;
    let cases: [(&str, &[u8]); 3] = [
        (
            "Content-Length, then chunked",
            b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunked, then Content-Length",
            b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: DE\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a length that disagrees with the chunks",
            b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: JP\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        // First on its connection.
        send_raw(&proxy, request)
            .await
            .assert_error(400, "bad_request", what);
        // After two keep-alive requests on the same connection, one of them chunked.
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        for earlier in [
            &b"GET /v1/benefits HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\n\r\n"[..],
            &b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: DE\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ] {
            let reply = exchange(&mut stream, earlier).await;
            assert_eq!(reply.status, 200, "{what}, earlier request: {}", reply.text);
        }
        exchange(&mut stream, request).await.assert_error(
            400,
            "bad_request",
            &format!("{what}, after keep-alive"),
        );
    }
    assert_eq!(ups.count(), 6, "only the earlier requests went upstream");
    for received in ups.all().iter().flat_map(|u| u.requests()) {
        received.assert_signed();
    }
    assert_eq!(ups.na.count(), 3, "the earlier GETs");
    assert_eq!(
        ups.eu
            .requests()
            .iter()
            .filter(|r| r.body == b"hello")
            .count(),
        3
    );
    assert_eq!(ups.fe.count(), 0, "the JP request was refused");
    // Either framing alone is fine, also one after the other on one connection.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for request in [
        &b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        &b"POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nContent-Length: 5\r\n\r\nhello"[..],
    ] {
        let reply = exchange(&mut stream, request).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(ups.na.requests().pop().unwrap().body, b"hello");
    }
    proxy.stop().await;
}

/// Writes one request on a keep-alive connection and reads one reply with a Content-Length.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if out.len() >= end + 4 + length {
                    break;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no reply within 10 s");
    RawReply::parse(String::from_utf8_lossy(&out).into_owned())
}
