//! The command line as operators meet it: `--check-config`, exit statuses, messages that
//! name the key, and the environment layered over the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{clean_command, client, config_file, get, FakeUpstream, Pki, ProxyProcess};

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
        (
            "[listener]\nmax_in_flight = 4611686018427387904\n",
            &[],
            "listener.max_in_flight",
        ),
        (
            "",
            &[(
                "PRIME_PROXY_RATE_LIMIT__MAX_WAITING",
                "18446744073709551615",
            )],
            "rate_limit.max_waiting",
        ),
        ("", &[("PRIME_PROXY_ADMIN_PORT", "9901")], "admin_port"),
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

/// What the kubelet injects into every pod of a namespace for a Service (pkg/kubelet/envvars):
/// `<NAME>_SERVICE_HOST`, `_SERVICE_PORT`, `_SERVICE_PORT_<PORT NAME>`, `_PORT` and the
/// Docker-style `_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`.
fn service_links(service: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Vec<(String, String)> {
    let name = service.replace('-', "_").to_uppercase();
    let mut vars = vec![
        (format!("{name}_SERVICE_HOST"), cluster_ip.to_owned()),
        (format!("{name}_SERVICE_PORT"), ports[0].1.to_string()),
        (
            format!("{name}_PORT"),
            format!("tcp://{cluster_ip}:{}", ports[0].1),
        ),
    ];
    for (port_name, port) in ports {
        let base = format!("{name}_PORT_{port}_TCP");
        vars.extend([
            (
                format!("{name}_SERVICE_PORT_{}", port_name.to_uppercase()),
                port.to_string(),
            ),
            (base.clone(), format!("tcp://{cluster_ip}:{port}")),
            (format!("{base}_PROTO"), "tcp".to_owned()),
            (format!("{base}_PORT"), port.to_string()),
            (format!("{base}_ADDR"), cluster_ip.to_owned()),
        ]);
    }
    vars
}

/// A namespace with a Service `prime-proxy`, a Service `prime-sigv4-proxy`, and the chart's own
/// Service for release `prime-proxy` (`prime-proxy-prime-sigv4-proxy`), plus the API server's.
fn namespace_links() -> Vec<(String, String)> {
    let mut vars = service_links("prime-proxy", "10.96.0.12", &[("http", 8080)]);
    vars.extend(service_links(
        "prime-sigv4-proxy",
        "10.96.0.13",
        &[("http", 8080), ("admin", 9901)],
    ));
    vars.extend(service_links(
        "prime-proxy-prime-sigv4-proxy",
        "10.96.0.14",
        &[("http", 8080), ("admin", 9901)],
    ));
    vars.extend(service_links("kubernetes", "10.96.0.1", &[("https", 443)]));
    vars
}

#[test]
fn check_config_accepts_the_service_links_a_namespace_injects() {
    let vars = namespace_links();
    for expected in [
        "PRIME_PROXY_PORT",
        "PRIME_PROXY_SERVICE_HOST",
        "PRIME_PROXY_PRIME_SIGV4_PROXY_SERVICE_PORT_HTTP",
        "PRIME_PROXY_PRIME_SIGV4_PROXY_PORT_9901_TCP_ADDR",
    ] {
        assert!(vars.iter().any(|(name, _)| name == expected), "{expected}");
    }
    let env: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let out = proxy(&["--check-config"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(merged["listen"].as_str(), Some("127.0.0.1:8080"));

    // A typo among them is still refused, naming it.
    let mut with_typo = env.clone();
    with_typo.push(("PRIME_PROXY_RETRY__MAX_ATEMPTS", "5"));
    let out = proxy(&["--check-config"], &with_typo);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retry.max_atempts"), "{stderr}");
    assert!(!stderr.contains("service_host"), "{stderr}");
}

#[tokio::test]
async fn the_binary_serves_with_the_service_links_a_namespace_injects() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let mut command = clean_command(pki.dir.path());
    command
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY);
    for (name, value) in namespace_links() {
        command.env(name, value);
    }
    let proxy = ProxyProcess::start(command, &config_file(&pki, &upstream, "")).await;
    let client = client();
    let health = get(&client, &format!("http://{}/healthz", proxy.admin), &[]).await;
    assert_eq!(health.status, 200);
    let reply = get(&client, &proxy.url("/v1/a"), &[("x-amz-marketplace", "US")]).await;
    assert_eq!(reply.status, 200, "{}", proxy.logs());
    assert_eq!(upstream.count(), 1);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// The binary's log lines at WARN that mention `tls.client_ca_file`.
fn open_listener_warnings(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["level"] == "WARN"
                && line["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("tls.client_ca_file"))
        })
        .collect()
}

#[test]
fn a_listener_others_can_reach_without_client_certificates_logs_one_warning() {
    // 192.0.2.1 (TEST-NET-1) is on no interface: the warning is logged, then binding fails
    // (exit 1) before anything listens beyond loopback.
    let out = proxy(
        &[],
        &[
            ("PRIME_PROXY_LISTEN", "192.0.2.1:8080"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let warnings = open_listener_warnings(&stdout);
    assert_eq!(warnings.len(), 1, "{stdout}");
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(message.contains("192.0.2.1:8080"), "{message}");
    assert!(message.contains("not a loopback address"), "{message}");
}

#[tokio::test]
async fn a_loopback_listener_logs_no_such_warning() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let proxy = ProxyProcess::start(
        clean_command(pki.dir.path()),
        &config_file(&pki, &upstream, ""),
    )
    .await;
    let health = get(&client(), &format!("http://{}/healthz", proxy.admin), &[]).await;
    assert_eq!(health.status, 200);
    let logs = proxy.logs();
    assert_eq!(proxy.terminate().await.code(), Some(0));
    assert!(logs.contains("prime-sigv4-proxy serving"));
    assert!(open_listener_warnings(&logs).is_empty(), "{logs}");
}
