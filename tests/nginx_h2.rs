//! `upstream.http2 = true` against real nginx (Debian's package; `.ci/run` installs it) over
//! h2: nginx terminates TLS with an rcgen certificate on 127.0.0.2, allows
//! 4 concurrent streams per connection, and proxies over HTTPS/1.1 to a verifying upstream on
//! 127.0.0.1, so every signature is still checked. nginx refuses a `host` header beside
//! `:authority` ("client sent duplicate host header", 400), shows whether the proxy opens
//! more connections at the stream limit, and sends GOAWAY when reloaded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const NGINX: &str = "/usr/sbin/nginx";
/// nginx's `http2_max_concurrent_streams`.
const STREAMS: usize = 4;

/// nginx in front of a verifying upstream, and the proxy pointed at nginx.
struct Setup {
    _pki: Pki,
    upstream: FakeUpstream,
    nginx: Nginx,
    proxy: TestProxy,
}

struct Nginx {
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx on 127.0.0.2 (a port the OS had free), proxying to `upstream`.
    async fn start(pki: &Pki, upstream: &FakeUpstream) -> Self {
        assert!(
            std::path::Path::new(NGINX).exists(),
            "{NGINX} is missing: apt-get install nginx (as .ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(127, 0, 0, 2);
        // nginx cannot listen on port 0: take a port the OS hands out, and give it back.
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let leaf = pki.leaf(&["127.0.0.2"]);
        let d = dir.path().display();
        std::fs::write(dir.path().join("nginx.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("nginx.key"), &leaf.key_pem).unwrap();
        let conf = dir.path().join("nginx.conf");
        let to = upstream.addr;
        let ca = pki.ca_file.display();
        std::fs::write(
            &conf,
            format!(
                r#"
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream verifying {{
        server {to};
        keepalive 64;
    }}
    server {{
        listen {ip}:{port} ssl http2;
        ssl_certificate {d}/nginx.crt;
        ssl_certificate_key {d}/nginx.key;
        http2_max_concurrent_streams {STREAMS};
        location / {{
            proxy_pass https://verifying;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What the proxy signed as `host`: the authority it sent.
            proxy_set_header Host $host:$server_port;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_read_timeout 30s;
        }}
    }}
}}
"#
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = SocketAddr::from((ip, port));
        let nginx = Self {
            dir,
            conf,
            child,
            addr,
        };
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .await;
        assert!(up, "nginx did not listen on {addr}: {}", nginx.error_log());
        nginx
    }

    fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `nginx -s reload`: new workers; the old ones send GOAWAY and finish what they hold.
    async fn reload(&self) {
        let status = tokio::process::Command::new(NGINX)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "reload"])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "nginx -s reload: {status}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn setup(extra: &str) -> Setup {
    let pki = Pki::new();
    let upstream = FakeUpstream::start_on(
        &pki,
        Ipv4Addr::LOCALHOST,
        // nginx checks a DNS name only (not an IP SAN).
        &["127.0.0.1", "localhost"],
        Protocol::Http1,
        default_keys(),
    )
    .await;
    let nginx = Nginx::start(&pki, &upstream).await;
    // Every region through nginx (only `US` is asked for).
    let mut config = config_for(&upstream, &pki);
    for region in config.regions.values_mut() {
        region.endpoint = nginx.endpoint();
    }
    config.upstream.http2 = true;
    let config = config_with(&config, extra);
    let proxy = start_proxy(config).await;
    Setup {
        _pki: pki,
        upstream,
        nginx,
        proxy,
    }
}

/// Each request nginx passed on carried a valid signature over nginx's own authority.
#[track_caller]
fn assert_signed_through_nginx(setup: &Setup) {
    let authority = setup.nginx.addr.to_string();
    for received in setup.upstream.requests() {
        let (_, region) = received.assert_signed();
        assert_eq!(region, "us-east-1");
        assert_eq!(received.authority, authority);
    }
}

#[tokio::test]
async fn nginx_over_h2_gets_no_duplicate_host_header_and_every_signature_verifies() {
    let setup = setup("").await;
    let client = keep_alive_client();
    for i in 0..8 {
        let reply = get(
            &client,
            &setup
                .proxy
                .url(&format!("/v1/benefits?customerIdentifier=Atza%7C{i}")),
            &[("x-amz-marketplace", "US")],
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "{i}: {:?} {}",
            reply.body,
            setup.nginx.error_log()
        );
    }
    assert_eq!(setup.upstream.count(), 8);
    assert_signed_through_nginx(&setup);
    let log = setup.nginx.error_log();
    assert!(!log.contains("duplicate host header"), "{log}");
    setup.proxy.stop().await;
}

#[tokio::test]
async fn nginx_at_its_stream_limit_gets_more_connections_instead_of_a_queue() {
    // 32 requests, 4 streams per connection, up to 8 connections: one round.
    let setup = setup("[upstream]\nhttp2_max_connections = 8\nattempt_timeout_ms = 20000").await;
    const ROUND: Duration = Duration::from_millis(1_000);
    setup.upstream.push((0..32).map(|_| Action::Sleep(ROUND)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let url = setup.proxy.url(&format!("/v1/burst/{i}"));
            tokio::spawn(async move { get(&client(), &url, &[("x-amz-marketplace", "US")]).await })
        })
        .collect();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let took = started.elapsed();
    // On one connection nginx holds 4 at a time: eight rounds.
    assert!(took >= ROUND, "{took:?}");
    assert!(
        took < 2 * ROUND + Duration::from_millis(1_000),
        "{took:?}: the requests queued on too few connections"
    );
    let metrics = setup.proxy.metrics().await;
    let open = metric_value(&metrics, "prime_proxy_upstream_connections{region=\"na\"}").unwrap();
    assert_eq!(
        open,
        (32 / STREAMS) as f64,
        "one per 4 streams, within the cap"
    );
    assert_eq!(setup.upstream.count(), 32);
    assert_signed_through_nginx(&setup);
    setup.proxy.stop().await;
}

#[tokio::test]
async fn nginx_reloaded_mid_run_fails_no_request() {
    // No retries: a request nginx's GOAWAY left unprocessed must be sent again without
    // counting as a failed attempt.
    let setup = setup("[retry]\nmax_attempts = 1\n[upstream]\nhttp2_max_connections = 8").await;
    // Keep streams in flight while nginx reloads.
    setup
        .upstream
        .push((0..2_000).map(|_| Action::Sleep(Duration::from_millis(20))));
    let stop_at = Instant::now() + Duration::from_millis(3_000);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let url = setup.proxy.url(&format!("/v1/reload/{w}"));
            tokio::spawn(async move {
                let client = keep_alive_client();
                let mut sent = 0;
                let mut failed = Vec::new();
                while Instant::now() < stop_at && sent < 1_000 {
                    let reply = get(&client, &url, &[("x-amz-marketplace", "US")]).await;
                    if reply.status != 200 {
                        failed.push((reply.status, reply.body));
                    }
                    sent += 1;
                }
                (sent, failed)
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        setup.nginx.reload().await;
    }
    let mut total = 0;
    for worker in workers {
        let (sent, failed) = worker.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed, the first: {:?}",
            failed.len(),
            failed.first()
        );
        total += sent;
    }
    assert!(total > 100, "only {total} requests");
    // The old workers did shut down gracefully (GOAWAY to each of their connections).
    let shut_down = eventually(Duration::from_secs(10), || {
        setup
            .nginx
            .error_log()
            .matches("gracefully shutting down")
            .count()
            >= 3
    })
    .await;
    assert!(shut_down, "{}", setup.nginx.error_log());
    assert_eq!(setup.upstream.count(), total);
    // Some streams met a GOAWAY or a connection already closing, and were sent again
    // within their one attempt.
    let metrics = setup.proxy.metrics().await;
    let replays: f64 = ["goaway", "not_sent"]
        .iter()
        .filter_map(|reason| {
            metric_value(
                &metrics,
                &format!(
                    "prime_proxy_upstream_unprocessed_replays_total{{region=\"na\",reason=\"{reason}\"}}"
                ),
            )
        })
        .sum();
    assert!(
        replays >= 1.0,
        "the reloads never caught a stream in flight"
    );
    assert_signed_through_nginx(&setup);
    setup.proxy.stop().await;
}
