//! `[upstream.headers]` (SPEC): static headers added to every upstream
//! attempt, retries included, and signed; a name the proxy sets itself is refused at start,
//! naming the key. The key is set through TOML (`config_with`, a config file), so these tests
//! fail at run time, saying which key the proxy does not know, until it does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

const EXTRA: &str = "[upstream.headers]\n\"x-prime-extra\" = \"v1\"\n";

#[tokio::test]
async fn static_headers_go_on_every_attempt_to_every_region_and_are_signed() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let config = config_with(&config_for_regions(&ups, &pki), EXTRA);
    let proxy = start_proxy(config).await;
    let client = keep_alive_client();
    // A retry in each region: the header is on the retried attempt too.
    for upstream in ups.all() {
        upstream.push([Action::status(503)]);
    }
    for marketplace in ["US", "DE", "JP", "CA", "FR", "SG"] {
        let reply = get(
            &client,
            &proxy.url("/v1/benefits?customerIdentifier=Atza%7Cx"),
            &[("x-amz-marketplace", marketplace)],
        )
        .await;
        assert_eq!(reply.status, 200, "{marketplace}: {:?}", reply.body);
    }
    assert_eq!(
        (ups.na.count(), ups.eu.count(), ups.fe.count()),
        (3, 3, 3),
        "a 503 and its retry, then one more request, per region"
    );
    for (key, signing_region, _, _) in REGIONS {
        for attempt in ups.region(key).requests() {
            let (_, region) = attempt.assert_signed();
            assert_eq!(region, signing_region);
            assert_eq!(attempt.header("x-prime-extra"), Some("v1"), "{key}");
            assert_eq!(attempt.header_count("x-prime-extra"), 1, "{key}");
            let signed = attempt.signed_headers();
            assert!(
                signed.iter().any(|s| s == "x-prime-extra"),
                "{key}: x-prime-extra not in SignedHeaders {signed:?}"
            );
        }
    }
    proxy.stop().await;
}

fn check_config(dir: &std::path::Path, toml: &str) -> std::process::Output {
    let file = dir.join("check.toml");
    std::fs::write(&file, toml).unwrap();
    Command::new(binary())
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_static_header_and_refuses_the_proxy_own_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(dir.path(), EXTRA);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(
        printed["upstream"]["headers"]["x-prime-extra"].as_str(),
        Some("v1")
    );
    for name in [
        "x-amz-date",
        "host",
        "authorization",
        "Authorization",
        "x-amz-security-token",
        "x-amz-content-sha256",
    ] {
        let toml = format!("[upstream.headers]\n{name:?} = \"mine\"\n");
        let out = check_config(dir.path(), &toml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("upstream.headers"),
            "{name}: {stderr:?} does not name upstream.headers"
        );
        assert!(
            stderr
                .to_ascii_lowercase()
                .contains(&name.to_ascii_lowercase()),
            "{name}: {stderr:?} does not say which header"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
