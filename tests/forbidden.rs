//! Prime's 403s explained: counted by kind, one WARN per kind per minute with the likely
//! cause in plain words, the cause in the request's log line, and the response passed
//! through unchanged. The real binary, against one verifying TLS upstream (the kinds do not
//! depend on the region, so one endpoint is enough here).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const KINDS: [(&str, &str); 7] = [
    ("InvalidSignatureException", "clock skew"),
    ("IncompleteSignatureException", "incomplete"),
    (
        "MissingAuthenticationTokenException",
        "wrong path or API stage",
    ),
    ("UnrecognizedClientException", "not recognised"),
    ("ExpiredTokenException", "expired"),
    ("AccessDeniedException", "execute-api:Invoke"),
    ("SomethingPrimeInventsLater", "without a known error type"),
];

fn log_lines(proxy: &ProxyProcess) -> Vec<serde_json::Value> {
    proxy
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn each_kind_of_403_is_counted_explained_once_and_passed_through() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let command = command_with_static_key(pki.dir.path());
    let proxy = ProxyProcess::start(command, &config_file(&pki, &upstream, "")).await;
    let client = client();
    for (kind, _) in KINDS {
        // Twice each: counted twice, warned about once.
        for _ in 0..2 {
            upstream.push([Action::Respond {
                status: 403,
                headers: vec![
                    (
                        "x-amzn-ErrorType".into(),
                        format!("{kind}:http://internal.amazon.com/coral/"),
                    ),
                    ("content-type".into(), "application/json".into()),
                ],
                body: format!("{{\"message\":\"refused: {kind}\"}}"),
            }]);
            let reply = get(
                &client,
                &proxy.url(&format!(
                    "/v1/benefits?customerIdentifier={LWA_TOKEN_CANONICAL}"
                )),
                &[("x-amz-marketplace", "US")],
            )
            .await;
            assert_eq!(reply.status, 403);
            assert!(reply.header("x-prime-proxy-error").is_none());
            assert_eq!(reply.json()["message"], format!("refused: {kind}"));
        }
    }
    // 403 is never retried.
    assert_eq!(upstream.count(), 2 * KINDS.len());
    let metrics = get(&client, &format!("http://{}/metrics", proxy.admin), &[]).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    for (kind, _) in KINDS {
        let label = if kind.starts_with("Something") {
            "other"
        } else {
            kind
        };
        let series =
            format!("prime_proxy_upstream_auth_failures_total{{region=\"na\",kind=\"{label}\"}} 2");
        assert!(text.contains(&series), "{series} not in {text}");
    }
    // Log lines are written out in batches: wait for the last request's line.
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            log_lines(&proxy)
                .iter()
                .filter(|l| l["message"] == "request" && l["status"] == 403)
                .count()
                == 2 * KINDS.len()
        })
        .await,
        "{}",
        proxy.logs()
    );
    let lines = log_lines(&proxy);
    for (kind, cause) in KINDS {
        let label = if kind.starts_with("Something") {
            "other"
        } else {
            kind
        };
        let warnings: Vec<_> = lines
            .iter()
            .filter(|l| l["level"] == "WARN" && l["kind"] == label)
            .collect();
        assert_eq!(warnings.len(), 1, "{kind}: {warnings:?}");
        let said = warnings[0]["cause"].as_str().unwrap();
        assert!(said.contains(cause), "{kind}: {said}");
        let requests: Vec<_> = lines
            .iter()
            .filter(|l| {
                l["message"] == "request"
                    && l["status"] == 403
                    && l["reason"].as_str().is_some_and(|r| r.contains(cause))
            })
            .collect();
        assert_eq!(requests.len(), 2, "{kind}");
    }
    // The LWA token of the query is in no line.
    assert!(!proxy.logs().contains("Atza"), "{}", proxy.logs());
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
