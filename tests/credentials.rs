//! Credentials through the real binary and the real AWS chain: environment variables, a
//! container-credentials endpoint that rotates keys every few seconds (EKS Pod Identity /
//! ECS), a fake STS for `credentials.role_arn`, and none at all. Three upstreams, one per
//! region, as in production.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;

#[tokio::test]
async fn credentials_from_the_environment_sign_requests() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("AKIDFROMENV", "env/secret+key");
    let mut command = clean_command(pki.dir.path());
    command
        .env("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
        .env("AWS_SECRET_ACCESS_KEY", "env/secret+key")
        .env("AWS_SESSION_TOKEN", "env-session-token");
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;
    let reply = get(
        &client(),
        &proxy.url("/v1/benefits?customerIdentifier=Atza|x"),
        &[("x-amz-marketplace", "MX")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let received = ups.na.requests().pop().unwrap();
    let (key, region) = received.assert_signed();
    assert_eq!(
        (key.as_str(), region.as_str()),
        ("AKIDFROMENV", "us-east-1")
    );
    assert_eq!(
        received.header("x-amz-security-token"),
        Some("env-session-token")
    );
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// Container credentials that change every `PERIOD`, each set valid for `LIFETIME`.
const PERIOD: Duration = Duration::from_secs(2);
const LIFETIME: Duration = Duration::from_secs(3);

#[tokio::test]
async fn rotating_container_credentials_never_fail_a_request() {
    let pki = Pki::new();
    let keys: KeyRing = Arc::new(Mutex::new(HashMap::new()));
    let ups = Upstreams::start_with(&pki, Protocol::Http1, Arc::clone(&keys)).await;
    let rotating = RotatingCredentials::start(Arc::clone(&keys), PERIOD, LIFETIME).await;
    let mut command = clean_command(pki.dir.path());
    rotating.configure(&mut command, &pki);
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;

    // One region: this test is about rotation at a steady pace; tests/mixed_workload.rs
    // rotates under traffic to all three.
    let client = client();
    let deadline = std::time::Instant::now() + Duration::from_secs(9);
    let mut sent = 0;
    while std::time::Instant::now() < deadline {
        let reply = get(
            &client,
            &proxy.url("/v1/benefits"),
            &[("x-amz-marketplace", "AU")],
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "request {sent} failed: {:?}\nlogs:\n{}",
            reply.body,
            proxy.logs()
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let received = ups.fe.requests();
    assert_eq!(received.len(), sent);
    assert_eq!(ups.count(), sent);
    let mut used = std::collections::BTreeSet::new();
    for request in &received {
        let (key, region) = request.assert_signed();
        assert_eq!(region, "us-west-2");
        assert_eq!(
            request
                .header("x-amz-security-token")
                .map(|t| t.trim_start_matches("token-")),
            Some(key.trim_start_matches("ASIAROTATING"))
        );
        used.insert(key);
    }
    assert!(
        used.len() >= 3,
        "only {} keys used across rotations: {used:?}",
        used.len()
    );
    assert!(rotating
        .authorizations
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == POD_IDENTITY_TOKEN));
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// STS calls as the fake STS saw them: (method, form body, Authorization header).
type StsCalls = Arc<Mutex<Vec<(String, String, String)>>>;

/// A fake STS that answers every AssumeRole with `ASIAASSUMED` / `assumed/secret`.
async fn fake_sts() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>, StsCalls) {
    let sts_calls: StsCalls = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::clone(&sts_calls);
    let (sts, task) = http_endpoint(move |method, _target, headers, body| {
        let body = String::from_utf8_lossy(body).into_owned();
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        calls
            .lock()
            .unwrap()
            .push((method.to_owned(), body.clone(), authorization));
        let expiry = iso8601(SystemTime::now() + Duration::from_secs(3600));
        let xml = format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <AssumedRoleId>AROATEST:prime-session</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/prime-client/prime-session</Arn>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAASSUMED</AccessKeyId>
      <SecretAccessKey>assumed/secret</SecretAccessKey>
      <SessionToken>assumed-session-token</SessionToken>
      <Expiration>{expiry}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
        );
        (200, xml)
    })
    .await;
    (sts, task, sts_calls)
}

/// The binary with a base identity in the environment and STS at `sts`.
fn role_command(pki: &Pki, sts: std::net::SocketAddr) -> tokio::process::Command {
    let mut command = clean_command(pki.dir.path());
    command
        .env("AWS_ACCESS_KEY_ID", "AKIDBASEIDENTITY")
        .env("AWS_SECRET_ACCESS_KEY", "base-secret")
        .env("AWS_REGION", "eu-central-1")
        .env(
            "AWS_ENDPOINT_URL_STS",
            format!("http://127.0.0.1:{}", sts.port()),
        );
    command
}

const ROLE_CONFIG: &str = "[credentials]\nrole_arn = \"arn:aws:iam::123456789012:role/prime-client\"\nsession_name = \"prime-session\"\nexternal_id = \"shared-external-id-value\"\n";

#[tokio::test]
async fn role_arn_is_assumed_through_sts_on_a_private_endpoint() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("ASIAASSUMED", "assumed/secret");
    let (sts, _task, sts_calls) = fake_sts().await;
    let proxy = ProxyProcess::start(
        role_command(&pki, sts),
        &regions_config_file(&pki, &ups, ROLE_CONFIG),
    )
    .await;
    let reply = get(
        &client(),
        &proxy.url("/v1/link"),
        &[("x-amz-marketplace", "NL")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}\n{}", reply.body, proxy.logs());
    let received = ups.eu.requests().pop().unwrap();
    let (key, region) = received.assert_signed();
    assert_eq!(
        (key.as_str(), region.as_str()),
        ("ASIAASSUMED", "eu-west-1")
    );
    assert_eq!(
        received.header("x-amz-security-token"),
        Some("assumed-session-token")
    );

    let calls = sts_calls.lock().unwrap().clone();
    assert!(!calls.is_empty());
    let (method, body, authorization) = &calls[0];
    assert_eq!(method, "POST");
    assert!(body.contains("Action=AssumeRole"), "{body}");
    assert!(
        body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fprime-client"),
        "{body}"
    );
    assert!(body.contains("RoleSessionName=prime-session"), "{body}");
    assert!(
        body.contains("ExternalId=shared-external-id-value"),
        "{body}"
    );
    // STS is called as the base identity, in the chain's region.
    assert!(
        authorization.contains("Credential=AKIDBASEIDENTITY/"),
        "{authorization}"
    );
    assert!(
        authorization.contains("/eu-central-1/sts/aws4_request"),
        "{authorization}"
    );
    assert!(!proxy.logs().contains("shared-external-id-value"));
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// Issue 8: with `role_arn`, the second region's first request hung until the attempt
/// timeout. One assumed-role session signs for all three regions, each request reaches its own
/// region's endpoint, and none waits.
#[tokio::test]
async fn role_arn_credentials_sign_requests_to_all_three_regions() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("ASIAASSUMED", "assumed/secret");
    let (sts, _task, sts_calls) = fake_sts().await;
    let extra = format!("{ROLE_CONFIG}[upstream]\nattempt_timeout_ms = 2000\n");
    let proxy = ProxyProcess::start(
        role_command(&pki, sts),
        &regions_config_file(&pki, &ups, &extra),
    )
    .await;
    let client = keep_alive_client();
    for (round, marketplace) in ["NL", "US", "JP", "DE", "CA", "SG"].iter().enumerate() {
        let started = std::time::Instant::now();
        let reply = get(
            &client,
            &proxy.url("/v1/link"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
        let took = started.elapsed();
        assert_eq!(
            reply.status,
            200,
            "{marketplace} (request {round}) after {took:?}: {:?}\n{}",
            reply.body,
            proxy.logs()
        );
        assert!(
            took < Duration::from_secs(1),
            "{marketplace} (request {round}) took {took:?}"
        );
        let id = reply.header("x-amz-request-id").unwrap();
        let (at, received) = ups.find(id).unwrap();
        let (region_key, signing_region) = region_of(marketplace);
        assert_eq!(at, region_key, "{marketplace} reached the wrong endpoint");
        let (key, region) = received.assert_signed();
        assert_eq!(
            (key.as_str(), region.as_str()),
            ("ASIAASSUMED", signing_region)
        );
        assert_eq!(
            received.header("x-amz-security-token"),
            Some("assumed-session-token")
        );
        assert_eq!(received.authority, ups.region(region_key).authority());
    }
    assert_eq!((ups.na.count(), ups.eu.count(), ups.fe.count()), (2, 2, 2));
    assert_eq!(
        sts_calls.lock().unwrap().len(),
        1,
        "one assumed-role session serves every region"
    );
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn without_credentials_the_proxy_starts_but_is_not_ready() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let proxy = ProxyProcess::start(
        clean_command(pki.dir.path()),
        &regions_config_file(&pki, &ups, ""),
    )
    .await;
    let client = client();
    let reply = get(
        &client,
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    reply.assert_error(503, "credentials_unavailable");
    let ready = get(&client, &format!("http://{}/readyz", proxy.admin), &[]).await;
    assert_eq!(ready.status, 503);
    let health = get(&client, &format!("http://{}/healthz", proxy.admin), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(ups.count(), 0);
    // Log lines reach stdout from the proxy's log writer thread, and our reader, a little
    // after the response that followed them.
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .logs()
            .contains("no AWS credentials"))
        .await,
        "{}",
        proxy.logs()
    );
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn logs_never_contain_tokens_secrets_or_bodies() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("AKIDLOGTEST", "log-test-secret-value");
    let mut command = clean_command(pki.dir.path());
    command
        .env("AWS_ACCESS_KEY_ID", "AKIDLOGTEST")
        .env("AWS_SECRET_ACCESS_KEY", "log-test-secret-value")
        .env("AWS_SESSION_TOKEN", "log-test-session-token")
        .env("RUST_LOG", "trace");
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;
    let client = client();
    let token = "Atza|LOGTOKENSECRET+abc/def==";
    let body = "{\"secretBodyField\":\"body-value-never-logged\"}";
    for marketplace in ["US", "XX", ""] {
        let request = http::Request::post(proxy.url(&format!(
            "/v1/benefits?customerIdentifier={}",
            token.replace('|', "%7C").replace('+', "%2B")
        )))
        .header("x-amz-marketplace", marketplace)
        .header("authorization", "Bearer client-authorization-value")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
        send(&client, request).await;
    }
    ups.na.push([
        Action::status(503),
        Action::status(503),
        Action::status(503),
    ]);
    let request =
        http::Request::get(proxy.url("/v1/benefits?customerIdentifier=Atza%7CLOGTOKENSECRET"))
            .header("x-amz-marketplace", "US")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
    assert_eq!(send(&client, request).await.status, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = proxy.logs();
    assert!(
        logs.contains("\"message\":\"request\""),
        "per-request lines are logged: {logs}"
    );
    for secret in [
        "LOGTOKENSECRET",
        "log-test-secret-value",
        "log-test-session-token",
        "client-authorization-value",
        "body-value-never-logged",
        "Signature=",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
    // The per-request line has the SPEC's fields.
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "request" && l["status"] == 200)
        .unwrap();
    for field in [
        "method",
        "path",
        "marketplace",
        "region",
        "status",
        "attempts",
        "duration_ms",
        "request_id",
    ] {
        assert!(!line[field].is_null(), "{field} missing from {line}");
    }
    assert_eq!(line["region"], "na");
    assert_eq!(line["path"], "/v1/benefits");
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn eks_irsa_web_identity_credentials_come_from_sts() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("ASIAIRSA", "irsa/secret");
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&bodies);
    let (sts, _task) = http_endpoint(move |_method, _target, _headers, body| {
        seen.lock().unwrap().push(String::from_utf8_lossy(body).into_owned());
        let expiry = iso8601(SystemTime::now() + Duration::from_secs(3600));
        let xml = format!(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:prime:app</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/prime-irsa/botocore-session</Arn>
      <AssumedRoleId>AROAIRSA:session</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIRSA</AccessKeyId>
      <SecretAccessKey>irsa/secret</SecretAccessKey>
      <SessionToken>irsa-session-token</SessionToken>
      <Expiration>{expiry}</Expiration>
    </Credentials>
    <Provider>arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/X</Provider>
    <Audience>sts.amazonaws.com</Audience>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#
        );
        (200, xml)
    })
    .await;
    let token_file = pki.write("eks-token", "eyJhbGciOiJSUzI1NiJ9.irsa-projected-token.sig");
    let mut command = clean_command(pki.dir.path());
    command
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/prime-irsa")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_REGION", "eu-west-1")
        .env(
            "AWS_ENDPOINT_URL_STS",
            format!("http://127.0.0.1:{}", sts.port()),
        );
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;
    let reply = get(
        &client(),
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "FR")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}\n{}", reply.body, proxy.logs());
    let received = ups.eu.requests().pop().unwrap();
    let (key, region) = received.assert_signed();
    assert_eq!((key.as_str(), region.as_str()), ("ASIAIRSA", "eu-west-1"));
    assert_eq!(
        received.header("x-amz-security-token"),
        Some("irsa-session-token")
    );
    let body = bodies.lock().unwrap().first().cloned().unwrap_or_default();
    assert!(body.contains("Action=AssumeRoleWithWebIdentity"), "{body}");
    assert!(
        body.contains("WebIdentityToken=eyJhbGciOiJSUzI1NiJ9.irsa-projected-token.sig"),
        "{body}"
    );
    assert!(!proxy.logs().contains("irsa-projected-token"));
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
