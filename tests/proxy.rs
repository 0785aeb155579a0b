//! The proxy end to end, in-process: client → proxy → three TLS upstreams, one per region
//! on 127.0.0.1 / .2 / .3, that verify every signature with the independent verifier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::net::TcpListener;

async fn setup() -> (Pki, Upstreams) {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    (pki, upstreams)
}

#[tokio::test]
async fn every_marketplace_in_any_case_is_signed_for_its_region() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let client = client();
    let table = [
        ("us-east-1", &["US", "CA", "MX"][..]),
        (
            "eu-west-1",
            &[
                "UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR",
            ][..],
        ),
        ("us-west-2", &["JP", "SG", "AU"][..]),
    ];
    let mut sent = 0;
    for (signing_region, marketplaces) in table {
        for code in marketplaces {
            let mixed = format!("{}{}", &code[..1], code[1..].to_lowercase());
            for spelling in [code.to_string(), code.to_lowercase(), mixed] {
                let reply = get(
                    &client,
                    &proxy.url("/v1/benefits"),
                    &[("x-amz-marketplace", &spelling)],
                )
                .await;
                assert_eq!(reply.status, 200, "{spelling}: {:?}", reply.body);
                assert_eq!(reply.json()["signatureValid"], true);
                // Received by its own region's endpoint, and by no other.
                let upstream = ups.for_marketplace(code);
                let received = upstream.requests().pop().unwrap();
                let (key, region) = received.assert_signed();
                assert_eq!(key, ACCESS_KEY);
                assert_eq!(region, signing_region, "{spelling}");
                assert_eq!(
                    received.header("x-amz-marketplace"),
                    Some(spelling.as_str())
                );
                assert_eq!(received.header("host"), Some(upstream.authority()));
                sent += 1;
            }
        }
    }
    assert_eq!(sent, 17 * 3);
    assert_eq!(ups.na.count(), 3 * 3);
    assert_eq!(ups.eu.count(), 11 * 3);
    assert_eq!(ups.fe.count(), 3 * 3);
    proxy.stop().await;
}

#[tokio::test]
async fn lwa_tokens_in_every_spelling_arrive_canonical_and_signed() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    // Raw, fully encoded, lower-case hex, half encoded, with other parameters around it,
    // sent over a raw socket so that no client library re-encodes anything.
    let spellings = [
        format!("customerIdentifier={LWA_TOKEN}"),
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}"),
        "customerIdentifier=Atza%7cIwEBIJ%2bkR%2f9z0Y7Q%3d%3d".to_string(),
        "customerIdentifier=Atza|IwEBIJ%2BkR/9z0Y7Q%3D=".to_string(),
        format!("marketplace=x&customerIdentifier={LWA_TOKEN}&flag"),
    ];
    let expected = [
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}"),
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}"),
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}"),
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}"),
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}&flag=&marketplace=x"),
    ];
    for (query, expected) in spellings.iter().zip(expected) {
        let request = format!(
            "GET /v1/customers/benefits?{query} HTTP/1.1\r\nHost: app.local\r\nx-amz-marketplace: US\r\nConnection: close\r\n\r\n"
        );
        let reply = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{query}: {reply}");
        let received = ups.na.requests().pop().unwrap();
        received.assert_signed();
        assert_eq!(received.query, expected, "{query}");
        assert_eq!(received.path, "/v1/customers/benefits");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn spaces_utf8_and_paths_are_sent_as_signed() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let cases = [
        (
            "/v1/a%20b/c?name=Zo%C3%AB&q=a%20b",
            "/v1/a%20b/c",
            "name=Zo%C3%AB&q=a%20b",
        ),
        ("/v1/x?name=Zo\u{00eb}", "/v1/x", "name=Zo%C3%AB"),
        (
            "/v1//double//slash?b=2&a=1",
            "/v1//double//slash",
            "a=1&b=2",
        ),
        ("/v1/%7Euser?k=%7e", "/v1/%7Euser", "k=~"),
    ];
    for (target, path, query) in cases {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: de\r\nConnection: close\r\n\r\n"
        );
        let reply = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{target}: {reply}");
        let received = ups.eu.requests().pop().unwrap();
        let (_, region) = received.assert_signed();
        assert_eq!(region, "eu-west-1");
        assert_eq!(received.path, path, "{target}");
        assert_eq!(received.query, query, "{target}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn bodies_are_signed_and_forwarded_byte_for_byte() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let body = br#"{"customerIdentifier":"Atza|abc+/=","amount":1}"#;
    let request = Request::post(proxy.url("/v1/link"))
        .header("x-amz-marketplace", "JP")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, 200);
    let received = ups.fe.requests().pop().unwrap();
    let (_, region) = received.assert_signed();
    assert_eq!(region, "us-west-2");
    assert_eq!(received.method, "POST");
    assert_eq!(received.body, body);
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(
        received.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    proxy.stop().await;
}

#[tokio::test]
async fn client_auth_and_hop_by_hop_headers_are_replaced() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let request = "GET /v1/benefits HTTP/1.1\r\n\
        Host: evil.example\r\n\
        x-amz-marketplace: US\r\n\
        Authorization: AWS4-HMAC-SHA256 Credential=AKIDEVIL/20200101/us-east-1/execute-api/aws4_request, SignedHeaders=host, Signature=00\r\n\
        X-Amz-Date: 20200101T000000Z\r\n\
        X-Amz-Security-Token: client-token\r\n\
        X-Amz-Content-Sha256: UNSIGNED-PAYLOAD\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        X-Hop: secret-hop\r\n\
        Connection: close, X-Hop\r\n\
        Accept: application/json\r\n\
        \r\n";
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let received = ups.na.requests().pop().unwrap();
    received.assert_signed();
    assert_eq!(received.header("host"), Some(ups.na.authority()));
    assert!(!received
        .header("authorization")
        .unwrap()
        .contains("AKIDEVIL"));
    assert_ne!(received.header("x-amz-date"), Some("20200101T000000Z"));
    assert_eq!(received.header("x-amz-security-token"), Some(SESSION_TOKEN));
    assert_ne!(
        received.header("x-amz-content-sha256"),
        Some("UNSIGNED-PAYLOAD")
    );
    for dropped in ["proxy-authorization", "keep-alive", "te", "x-hop"] {
        assert_eq!(received.header(dropped), None, "{dropped} reached upstream");
    }
    for single in [
        "authorization",
        "x-amz-date",
        "x-amz-security-token",
        "host",
        "x-amz-content-sha256",
    ] {
        assert_eq!(received.header_count(single), 1, "{single}");
    }
    assert_eq!(received.header("accept"), Some("application/json"));
    proxy.stop().await;
}

#[tokio::test]
async fn request_ids_are_created_kept_and_echoed() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let client = client();
    let reply = get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    let id = reply.header("x-amz-request-id").unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(
        ups.na.requests()[0].header("x-amz-request-id"),
        Some(id.as_str())
    );
    let reply = get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    assert_ne!(
        reply.header("x-amz-request-id"),
        Some(id.as_str()),
        "each request gets a fresh id"
    );

    let reply = get(
        &client,
        &proxy.url("/v1/a"),
        &[
            ("x-amz-marketplace", "US"),
            ("x-amz-request-id", "app-chosen-1"),
        ],
    )
    .await;
    assert_eq!(reply.header("x-amz-request-id"), Some("app-chosen-1"));
    assert_eq!(
        ups.na.requests()[2].header("x-amz-request-id"),
        Some("app-chosen-1")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn missing_and_unknown_marketplaces_never_reach_upstream() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let client = client();
    get(&client, &proxy.url("/v1/a"), &[])
        .await
        .assert_error(400, "missing_marketplace");
    get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "")])
        .await
        .assert_error(400, "missing_marketplace");
    get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "GB")])
        .await
        .assert_error(400, "unknown_marketplace");
    get(
        &client,
        &proxy.url("/v1/a"),
        &[("x-amz-marketplace", "USA")],
    )
    .await
    .assert_error(400, "unknown_marketplace");
    let with_id = get(
        &client,
        &proxy.url("/v1/a"),
        &[("x-amz-request-id", "mine-7")],
    )
    .await;
    assert_eq!(
        with_id.assert_error(400, "missing_marketplace")["requestId"],
        "mine-7"
    );
    assert_eq!(ups.count(), 0);
    for upstream in ups.all() {
        assert_eq!(upstream.accepted(), 0, "{} was dialled", upstream.endpoint);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn the_proxy_never_connects_anywhere_but_the_region_table() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    // A host a client would like to reach through us.
    let bait = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bait_addr = bait.local_addr().unwrap();
    let bait_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = bait_hits.clone();
    tokio::spawn(async move {
        while bait.accept().await.is_ok() {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let attempts = [
        format!("GET http://{bait_addr}/steal HTTP/1.1\r\nHost: {bait_addr}\r\nx-amz-marketplace: US\r\nConnection: close\r\n\r\n"),
        format!("GET https://{bait_addr}/steal HTTP/1.1\r\nHost: {bait_addr}\r\nx-amz-marketplace: US\r\nConnection: close\r\n\r\n"),
        format!("CONNECT {bait_addr} HTTP/1.1\r\nHost: {bait_addr}\r\nx-amz-marketplace: US\r\n\r\n"),
    ];
    for attempt in &attempts {
        let reply = raw(proxy.addr, attempt.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{attempt}: {reply}");
        assert!(reply.contains("bad_request"), "{reply}");
    }
    // A Host header naming another server only changes nothing: the request goes to Prime.
    let reply = raw(
        proxy.addr,
        format!("GET /x HTTP/1.1\r\nHost: {bait_addr}\r\nx-amz-marketplace: US\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(ups.na.count(), 1);
    assert_eq!(ups.count(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bait_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn unforwardable_requests_get_bad_request() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    for target in [
        "/v1/../admin",
        "/v1/./x",
        "/v1/%2e%2e/admin",
        "/v1/%2E/x",
        "/v1/x?a=%zz",
        "/v1/x?a=100%",
        "/v1/x?%g0=1",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nConnection: close\r\n\r\n");
        let reply = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{target}: {reply}");
        let json: serde_json::Value = serde_json::from_str(raw_body(&reply)).unwrap();
        assert_eq!(json["error"], "bad_request", "{target}");
    }
    assert_eq!(ups.count(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_nothing_goes_upstream() {
    let (pki, ups) = setup().await;
    let mut config = config_for_regions(&ups, &pki);
    config.max_body_bytes = 1024;
    let proxy = start_proxy(config).await;
    let client = client();
    let big = Request::post(proxy.url("/v1/link"))
        .header("x-amz-marketplace", "US")
        .body(Full::new(Bytes::from(vec![b'x'; 1025])))
        .unwrap();
    send(&client, big).await.assert_error(413, "body_too_large");
    // Chunked, so the proxy only finds out while reading.
    let chunked = "POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n400\r\n".to_string()
        + &"y".repeat(1024)
        + "\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let reply = raw(proxy.addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("body_too_large"));
    let fits = Request::post(proxy.url("/v1/link"))
        .header("x-amz-marketplace", "US")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    assert_eq!(send(&client, fits).await.status, 200);
    assert_eq!(ups.na.count(), 1);
    assert_eq!(ups.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_responses_pass_through_unchanged() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    ups.na.push([
        Action::Respond {
            status: 404,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-amzn-errortype".into(), "NotFound".into()),
            ],
            body: "{\"message\":\"no such customer\"}".into(),
        },
        Action::Respond {
            status: 400,
            headers: vec![("x-amz-request-id".into(), "upstream-id".into())],
            body: "bad".into(),
        },
    ]);
    let client = client();
    let reply = get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-amzn-errortype"), Some("NotFound"));
    assert_eq!(reply.header("x-prime-proxy-error"), None);
    assert_eq!(&reply.body[..], b"{\"message\":\"no such customer\"}");
    let reply = get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(&reply.body[..], b"bad");
    assert_eq!(reply.header("x-amz-request-id"), Some("upstream-id"));
    assert_eq!(ups.na.count(), 2, "404 and 400 are not retried");
    proxy.stop().await;
}

#[tokio::test]
async fn large_responses_are_streamed() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let big = "z".repeat(3 * 1024 * 1024);
    ups.na.push([Action::Respond {
        status: 200,
        headers: vec![],
        body: big.clone(),
    }]);
    let reply = get(
        &client(),
        &proxy.url("/v1/big"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), big.len());
    proxy.stop().await;
}

#[tokio::test]
async fn keep_alive_clients_reuse_pooled_upstream_connections() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let client = client();
    for _ in 0..50 {
        assert_eq!(
            get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")])
                .await
                .status,
            200
        );
    }
    assert_eq!(ups.na.count(), 50);
    let opened = ups.na.accepted();
    assert!(
        opened <= 2,
        "50 sequential requests opened {opened} upstream connections"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = Request::get(proxy.url("/v1/h2?customerIdentifier=Atza%7Cx"))
        .header("x-amz-marketplace", "fr")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&h2, request).await;
    assert_eq!(reply.status, 200);
    let received = ups.eu.requests().pop().unwrap();
    let (_, region) = received.assert_signed();
    assert_eq!(region, "eu-west-1");
    assert_eq!(received.query, "customerIdentifier=Atza%7Cx");
    proxy.stop().await;
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let client = client();
    let admin = |path: &str| format!("http://{}{path}", proxy.admin);
    assert_eq!(get(&client, &admin("/healthz"), &[]).await.status, 200);
    let mut ready = get(&client, &admin("/readyz"), &[]).await.status;
    for _ in 0..50 {
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready = get(&client, &admin("/readyz"), &[]).await.status;
    }
    assert_eq!(ready, 200);
    get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "JP")]).await;
    get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "XX")]).await;
    assert_eq!((ups.na.count(), ups.eu.count(), ups.fe.count()), (1, 0, 1));
    let metrics =
        String::from_utf8(get(&client, &admin("/metrics"), &[]).await.body.to_vec()).unwrap();
    for series in [
        "prime_proxy_requests_total{region=\"na\",status=\"200\"} 1",
        "prime_proxy_requests_total{region=\"fe\",status=\"200\"} 1",
        "prime_proxy_requests_total{region=\"none\",status=\"400\"} 1",
        "prime_proxy_upstream_attempts_total{region=\"na\",outcome=\"response\"} 1",
        "prime_proxy_request_duration_seconds_count{region=\"na\"} 1",
        "prime_proxy_rate_limited_total 0",
        "prime_proxy_credentials_expiry_seconds 1.7976931348623157e308",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    // Every region has its retry budget and connection gauge; requests that matched no
    // region have no upstream, so no budget (at 0) or connections of their own.
    for region in ["na", "eu", "fe"] {
        for series in [
            "prime_proxy_retry_budget_tokens",
            "prime_proxy_upstream_connections",
        ] {
            let series = format!("{series}{{region=\"{region}\"}}");
            assert!(metrics.contains(&series), "missing {series} in\n{metrics}");
        }
    }
    let none_upstream: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("region=\"none\"") && !l.starts_with("prime_proxy_request"))
        .collect();
    assert!(none_upstream.is_empty(), "{none_upstream:?}");
    assert_eq!(get(&client, &admin("/nope"), &[]).await.status, 404);
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    ups.na.push([Action::Sleep(Duration::from_millis(500))]);
    let url = proxy.url("/v1/slow");
    let in_flight =
        tokio::spawn(async move { get(&client(), &url, &[("x-amz-marketplace", "US")]).await });
    assert!(eventually(Duration::from_secs(5), || ups.na.count() == 1).await);
    let addr = proxy.addr;
    proxy.stop().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"{\"slept\":true}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn a_plain_http_endpoint_works_only_when_explicitly_allowed() {
    // One plain-HTTP endpoint, for `na` only: the test is about `allow_plain_http`, which no
    // TLS upstream can show.
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::<(String, Vec<(String, String)>)>::new()));
    let sink = Arc::clone(&seen);
    let (addr, _task) = http_endpoint(move |_method, target, headers, _body| {
        let headers = headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        sink.lock().unwrap().push((target.to_owned(), headers));
        (200, "{}".into())
    })
    .await;
    let endpoint = format!("http://127.0.0.1:{}", addr.port());
    let toml =
        format!("[upstream]\nallow_plain_http = true\n[regions.na]\nendpoint = {endpoint:?}\n");
    let config = prime_sigv4_proxy::config::Config::from_toml(&toml).unwrap();
    let proxy = start_proxy(config).await;
    let reply = get(
        &client(),
        &proxy.url("/v1/plain?customerIdentifier=Atza|t%2B"),
        &[("x-amz-marketplace", "ca")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let (target, headers) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(target, "/v1/plain?customerIdentifier=Atza%7Ct%2B");
    let (path, query) = target.split_once('?').unwrap();
    let request = sigv4_verifier::ReceivedRequest {
        method: "GET",
        path,
        query,
        headers: &headers,
        body: b"",
    };
    let verified = sigv4_verifier::verify(
        &request,
        |id| (id == ACCESS_KEY).then(|| SECRET_KEY.to_owned()),
        &VerifyOptions::new(std::time::SystemTime::now()),
    )
    .unwrap();
    assert_eq!(verified.region, "us-east-1");
    assert!(headers
        .iter()
        .any(|(n, v)| n == "host" && *v == format!("127.0.0.1:{}", addr.port())));
    proxy.stop().await;
    assert!(prime_sigv4_proxy::config::Config::from_toml(
        &toml.replace("allow_plain_http = true", "")
    )
    .is_err());
}

#[tokio::test]
async fn repeated_and_non_ascii_signed_headers_still_verify() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    let request = "POST /v1/link HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nContent-Type: application/json\r\nContent-Type:   charset=utf-8  \r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let received = ups.na.requests().pop().unwrap();
    received.assert_signed();
    assert_eq!(received.header_count("content-type"), 2);
    // A signed header that is not visible ASCII cannot be signed: refused, not sent unsigned.
    let request = b"GET /v1/x HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nContent-Type: text/plain; name=\xc3\xa9\r\nConnection: close\r\n\r\n";
    let reply = raw(proxy.addr, request, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("bad_request"), "{reply}");
    assert_eq!(ups.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn concurrent_keep_alive_clients_need_no_more_upstream_connections_than_their_number() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    // One region on purpose: the bound is per endpoint, and all 48 clients aim at one
    // (tests/regions.rs spreads clients over the three).
    const CLIENTS: usize = 48;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let url = proxy.url("/v1/a");
        tasks.push(tokio::spawn(async move {
            // One keep-alive connection per client, requests back to back.
            let client: PlainClient =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(1)
                    .build_http();
            for _ in 0..40 {
                assert_eq!(
                    get(&client, &url, &[("x-amz-marketplace", "US")])
                        .await
                        .status,
                    200
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(ups.na.count(), CLIENTS * 40);
    let opened = ups.na.accepted();
    assert!(
        opened <= CLIENTS,
        "{CLIENTS} clients made the proxy open {opened} upstream connections"
    );
    let metrics = get(&client(), &format!("http://{}/metrics", proxy.admin), &[]).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains(&format!(
            "prime_proxy_upstream_connections{{region=\"na\"}} {opened}"
        )),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_streaming_response_does_not_hold_up_other_requests() {
    let (pki, ups) = setup().await;
    let proxy = start_proxy(config_for_regions(&ups, &pki)).await;
    ups.na
        .push([Action::StreamSlowly(Duration::from_millis(4000))]);
    let url = proxy.url("/v1/stream");
    let streaming =
        tokio::spawn(async move { get(&client(), &url, &[("x-amz-marketplace", "US")]).await });
    assert!(eventually(Duration::from_secs(5), || ups.na.count() == 1).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The streaming response holds its connection: this request needs another one, and is
    // answered while the stream is still open (not after it).
    assert_eq!(
        get(
            &client(),
            &proxy.url("/v1/quick"),
            &[("x-amz-marketplace", "US")]
        )
        .await
        .status,
        200
    );
    assert!(
        !streaming.is_finished(),
        "the quick request was answered only after the stream ended"
    );
    let streamed = streaming.await.unwrap();
    assert_eq!(&streamed.body[..], b"{\"part\":1,\"done\":true}");
    proxy.stop().await;
}
