//! Every credential source the README and docs/contract.md name that tests/credentials.rs does
//! not already cover, through the real binary, laptop-shaped: a temp `HOME` holding
//! `~/.aws/config`, `~/.aws/credentials` and the SSO token cache as the AWS CLI v2 writes it;
//! a local stand-in for the SSO portal (`GetRoleCredentials`) and for SSO OIDC (`CreateToken`,
//! the token refresh); a `credential_process` script; a fake IMDSv2. Each source's keys sign
//! requests to the three regions (127.0.0.1/.2/.3) from concurrent keep-alive clients, and the
//! upstreams verify every signature against the keys that source handed out.
//!
//! Every binary starts from an empty environment (`clean_command`), so nothing of this
//! machine's AWS setup leaks in, and with IMDS disabled unless the test is about IMDS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;

/// A user's home directory with the files the AWS CLI reads and writes.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` at `relative` (parents created).
    fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// The binary as a user runs it from this home: the default `~/.aws` files (no
    /// `AWS_CONFIG_FILE` override), the profile chosen with `AWS_PROFILE`.
    fn command(&self, profile: &str) -> tokio::process::Command {
        let mut command = clean_command(self.path());
        command
            .env_remove("AWS_CONFIG_FILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env("AWS_PROFILE", profile);
        command
    }
}

/// Sends US, DE and JP requests from three concurrent keep-alive clients and asserts each
/// reached its own region, signed (verified upstream) with `key` and carrying `token`.
async fn assert_signed_in_every_region(
    proxy: &ProxyProcess,
    ups: &Upstreams,
    key: &str,
    token: Option<&str>,
) {
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let client = keep_alive_client();
            let url = proxy.url("/v1/benefits");
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for marketplace in ["US", "DE", "JP"] {
                    let reply = get(&client, &url, &[("x-amz-marketplace", marketplace)]).await;
                    replies.push((marketplace, reply));
                }
                replies
            })
        })
        .collect();
    for client in clients {
        for (marketplace, reply) in client.await.unwrap() {
            assert_eq!(
                reply.status,
                200,
                "{marketplace}: {:?}\n{}",
                reply.body,
                proxy.logs()
            );
            let id = reply.header("x-amz-request-id").unwrap();
            let (at, received) = ups.find(id).unwrap();
            let (region_key, signing_region) = region_of(marketplace);
            assert_eq!(at, region_key, "{marketplace} reached the wrong endpoint");
            let (signed_with, region) = received.assert_signed();
            assert_eq!(
                (signed_with.as_str(), region.as_str()),
                (key, signing_region)
            );
            assert_eq!(received.header("x-amz-security-token"), token);
        }
    }
}

// ---------------------------------------------------------------------------------------
// SSO

const ACCOUNT: &str = "111122223333";
const ROLE: &str = "PrimeDeveloper";
/// The keys the portal hands out for `ROLE`.
const PORTAL_KEY: &str = "ASIASSOPORTAL";
const PORTAL_SECRET: &str = "sso/portal+secret";
const PORTAL_SESSION_TOKEN: &str = "sso-portal-session-token";
/// What `aws sso login` registered (the OIDC client) and got (the refresh token).
const CLIENT_ID: &str = "sso-oidc-client-id";
const CLIENT_SECRET: &str = "sso-oidc-client-secret-value";
const REFRESH_TOKEN: &str = "sso-refresh-token-value";
/// The access token SSO OIDC hands out for `REFRESH_TOKEN`.
const REFRESHED_ACCESS_TOKEN: &str = "sso-access-token-refreshed";

/// The `sso_session` form, as `aws configure sso` writes it.
const SESSION_CONFIG: &str = "[profile dev]
sso_session = corp
sso_account_id = 111122223333
sso_role_name = PrimeDeveloper
region = us-east-1

[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
sso_region = eu-west-1
sso_registration_scopes = sso:account:access
";
/// `~/.aws/sso/cache/<sha1("corp")>.json` (sha1sum of the session name).
const SESSION_TOKEN_FILE: &str = ".aws/sso/cache/ee0bfd2552fbd840c02cc48b6e823320543c450f.json";

/// The legacy form: the start URL in the profile itself.
const LEGACY_CONFIG: &str = "[profile legacy]
sso_start_url = https://legacy-corp.awsapps.com/start
sso_region = us-west-2
sso_account_id = 111122223333
sso_role_name = PrimeDeveloper
region = us-east-1
";
/// `~/.aws/sso/cache/<sha1(start URL)>.json`.
const LEGACY_TOKEN_FILE: &str = ".aws/sso/cache/db20176fd0f7e06aa29a072403e4d51c0e3e45af.json";

/// A token file as the AWS CLI v2 writes it after `aws sso login`: with the registration
/// and the refresh token for the `sso_session` form, without them for the legacy form.
fn token_file(access_token: &str, expires_in: i64, refreshable: bool) -> String {
    let at = |seconds: i64| {
        let now = SystemTime::now();
        let moment = if seconds >= 0 {
            now + Duration::from_secs(seconds.unsigned_abs())
        } else {
            now - Duration::from_secs(seconds.unsigned_abs())
        };
        iso8601(moment)
    };
    let mut token = serde_json::json!({
        "startUrl": "https://corp.awsapps.com/start",
        "region": "eu-west-1",
        "accessToken": access_token,
        "expiresAt": at(expires_in),
    });
    if refreshable {
        token["clientId"] = CLIENT_ID.into();
        token["clientSecret"] = CLIENT_SECRET.into();
        token["registrationExpiresAt"] = at(90 * 86_400).into();
        token["refreshToken"] = REFRESH_TOKEN.into();
    }
    serde_json::to_string_pretty(&token).unwrap()
}

/// The SSO portal and SSO OIDC, each on its own port, as the SDK calls them.
struct FakeSso {
    portal: std::net::SocketAddr,
    oidc: std::net::SocketAddr,
    /// Access tokens the portal accepts.
    accepted: Arc<Mutex<HashSet<String>>>,
    /// (path and query, bearer token) of every portal call.
    portal_calls: Arc<Mutex<Vec<(String, String)>>>,
    /// The JSON body of every `CreateToken` call.
    oidc_calls: Arc<Mutex<Vec<serde_json::Value>>>,
    _tasks: [tokio::task::JoinHandle<()>; 2],
}

impl FakeSso {
    async fn start() -> Self {
        let accepted = Arc::new(Mutex::new(HashSet::<String>::new()));
        let portal_calls = Arc::new(Mutex::new(Vec::new()));
        let oidc_calls = Arc::new(Mutex::new(Vec::new()));
        let (tokens, calls) = (Arc::clone(&accepted), Arc::clone(&portal_calls));
        let (portal, portal_task) =
            http_endpoint_with_headers(move |method, target, headers, _body| {
                let bearer = headers
                    .get("x-amz-sso_bearer_token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                calls
                    .lock()
                    .unwrap()
                    .push((target.to_owned(), bearer.clone()));
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                if method != "GET" || path != "/federation/credentials" {
                    return (404, Vec::new(), String::new());
                }
                let query: HashMap<&str, &str> =
                    query.split('&').filter_map(|p| p.split_once('=')).collect();
                if !tokens.lock().unwrap().contains(&bearer) {
                    return error(
                        401,
                        "UnauthorizedException",
                        "Session token not found or invalid",
                    );
                }
                if query.get("account_id") != Some(&ACCOUNT)
                    || query.get("role_name") != Some(&ROLE)
                {
                    return error(403, "ForbiddenException", "No access");
                }
                let expiration = SystemTime::now() + Duration::from_secs(3600);
                let millis = expiration
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                let body = serde_json::json!({"roleCredentials": {
                    "accessKeyId": PORTAL_KEY,
                    "secretAccessKey": PORTAL_SECRET,
                    "sessionToken": PORTAL_SESSION_TOKEN,
                    "expiration": millis,
                }});
                (200, json_headers(), body.to_string())
            })
            .await;
        let (tokens, calls) = (Arc::clone(&accepted), Arc::clone(&oidc_calls));
        let (oidc, oidc_task) =
            http_endpoint_with_headers(move |method, target, _headers, body| {
                if method != "POST" || target != "/token" {
                    return (404, Vec::new(), String::new());
                }
                let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                calls.lock().unwrap().push(request.clone());
                let valid = request["grantType"] == "refresh_token"
                    && request["refreshToken"] == REFRESH_TOKEN
                    && request["clientId"] == CLIENT_ID
                    && request["clientSecret"] == CLIENT_SECRET;
                if !valid {
                    return error(400, "InvalidGrantException", "invalid grant");
                }
                tokens
                    .lock()
                    .unwrap()
                    .insert(REFRESHED_ACCESS_TOKEN.to_owned());
                let body = serde_json::json!({
                    "accessToken": REFRESHED_ACCESS_TOKEN,
                    "tokenType": "Bearer",
                    "expiresIn": 28_800,
                    "refreshToken": "sso-refresh-token-rotated",
                });
                (200, json_headers(), body.to_string())
            })
            .await;
        Self {
            portal,
            oidc,
            accepted,
            portal_calls,
            oidc_calls,
            _tasks: [portal_task, oidc_task],
        }
    }

    fn accept(&self, access_token: &str) {
        self.accepted
            .lock()
            .unwrap()
            .insert(access_token.to_owned());
    }

    /// Points the SDK's SSO and SSO OIDC clients at this stand-in, as a private endpoint.
    fn configure(&self, command: &mut tokio::process::Command) {
        command
            .env(
                "AWS_ENDPOINT_URL_SSO",
                format!("http://127.0.0.1:{}", self.portal.port()),
            )
            .env(
                "AWS_ENDPOINT_URL_SSO_OIDC",
                format!("http://127.0.0.1:{}", self.oidc.port()),
            );
    }

    fn bearers(&self) -> Vec<String> {
        self.portal_calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, bearer)| bearer.clone())
            .collect()
    }
}

fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".to_owned(), "application/json".to_owned())]
}

/// An error as the AWS JSON services send it.
fn error(status: u16, kind: &str, message: &str) -> (u16, Vec<(String, String)>, String) {
    let mut headers = json_headers();
    headers.push(("x-amzn-errortype".to_owned(), kind.to_owned()));
    (
        status,
        headers,
        serde_json::json!({ "message": message }).to_string(),
    )
}

/// The proxy's own log lines (JSON) whose message contains `text`.
fn lines_containing(proxy: &ProxyProcess, text: &str) -> Vec<serde_json::Value> {
    proxy
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

#[tokio::test]
async fn sso_session_profile_signs_with_the_portals_role_credentials() {
    let (pki, home, sso) = (Pki::new(), Home::new(), FakeSso::start().await);
    let ups = Upstreams::start(&pki).await;
    ups.accept_key(PORTAL_KEY, PORTAL_SECRET);
    home.write(".aws/config", SESSION_CONFIG);
    home.write(
        SESSION_TOKEN_FILE,
        &token_file("sso-access-token-valid", 8 * 3600, true),
    );
    sso.accept("sso-access-token-valid");
    let mut command = home.command("dev");
    sso.configure(&mut command);
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;

    assert_signed_in_every_region(&proxy, &ups, PORTAL_KEY, Some(PORTAL_SESSION_TOKEN)).await;
    // One fetch serves every request; the token was fresh, so SSO OIDC was not needed.
    assert_eq!(sso.bearers(), vec!["sso-access-token-valid".to_owned()]);
    let (target, _) = sso.portal_calls.lock().unwrap()[0].clone();
    assert!(target.starts_with("/federation/credentials?"), "{target}");
    assert!(target.contains("account_id=111122223333"), "{target}");
    assert!(target.contains("role_name=PrimeDeveloper"), "{target}");
    assert!(sso.oidc_calls.lock().unwrap().is_empty());
    // `doctor` names the profile and the source.
    let mut doctor = home.command("dev");
    sso.configure(&mut doctor);
    doctor
        .arg("doctor")
        .arg("--config")
        .arg(pki.dir.path().join("proxy.toml"));
    let output = tokio::time::timeout(Duration::from_secs(30), doctor.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let credentials = stdout
        .lines()
        .find(|l| l.starts_with("ok   credentials"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        credentials.contains("profile `dev` (SSO): access key ASIA…"),
        "{credentials}"
    );
    let logs = proxy.logs();
    for secret in [
        "sso-access-token-valid",
        PORTAL_SECRET,
        PORTAL_SESSION_TOKEN,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn an_expired_sso_access_token_is_refreshed_through_sso_oidc() {
    let (pki, home, sso) = (Pki::new(), Home::new(), FakeSso::start().await);
    let ups = Upstreams::start(&pki).await;
    ups.accept_key(PORTAL_KEY, PORTAL_SECRET);
    home.write(".aws/config", SESSION_CONFIG);
    // Expired an hour ago, the refresh token still good: what a laptop has the next morning.
    let cache = home.write(
        SESSION_TOKEN_FILE,
        &token_file("sso-access-token-expired", -3600, true),
    );
    let mut command = home.command("dev");
    sso.configure(&mut command);
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;

    assert_signed_in_every_region(&proxy, &ups, PORTAL_KEY, Some(PORTAL_SESSION_TOKEN)).await;
    let calls = sso.oidc_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["grantType"], "refresh_token");
    assert_eq!(calls[0]["refreshToken"], REFRESH_TOKEN);
    assert_eq!(calls[0]["clientId"], CLIENT_ID);
    assert_eq!(calls[0]["clientSecret"], CLIENT_SECRET);
    assert_eq!(sso.bearers(), vec![REFRESHED_ACCESS_TOKEN.to_owned()]);
    // Written back as the AWS CLI does, so the CLI and the proxy share the new token.
    let cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache).unwrap()).unwrap();
    assert_eq!(cached["accessToken"], REFRESHED_ACCESS_TOKEN);
    let logs = proxy.logs();
    for secret in [
        REFRESH_TOKEN,
        CLIENT_SECRET,
        REFRESHED_ACCESS_TOKEN,
        "sso-refresh-token-rotated",
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    assert!(lines_containing(&proxy, "SSO token").is_empty(), "{logs}");
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn legacy_sso_start_url_profile_signs_with_the_portals_role_credentials() {
    let (pki, home, sso) = (Pki::new(), Home::new(), FakeSso::start().await);
    let ups = Upstreams::start(&pki).await;
    ups.accept_key(PORTAL_KEY, PORTAL_SECRET);
    home.write(".aws/config", LEGACY_CONFIG);
    home.write(
        LEGACY_TOKEN_FILE,
        &token_file("sso-access-token-legacy", 8 * 3600, false),
    );
    sso.accept("sso-access-token-legacy");
    let mut command = home.command("legacy");
    sso.configure(&mut command);
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;

    assert_signed_in_every_region(&proxy, &ups, PORTAL_KEY, Some(PORTAL_SESSION_TOKEN)).await;
    assert_eq!(sso.bearers(), vec!["sso-access-token-legacy".to_owned()]);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// The plain line for an unusable token: once, naming the profile, the command and `doctor`,
/// without the SDK's error chain or any secret; requests get 503; a new token file written by
/// a login is picked up without a restart.
async fn expired_token_then_login(config: &str, profile: &str, file: &str, refreshable: bool) {
    let (pki, home, sso) = (Pki::new(), Home::new(), FakeSso::start().await);
    let ups = Upstreams::start(&pki).await;
    ups.accept_key(PORTAL_KEY, PORTAL_SECRET);
    home.write(".aws/config", config);
    // Expired, and the refresh token (when there is one) revoked: only a login helps.
    let stale = token_file("sso-access-token-stale", -600, refreshable)
        .replace(REFRESH_TOKEN, "sso-refresh-token-revoked");
    home.write(file, &stale);
    let mut command = home.command(profile);
    sso.configure(&mut command);
    command.env("RUST_LOG", "info,prime_sigv4_proxy::credentials=debug");
    let config_file = regions_config_file(&pki, &ups, "");
    let proxy = ProxyProcess::start(command, &config_file).await;

    let client = client();
    let reply = get(
        &client,
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    reply.assert_error(503, "credentials_unavailable");
    let said = format!("the SSO token of profile `{profile}` has expired");
    assert!(
        eventually(Duration::from_secs(5), || !lines_containing(&proxy, &said)
            .is_empty())
        .await,
        "{}",
        proxy.logs()
    );
    // A file rewritten with another unusable token is fetched again (a DEBUG line) within the
    // poll, and the WARN line is not repeated.
    home.write(
        file,
        &stale.replace("sso-access-token-stale", "sso-access-token-stale-too"),
    );
    let retried = eventually(Duration::from_secs(10), || {
        !lines_containing(&proxy, "SSO token still not usable").is_empty()
    })
    .await;
    assert!(retried, "{}", proxy.logs());
    let warned = lines_containing(&proxy, &said);
    assert_eq!(warned.len(), 1, "{}", proxy.logs());
    let line = &warned[0];
    assert_eq!(line["level"], "WARN", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("run `aws sso login --profile {profile}`")),
        "{message}"
    );
    assert!(message.contains("prime-sigv4-proxy doctor"), "{message}");
    assert!(message.contains("requests get 503"), "{message}");
    assert_eq!(line["profile"], profile, "{line}");
    // The SDK's own words are only in the DEBUG lines this test enabled.
    let logs = proxy.logs();
    let shown: Vec<&str> = logs
        .lines()
        .filter(|l| !l.contains("\"level\":\"DEBUG\""))
        .collect();
    let shown = shown.join("\n");
    for sdk_words in [
        "no AWS credentials",
        "the credential provider",
        "ProfileFile",
        "Attempted",
        "UnauthorizedException",
        "dispatch failure",
    ] {
        assert!(!shown.contains(sdk_words), "{sdk_words} in:\n{shown}");
    }
    for secret in [
        "sso-access-token-stale",
        "sso-refresh-token-revoked",
        CLIENT_SECRET,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    assert_eq!(ups.count(), 0);

    // `doctor` says the same and exits 1.
    let mut doctor = home.command(profile);
    sso.configure(&mut doctor);
    doctor.arg("doctor").arg("--config").arg(&config_file);
    let output = tokio::time::timeout(Duration::from_secs(30), doctor.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let credentials = stdout
        .lines()
        .find(|l| l.starts_with("FAIL credentials"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(credentials.contains(&said), "{credentials}");
    assert!(
        credentials.contains(&format!("run `aws sso login --profile {profile}`")),
        "{credentials}"
    );
    assert!(!stdout.contains("sso-access-token-stale"), "{stdout}");

    // The user logs in: the AWS CLI writes a new token file. Picked up within the poll, not
    // the 30 s backoff; no restart.
    sso.accept("sso-access-token-after-login");
    home.write(
        file,
        &token_file("sso-access-token-after-login", 8 * 3600, refreshable),
    );
    let signed = eventually_async(Duration::from_secs(15), || async {
        get(
            &client,
            &proxy.url("/v1/benefits"),
            &[("x-amz-marketplace", "US")],
        )
        .await
        .status
            == 200
    })
    .await;
    assert!(signed, "{}", proxy.logs());
    assert_signed_in_every_region(&proxy, &ups, PORTAL_KEY, Some(PORTAL_SESSION_TOKEN)).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            !lines_containing(&proxy, "AWS credentials found: requests are signed again").is_empty()
        })
        .await
    );
    assert_eq!(lines_containing(&proxy, &said).len(), 1);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn an_expired_sso_session_token_says_to_log_in_and_a_login_is_picked_up_without_restart() {
    expired_token_then_login(SESSION_CONFIG, "dev", SESSION_TOKEN_FILE, true).await;
}

#[tokio::test]
async fn an_expired_legacy_sso_token_says_to_log_in_and_a_login_is_picked_up_without_restart() {
    expired_token_then_login(LEGACY_CONFIG, "legacy", LEGACY_TOKEN_FILE, false).await;
}

#[tokio::test]
async fn a_missing_sso_token_says_to_log_in_and_the_first_login_is_picked_up() {
    let (pki, home, sso) = (Pki::new(), Home::new(), FakeSso::start().await);
    let ups = Upstreams::start(&pki).await;
    ups.accept_key(PORTAL_KEY, PORTAL_SECRET);
    home.write(".aws/config", SESSION_CONFIG);
    let mut command = home.command("dev");
    sso.configure(&mut command);
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;
    let reply = get(
        &client(),
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "JP")],
    )
    .await;
    reply.assert_error(503, "credentials_unavailable");
    let said = "the SSO token of profile `dev` is missing";
    assert!(
        eventually(Duration::from_secs(5), || !lines_containing(&proxy, said)
            .is_empty())
        .await,
        "{}",
        proxy.logs()
    );
    let message = lines_containing(&proxy, said)[0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("run `aws sso login --profile dev`"),
        "{message}"
    );
    assert!(sso.bearers().is_empty());

    // `aws sso login` writes the first token file: picked up without a restart.
    sso.accept("sso-access-token-first-login");
    home.write(
        SESSION_TOKEN_FILE,
        &token_file("sso-access-token-first-login", 8 * 3600, true),
    );
    let client = client();
    let signed = eventually_async(Duration::from_secs(15), || async {
        get(
            &client,
            &proxy.url("/v1/benefits"),
            &[("x-amz-marketplace", "JP")],
        )
        .await
        .status
            == 200
    })
    .await;
    assert!(signed, "{}", proxy.logs());
    assert_signed_in_every_region(&proxy, &ups, PORTAL_KEY, Some(PORTAL_SESSION_TOKEN)).await;
    assert_eq!(lines_containing(&proxy, said).len(), 1);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// Polls the async `check` every 200 ms until it holds or `within` passes.
async fn eventually_async<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check().await
}

// ---------------------------------------------------------------------------------------
// Profiles without SSO

#[tokio::test]
async fn a_profiles_static_keys_in_the_credentials_file_sign_requests() {
    let (pki, home) = (Pki::new(), Home::new());
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("AKIDPROFILESTATIC", "profile/static+secret");
    home.write(
        ".aws/credentials",
        "[default]\naws_access_key_id = AKIDNOTTHISONE\naws_secret_access_key = default-secret\n\n\
         [prime-static]\naws_access_key_id = AKIDPROFILESTATIC\naws_secret_access_key = profile/static+secret\n",
    );
    home.write(
        ".aws/config",
        "[profile prime-static]\nregion = eu-west-1\n",
    );
    let proxy = ProxyProcess::start(
        home.command("prime-static"),
        &regions_config_file(&pki, &ups, ""),
    )
    .await;
    assert_signed_in_every_region(&proxy, &ups, "AKIDPROFILESTATIC", None).await;
    assert!(!proxy.logs().contains("profile/static+secret"));
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn credential_process_output_signs_requests() {
    let (pki, home) = (Pki::new(), Home::new());
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("ASIAPROCESS", "process/secret+key");
    let expiry = iso8601(SystemTime::now() + Duration::from_secs(3600));
    let ran = home.path().join("process-ran");
    let script = home.write(
        "bin/prime-credentials",
        &format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\ncat <<'EOF'\n\
             {{\"Version\": 1, \"AccessKeyId\": \"ASIAPROCESS\", \"SecretAccessKey\": \"process/secret+key\", \
             \"SessionToken\": \"process-session-token\", \"Expiration\": \"{expiry}\"}}\nEOF\n",
            ran.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    home.write(
        ".aws/config",
        &format!(
            "[profile tool]\ncredential_process = {} --for-prime\n",
            script.display()
        ),
    );
    let proxy =
        ProxyProcess::start(home.command("tool"), &regions_config_file(&pki, &ups, "")).await;
    assert_signed_in_every_region(&proxy, &ups, "ASIAPROCESS", Some("process-session-token")).await;
    // The command line as configured, run once for every request so far.
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "--for-prime\n");
    let logs = proxy.logs();
    assert!(!logs.contains("process/secret+key") && !logs.contains("process-session-token"));
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// IMDSv2

const IMDS_TOKEN: &str = "imds-session-token-AQAEAFx";

#[tokio::test]
async fn imdsv2_role_credentials_sign_requests_with_the_session_token_on_every_call() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    ups.accept_key("ASIAIMDSROLE", "imds/role+secret");
    // (method, path, x-aws-ec2-metadata-token) of every call.
    let calls = Arc::new(Mutex::new(Vec::<(String, String, Option<String>)>::new()));
    let seen = Arc::clone(&calls);
    let (imds, _task) = http_endpoint_with_headers(move |method, target, headers, _body| {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let token = header("x-aws-ec2-metadata-token");
        seen.lock()
            .unwrap()
            .push((method.to_owned(), target.to_owned(), token.clone()));
        if method == "PUT" && target == "/latest/api/token" {
            if header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                return (400, Vec::new(), String::new());
            }
            let ttl = vec![(
                "x-aws-ec2-metadata-token-ttl-seconds".to_owned(),
                "21600".to_owned(),
            )];
            return (200, ttl, IMDS_TOKEN.to_owned());
        }
        // IMDSv2: every read needs the session token.
        if token.as_deref() != Some(IMDS_TOKEN) {
            return (401, Vec::new(), String::new());
        }
        match target {
            "/latest/meta-data/iam/security-credentials/" => {
                (200, Vec::new(), "prime-instance-role".to_owned())
            }
            "/latest/meta-data/iam/security-credentials/prime-instance-role" => {
                let now = SystemTime::now();
                let body = serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": iso8601(now),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": "ASIAIMDSROLE",
                    "SecretAccessKey": "imds/role+secret",
                    "Token": "imds-role-session-token",
                    "Expiration": iso8601(now + Duration::from_secs(6 * 3600)),
                });
                (200, Vec::new(), body.to_string())
            }
            _ => (404, Vec::new(), String::new()),
        }
    })
    .await;
    let mut command = clean_command(pki.dir.path());
    command.env_remove("AWS_EC2_METADATA_DISABLED").env(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{}", imds.port()),
    );
    let proxy = ProxyProcess::start(command, &regions_config_file(&pki, &ups, "")).await;
    assert_signed_in_every_region(
        &proxy,
        &ups,
        "ASIAIMDSROLE",
        Some("imds-role-session-token"),
    )
    .await;
    let calls = calls.lock().unwrap().clone();
    let credential_reads: Vec<_> = calls
        .iter()
        .filter(|(method, path, _)| {
            method == "GET" && path.starts_with("/latest/meta-data/iam/security-credentials/")
        })
        .collect();
    assert_eq!(credential_reads.len(), 2, "{calls:?}");
    assert!(
        calls
            .iter()
            .filter(|(method, _, _)| method == "GET")
            .all(|(_, _, token)| token.as_deref() == Some(IMDS_TOKEN)),
        "every read carries the IMDSv2 session token: {calls:?}"
    );
    assert!(calls
        .iter()
        .any(|(method, path, _)| method == "PUT" && path == "/latest/api/token"));
    let logs = proxy.logs();
    assert!(!logs.contains("imds/role+secret") && !logs.contains(IMDS_TOKEN));
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
