//! The command line as operators meet it: `--check-config`, exit statuses, messages that
//! name the key, and the environment layered over the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prime-sigv4-proxy"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn write(dir: &tempfile::TempDir, toml: &str) -> String {
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_prints_the_merged_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "[regions.na]\nendpoint = \"https://na.example\"\n[credentials]\nrole_arn = \"arn:aws:iam::123456789012:role/prime\"\nexternal_id = \"ext-secret-123\"\n",
    );
    let out = proxy(
        &["--check-config", "--config", &file],
        &[("PRIME_PROXY_RETRY__MAX_ATTEMPTS", "5")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains("ext-secret-123"));
    let merged: toml::Value = toml::from_str(&printed).unwrap();
    assert_eq!(
        merged["regions"]["na"]["endpoint"].as_str(),
        Some("https://na.example")
    );
    assert_eq!(
        merged["regions"]["na"]["signing_region"].as_str(),
        Some("us-east-1")
    );
    assert_eq!(
        merged["regions"]["eu"]["endpoint"].as_str(),
        Some("https://prime-apis.amazon.eu")
    );
    assert_eq!(merged["retry"]["max_attempts"].as_integer(), Some(5));
    assert_eq!(
        merged["credentials"]["external_id"].as_str(),
        Some("<redacted>")
    );
    assert_eq!(merged["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(merged["admin_listen"].as_str(), Some("127.0.0.1:9901"));
}

#[test]
fn check_config_without_a_file_shows_the_built_in_defaults() {
    let out = proxy(&["--check-config"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let merged: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(
        merged["regions"]["fe"]["signing_region"].as_str(),
        Some("us-west-2")
    );
    assert_eq!(merged["signing"]["service"].as_str(), Some("execute-api"));
}

#[test]
fn bad_configurations_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("unknown_key = true\n", &[], "unknown_key"),
        (
            "[upstream]\nconect_timeout_ms = 5\n",
            &[],
            "upstream.conect_timeout_ms",
        ),
        ("listen = \"localhost\"\n", &[], "listen"),
        (
            "[regions.eu]\nendpoint = \"http://prime-apis.amazon.eu\"\n",
            &[],
            "regions.eu.endpoint",
        ),
        (
            "[regions.fe]\nmarketplaces = [\"JP\", \"DE\"]\n",
            &[],
            "marketplaces",
        ),
        (
            "",
            &[("PRIME_PROXY_RETRY__MAX_ATTEMPTS", "many")],
            "retry.max_attempts",
        ),
        (
            "",
            &[("PRIME_PROXY_ADMIN_LISTEN", "nowhere:x")],
            "admin_listen",
        ),
        ("", &[("PRIME_PROXY_NOT_A_KEY", "1")], "not_a_key"),
    ];
    for (toml, env, key) in cases {
        let file = write(&dir, toml);
        for args in [
            vec!["--check-config", "--config", &file],
            vec!["--config", &file],
        ] {
            let out = proxy(&args, env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{toml:?} {env:?}: {stderr}");
            assert!(
                stderr.contains(key),
                "{toml:?} {env:?}: {stderr:?} does not name {key}"
            );
        }
    }
    let out = proxy(&["--config", "/nonexistent/proxy.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.toml"));
}

#[test]
fn unknown_arguments_are_refused_with_usage() {
    let out = proxy(&["--bogus"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
