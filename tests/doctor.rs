//! `prime-sigv4-proxy doctor`, the real binary, against the three loopback TLS regions: the
//! healthy setup passes every check; each failure injected on its own (no credentials, a
//! refused connection, an untrusted CA, a skewed `Date`, a 403 `InvalidSignatureException`,
//! a 403 `AccessDeniedException`) fails its own named check and exits 1; an invalid
//! configuration exits 2 naming the key; `--marketplace` checks one region; `--json` has the
//! SPEC's shape; nothing secret is printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// Generous: every check is bounded by a few seconds, but this machine may be busy.
const DOCTOR_DEADLINE: Duration = Duration::from_secs(30);

/// The per-region checks, in the order they are printed.
const REGION_CHECKS: [&str; 5] = ["dns", "connect", "tls", "clock", "signed_probe"];

/// What one run printed and how it ended.
struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// One text line: `ok`/`FAIL`, check, region (`-` for the global ones), detail.
#[derive(Debug, Clone)]
struct Line {
    ok: bool,
    name: String,
    region: String,
    detail: String,
}

impl Run {
    fn lines(&self) -> Vec<Line> {
        self.stdout
            .lines()
            .map(|line| {
                let mut words = line.split_whitespace();
                let mark = words.next().unwrap();
                assert!(mark == "ok" || mark == "FAIL", "{line}");
                let name = words.next().unwrap().to_owned();
                let region = words.next().unwrap().to_owned();
                let detail = words.collect::<Vec<_>>().join(" ");
                Line {
                    ok: mark == "ok",
                    name,
                    region,
                    detail,
                }
            })
            .collect()
    }

    fn line(&self, name: &str, region: &str) -> Line {
        self.lines()
            .into_iter()
            .find(|line| line.name == name && line.region == region)
            .unwrap_or_else(|| panic!("no {name} line for {region} in:\n{}", self.stdout))
    }

    /// (check, region) of the lines that failed on their own (not skipped after another).
    fn failed(&self) -> Vec<(String, String)> {
        self.lines()
            .into_iter()
            .filter(|line| !line.ok && !line.detail.starts_with("skipped:"))
            .map(|line| (line.name, line.region))
            .collect()
    }

    fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.status,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(self.took < DOCTOR_DEADLINE, "took {:?}", self.took);
    }
}

async fn doctor(mut command: tokio::process::Command, args: &[&str]) -> Run {
    command.arg("doctor").args(args);
    let started = Instant::now();
    let output = tokio::time::timeout(DOCTOR_DEADLINE, command.output())
        .await
        .expect("doctor finishes in time")
        .unwrap();
    Run {
        status: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        took: started.elapsed(),
    }
}

fn with_config(file: &std::path::Path) -> [String; 2] {
    ["--config".to_owned(), file.display().to_string()]
}

async fn doctor_with(
    command: tokio::process::Command,
    file: &std::path::Path,
    more: &[&str],
) -> Run {
    let config = with_config(file);
    let mut args: Vec<&str> = config.iter().map(String::as_str).collect();
    args.extend_from_slice(more);
    doctor(command, &args).await
}

/// A 403 as API Gateway sends it.
fn forbidden(kind: &str, message: &str) -> Action {
    Action::Respond {
        status: 403,
        headers: vec![
            (
                "x-amzn-ErrorType".into(),
                format!("{kind}:http://internal.amazon.com/coral/"),
            ),
            ("content-type".into(), "application/json".into()),
        ],
        body: format!("{{\"message\":\"{message}\"}}"),
    }
}

/// A port on `ip` where nothing listens (bound, then closed).
async fn closed_port(ip: Ipv4Addr) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check_with_one_verified_probe_per_region() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &[]).await;
    run.assert_exit(0);

    let lines = run.lines();
    let mut expected = vec![("config".to_owned(), "-".to_owned())];
    expected.push(("credentials".to_owned(), "-".to_owned()));
    for region in ["eu", "fe", "na"] {
        for check in REGION_CHECKS {
            expected.push((check.to_owned(), region.to_owned()));
        }
    }
    let printed: Vec<(String, String)> = lines
        .iter()
        .map(|l| (l.name.clone(), l.region.clone()))
        .collect();
    assert_eq!(printed, expected, "{}", run.stdout);
    assert!(lines.iter().all(|l| l.ok), "{}", run.stdout);

    let credentials = run.line("credentials", "-");
    assert!(
        credentials.detail.contains("environment") && credentials.detail.contains("AKID…"),
        "{}",
        credentials.detail
    );
    assert!(credentials.detail.contains("no expiry"));
    for (key, signing_region, ip, marketplaces) in REGIONS {
        let tls = run.line("tls", key);
        assert!(
            tls.detail.contains(&format!("verified for {ip}"))
                && tls.detail.contains("prime-sigv4-proxy test CA")
                && tls.detail.contains("expires in"),
            "{}",
            tls.detail
        );
        assert!(run.line("signed_probe", key).detail.contains("GET / → 200"));
        // One probe per region, signed for that region and verified by the upstream.
        let received = upstreams.region(key).requests();
        assert_eq!(received.len(), 1, "{key}");
        let (access_key, region) = received[0].assert_signed();
        assert_eq!(
            (access_key.as_str(), region.as_str()),
            (ACCESS_KEY, signing_region)
        );
        assert_eq!(received[0].method, "GET");
        assert_eq!(received[0].path, "/");
        assert_eq!(
            received[0].header("x-amz-marketplace"),
            Some(marketplaces[0])
        );
        assert!(received[0].header("x-amz-request-id").is_some());
    }
}

#[tokio::test]
async fn without_credentials_only_the_credentials_check_fails_and_nothing_is_signed() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(clean_command(pki.dir.path()), &file, &[]).await;
    run.assert_exit(1);
    assert_eq!(
        run.failed(),
        vec![("credentials".to_owned(), "-".to_owned())],
        "{}",
        run.stdout
    );
    let credentials = run.line("credentials", "-");
    assert!(
        credentials.detail.contains("none found")
            && credentials.detail.contains("environment")
            && credentials.detail.contains("AWS_PROFILE"),
        "{}",
        credentials.detail
    );
    for key in ["na", "eu", "fe"] {
        // The clock is still measured (an unsigned request), the probe is not sent signed.
        assert!(run.line("clock", key).ok);
        let probe = run.line("signed_probe", key);
        assert!(!probe.ok);
        assert!(probe.detail.contains("no credentials"), "{}", probe.detail);
        let received = upstreams.region(key).requests();
        assert_eq!(received.len(), 1);
        assert!(received[0].header("authorization").is_none());
    }
}

#[tokio::test]
async fn a_region_whose_endpoint_refuses_connections_fails_its_connect_check() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let port = closed_port(REGIONS[1].2).await;
    let file = regions_config_file(
        &pki,
        &upstreams,
        &format!("[regions.eu]\nendpoint = \"https://127.0.0.2:{port}\"\n"),
    );
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &[]).await;
    run.assert_exit(1);
    assert_eq!(
        run.failed(),
        vec![("connect".to_owned(), "eu".to_owned())],
        "{}",
        run.stdout
    );
    let connect = run.line("connect", "eu");
    assert!(
        connect.detail.contains(&format!("127.0.0.2:{port}"))
            && connect.detail.contains("refused")
            && connect.detail.contains("regions.eu.endpoint"),
        "{}",
        connect.detail
    );
    for name in ["tls", "clock", "signed_probe"] {
        assert!(run
            .line(name, "eu")
            .detail
            .starts_with("skipped: connect failed"));
    }
    // The other regions are checked as usual.
    assert!(run.line("signed_probe", "na").ok && run.line("signed_probe", "fe").ok);
}

#[tokio::test]
async fn an_endpoint_with_an_untrusted_certificate_fails_its_tls_check_and_gets_nothing_signed() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    // eu is served by a certificate from a CA the configuration does not trust (one with the
    // same name as the trusted one: rustls then reports BadSignature, not UnknownIssuer).
    let stranger = Pki::new();
    let untrusted = FakeUpstream::start_on(
        &stranger,
        REGIONS[1].2,
        &["127.0.0.2"],
        Protocol::Http1,
        default_keys(),
    )
    .await;
    let file = regions_config_file(
        &pki,
        &upstreams,
        &format!("[regions.eu]\nendpoint = \"{}\"\n", untrusted.endpoint),
    );
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &[]).await;
    run.assert_exit(1);
    assert_eq!(
        run.failed(),
        vec![("tls".to_owned(), "eu".to_owned())],
        "{}",
        run.stdout
    );
    let tls = run.line("tls", "eu");
    assert!(
        tls.detail.contains("certificate not accepted")
            && tls.detail.contains("invalid peer certificate")
            && tls.detail.contains("upstream.ca_file"),
        "{}",
        tls.detail
    );
    assert_eq!(
        untrusted.count(),
        0,
        "nothing goes to an untrusted endpoint"
    );
    assert!(run.line("signed_probe", "na").ok);
}

#[tokio::test]
async fn an_endpoint_whose_date_is_15_minutes_ahead_fails_the_clock_check() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let ahead = SystemTime::now() + Duration::from_secs(15 * 60);
    upstreams.na.push([Action::with_header(
        200,
        "date",
        &httpdate::fmt_http_date(ahead),
    )]);
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &[]).await;
    run.assert_exit(1);
    assert_eq!(
        run.failed(),
        vec![("clock".to_owned(), "na".to_owned())],
        "{}",
        run.stdout
    );
    let clock = run.line("clock", "na");
    assert!(
        clock.detail.contains("15 min behind") && clock.detail.contains("NTP"),
        "{}",
        clock.detail
    );
    assert!(run.line("clock", "eu").detail.contains("in step"));
}

#[tokio::test]
async fn a_403_invalid_signature_fails_the_probe_with_the_request_logs_words() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    // API Gateway's real message quotes the canonical request: never shown.
    upstreams.fe.push([forbidden(
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided.",
    )]);
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &[]).await;
    run.assert_exit(1);
    assert_eq!(
        run.failed(),
        vec![("signed_probe".to_owned(), "fe".to_owned())],
        "{}",
        run.stdout
    );
    let probe = run.line("signed_probe", "fe");
    assert!(
        probe.detail.contains("403 InvalidSignatureException")
            && probe.detail.contains("clock skew")
            && probe.detail.contains("signing_region"),
        "{}",
        probe.detail
    );
    assert!(!probe.detail.contains("we calculated"), "{}", probe.detail);
}

#[tokio::test]
async fn a_403_access_denied_fails_the_probe_naming_the_permission_in_text_and_json() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let message = "User is not authorized to access this resource";
    upstreams
        .eu
        .push([forbidden("AccessDeniedException", message)]);
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &[]).await;
    run.assert_exit(1);
    assert_eq!(
        run.failed(),
        vec![("signed_probe".to_owned(), "eu".to_owned())],
        "{}",
        run.stdout
    );
    let probe = run.line("signed_probe", "eu");
    assert!(
        probe.detail.contains("403 AccessDeniedException")
            && probe.detail.contains("execute-api:Invoke")
            && probe.detail.contains(message),
        "{}",
        probe.detail
    );

    upstreams
        .eu
        .push([forbidden("AccessDeniedException", message)]);
    let json = doctor_with(command_with_static_key(pki.dir.path()), &file, &["--json"]).await;
    json.assert_exit(1);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let failed: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|check| check["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{}", json.stdout);
    assert_eq!(failed[0]["name"], "signed_probe");
    assert_eq!(failed[0]["region"], "eu");
    assert!(failed[0]["detail"]
        .as_str()
        .unwrap()
        .contains("execute-api:Invoke"));
}

#[tokio::test]
async fn json_output_has_the_specs_shape() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(command_with_static_key(pki.dir.path()), &file, &["--json"]).await;
    run.assert_exit(0);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let top: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(top, ["checks", "ok"]);
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2 + 3 * REGION_CHECKS.len());
    for check in checks {
        let keys: Vec<&String> = check.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["detail", "name", "ok", "region"], "{check}");
        assert!(
            check["detail"].is_string() && check["ok"] == true,
            "{check}"
        );
        let name = check["name"].as_str().unwrap();
        if name == "config" || name == "credentials" {
            assert!(check["region"].is_null(), "{check}");
        } else {
            assert!(REGION_CHECKS.contains(&name), "{check}");
            assert!(["na", "eu", "fe"].contains(&check["region"].as_str().unwrap()));
        }
    }
}

#[tokio::test]
async fn marketplace_selects_the_one_region_that_serves_it() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &upstreams, "");
    let run = doctor_with(
        command_with_static_key(pki.dir.path()),
        &file,
        &["--marketplace", "jp"],
    )
    .await;
    run.assert_exit(0);
    let regions: Vec<String> = run.lines().into_iter().map(|l| l.region).collect();
    let mut expected = vec!["-".to_owned(), "-".to_owned()];
    expected.extend(std::iter::repeat_n("fe".to_owned(), REGION_CHECKS.len()));
    assert_eq!(regions, expected, "{}", run.stdout);
    assert_eq!((upstreams.na.count(), upstreams.eu.count()), (0, 0));
    let received = upstreams.fe.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].assert_signed().1, "us-west-2");
    assert_eq!(received[0].header("x-amz-marketplace"), Some("jp"));

    let unknown = doctor_with(
        command_with_static_key(pki.dir.path()),
        &file,
        &["--marketplace", "ZZ"],
    )
    .await;
    unknown.assert_exit(2);
    assert!(unknown.line("config", "-").detail.contains("ZZ"));
    assert_eq!(upstreams.count(), 1, "nothing more was sent");
}

#[tokio::test]
async fn an_invalid_configuration_exits_2_naming_the_key_and_checks_nothing_else() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    for (extra, key) in [
        ("[retry]\nmax_attempts = 0\n", "retry.max_attempts"),
        ("[upstream]\nbogus_key = 1\n", "upstream.bogus_key"),
    ] {
        let file = regions_config_file(&pki, &upstreams, extra);
        for json in [false, true] {
            let args: &[&str] = if json { &["--json"] } else { &[] };
            let run = doctor_with(command_with_static_key(pki.dir.path()), &file, args).await;
            run.assert_exit(2);
            assert!(run.stdout.contains(key), "{}", run.stdout);
            if json {
                let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                assert_eq!(report["ok"], false);
                assert_eq!(report["checks"].as_array().unwrap().len(), 1);
                assert_eq!(report["checks"][0]["name"], "config");
            } else {
                assert_eq!(run.lines().len(), 1, "{}", run.stdout);
                assert!(!run.line("config", "-").ok);
            }
        }
    }
    assert_eq!(upstreams.count(), 0);
}

#[tokio::test]
async fn no_secret_session_token_signature_or_lwa_token_is_ever_printed() {
    let pki = Pki::new();
    let upstreams = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &upstreams, "");
    let probe = format!("/v1/benefits?customerIdentifier={LWA_TOKEN_CANONICAL}");
    let mut outputs = Vec::new();
    for json in [false, true] {
        // A 403 on one region, so that the failure path prints too.
        upstreams.na.push([forbidden(
            "InvalidSignatureException",
            &format!("The Canonical String for this request should have been 'GET /v1/benefits customerIdentifier={LWA_TOKEN_CANONICAL}'"),
        )]);
        let mut command = command_with_static_key(pki.dir.path());
        command.env("AWS_SESSION_TOKEN", SESSION_TOKEN);
        let mut args = vec!["--probe-path", probe.as_str()];
        if json {
            args.push("--json");
        }
        let run = doctor_with(command, &file, &args).await;
        run.assert_exit(1);
        outputs.push(format!("{}\n{}", run.stdout, run.stderr));
    }
    // The probe went out with the token, signed (what is signed is what is sent).
    let received = upstreams.eu.requests();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].query,
        format!("customerIdentifier={LWA_TOKEN_CANONICAL}")
    );
    received[0].assert_signed();
    assert_eq!(
        received[0].header("x-amz-security-token"),
        Some(SESSION_TOKEN)
    );
    for output in outputs {
        for secret in [
            SECRET_KEY,
            SESSION_TOKEN,
            ACCESS_KEY,
            LWA_TOKEN,
            LWA_TOKEN_CANONICAL,
            "Atza",
            "Signature=",
            "AWS4-HMAC-SHA256",
        ] {
            assert!(!output.contains(secret), "{secret} printed in:\n{output}");
        }
        assert!(output.contains("GET /v1/benefits"), "{output}");
    }
}
