//! The real binary's log output as an operator meets it: a stdout pipe nobody reads never
//! holds up a request, text logs carry no colour codes outside a terminal, and the first
//! screen without credentials is one clear line instead of the AWS SDK's error dumps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The binary started with its stdout in a pipe that this test reads only when it wants to.
struct Started {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The lines read so far.
    read: Vec<String>,
}

impl Started {
    /// Spawns the binary and reads stdout up to the line for which `serving` is true.
    async fn spawn(
        mut command: tokio::process::Command,
        config: &std::path::Path,
        serving: impl Fn(&str) -> bool,
    ) -> Self {
        command
            .arg("--config")
            .arg(config)
            .env("PRIME_PROXY_LISTEN", "127.0.0.1:0")
            .env("PRIME_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut started = Self {
            child,
            stdout,
            read: Vec::new(),
        };
        let found = started
            .read_until(Duration::from_secs(20), |line| serving(line))
            .await;
        assert!(found.is_some(), "no serving line in {:?}", started.read);
        started
    }

    /// Reads lines until `wanted` holds for one (returned) or `within` passes.
    async fn read_until(
        &mut self,
        within: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .ok()?
                .ok()??;
            self.read.push(line.clone());
            if wanted(&line) {
                return Some(line);
            }
        }
    }

    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        // Read on, so that the last lines written at exit never wait on this pipe.
        let mut stdout = self.stdout;
        let drain =
            tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        drain.abort();
        status
    }
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

fn address(line: &serde_json::Value, field: &str) -> std::net::SocketAddr {
    line[field].as_str().unwrap().parse().unwrap()
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

const CLIENTS: usize = 5;
const REQUESTS_PER_CLIENT: usize = 4_000;
const REPORT: &str = "log lines dropped: stdout was not being read";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_pipe_nobody_reads_never_holds_up_a_request() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let command = command_with_static_key(pki.dir.path());
    let config = config_file(&pki, &upstream, "");
    let mut proxy = Started::spawn(command, &config, |line| {
        json(line)["message"] == "prime-sigv4-proxy serving"
    })
    .await;
    let serving = json(proxy.read.last().unwrap());
    let (listen, admin) = (
        address(&serving, "listen"),
        address(&serving, "admin_listen"),
    );

    // From here on nobody reads the proxy's stdout: the pipe fills, then the writer thread
    // blocks on it, then the backlog fills.
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let client = client();
                let url = format!("http://{listen}/v1/benefits");
                let mut slowest = Duration::ZERO;
                for _ in 0..REQUESTS_PER_CLIENT {
                    let sent = Instant::now();
                    let request = http::Request::get(&url)
                        .header("x-amz-marketplace", "US")
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    let reply =
                        tokio::time::timeout(Duration::from_secs(5), send(&client, request))
                            .await
                            .expect("no answer within 5 s while stdout is not read");
                    assert_eq!(reply.status, 200, "{:?}", reply.body);
                    slowest = slowest.max(sent.elapsed());
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for client in clients {
        slowest = slowest.max(client.await.unwrap());
    }
    let took = started.elapsed();
    let requests = CLIENTS * REQUESTS_PER_CLIENT;
    assert_eq!(upstream.count(), requests);
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?} while stdout was not read"
    );
    let metrics = get(&client(), &format!("http://{admin}/metrics"), &[]).await;
    let dropped = counter(
        std::str::from_utf8(&metrics.body).unwrap(),
        "prime_proxy_log_lines_dropped_total",
    );
    assert!(dropped > 0, "nothing dropped: the pipe never stalled?");
    println!(
        "{requests} requests in {took:?} ({CLIENTS} keep-alive clients) with stdout not read: \
         slowest {slowest:?}, {dropped} log lines dropped"
    );

    // Now stdout is read again: what was kept comes out, then one line for the gap.
    let report = proxy
        .read_until(Duration::from_secs(30), |line| {
            json(line)["message"] == REPORT
        })
        .await
        .unwrap_or_else(|| panic!("no report line after {} lines", proxy.read.len()));
    let report = json(&report);
    assert_eq!(report["level"], "WARN");
    assert_eq!(report["dropped"], dropped, "{report}");
    let since = report["since"].as_str().unwrap();
    assert!(since.ends_with('Z') && since.len() == 27, "{since}");
    let request_lines = proxy
        .read
        .iter()
        .filter(|line| json(line)["message"] == "request")
        .count();
    assert!(request_lines > 0);
    assert_eq!(
        request_lines as u64 + dropped,
        requests as u64,
        "every request line was either written or counted as dropped"
    );
    // Logging goes on after the gap.
    let reply = get(
        &client(),
        &format!("http://{listen}/v1/after"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let after = proxy
        .read_until(Duration::from_secs(10), |line| {
            json(line)["path"] == "/v1/after"
        })
        .await;
    assert!(after.is_some(), "the request after the gap is logged");
    let reports = proxy
        .read
        .iter()
        .filter(|line| json(line)["message"] == REPORT)
        .count();
    assert_eq!(reports, 1);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn text_logs_into_a_pipe_have_no_colour_codes() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let mut command = command_with_static_key(pki.dir.path());
    command.env("PRIME_PROXY_LOG_FORMAT", "text");
    let config = config_file(&pki, &upstream, "");
    let mut proxy = Started::spawn(command, &config, |line| {
        line.contains("prime-sigv4-proxy serving")
    })
    .await;
    let serving = proxy.read.last().unwrap().clone();
    for line in &proxy.read {
        assert!(!line.contains("\x1b["), "colour codes in a pipe: {line:?}");
    }
    let listen = serving
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .unwrap()
        .to_owned();
    let reply = get(
        &client(),
        &format!("http://{listen}/v1/text"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let line = proxy
        .read_until(Duration::from_secs(10), |line| line.contains("/v1/text"))
        .await
        .expect("the request line");
    assert!(
        line.contains("INFO") && line.contains("status=200"),
        "{line}"
    );
    assert!(serving.contains(" INFO "), "text format: {serving}");
    for line in &proxy.read {
        assert!(!line.contains("\x1b["), "colour codes in a pipe: {line:?}");
    }
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `clean_command`, but with IMDS enabled and refusing connections, as on a laptop.
fn laptop_command(home: &std::path::Path) -> tokio::process::Command {
    let mut command = clean_command(home);
    command.env_remove("AWS_EC2_METADATA_DISABLED").env(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{}", closed_port()),
    );
    command
}

const NO_CREDENTIALS: &str = "no AWS credentials";
const LONGEST_LINE: usize = 700;

#[tokio::test]
async fn without_credentials_the_first_screen_is_one_clear_line() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let proxy = ProxyProcess::start(
        laptop_command(pki.dir.path()),
        &config_file(&pki, &upstream, ""),
    )
    .await;
    let reply = get(
        &client(),
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    reply.assert_error(503, "credentials_unavailable");
    // Several retries happen meanwhile (0.5 s, 1 s, 2 s backoff).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let logs = proxy.logs();
    let lines: Vec<serde_json::Value> = logs.lines().map(json).collect();
    let about: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with(NO_CREDENTIALS)
        })
        .collect();
    assert_eq!(about.len(), 1, "one line, not one per retry:\n{logs}");
    let line = about[0];
    assert_eq!(line["level"], "WARN");
    let text = line.to_string();
    assert!(text.len() < LONGEST_LINE, "{} bytes: {text}", text.len());
    let tried = line["tried"].as_str().unwrap();
    for source in [
        "environment",
        "profile",
        "IRSA",
        "Pod Identity",
        "EC2 instance metadata",
    ] {
        assert!(tried.contains(source), "{source} not in {tried}");
    }
    let how = line["provide_with"].as_str().unwrap();
    for way in ["AWS_PROFILE", "AWS_ACCESS_KEY_ID", "IRSA", "Pod Identity"] {
        assert!(how.contains(way), "{way} not in {how}");
    }
    for line in logs.lines() {
        assert!(line.len() < LONGEST_LINE, "a long line: {line}");
        assert!(
            !line.contains("IMDS"),
            "SDK internals on the first screen: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| !l["target"].as_str().unwrap_or_default().starts_with("aws_")),
        "the SDK's own lines show only at debug:\n{logs}"
    );
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn the_sdk_lines_are_there_at_debug() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let mut command = laptop_command(pki.dir.path());
    command.env("RUST_LOG", "info,aws_config=debug");
    let proxy = ProxyProcess::start(command, &config_file(&pki, &upstream, "")).await;
    let found = eventually(Duration::from_secs(10), || {
        proxy.logs().lines().map(json).any(|l| {
            l["level"] == "WARN"
                && l["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("aws_config"))
        })
    })
    .await;
    assert!(found, "{}", proxy.logs());
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn one_line_when_credentials_arrive_after_a_time_without() {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    upstream.accept_key("ASIALATECOMER", "late/secret");
    let available = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(0usize));
    let (endpoint, _task) = {
        let available = Arc::clone(&available);
        let calls = Arc::clone(&calls);
        http_endpoint(move |_method, _target, _headers, _body| {
            *calls.lock().unwrap() += 1;
            if !available.load(Ordering::SeqCst) {
                return (
                    404,
                    "{\"message\":\"no association for this pod yet\"}".into(),
                );
            }
            let body = serde_json::json!({
                "AccessKeyId": "ASIALATECOMER",
                "SecretAccessKey": "late/secret",
                "Token": "late-token",
                "Expiration": iso8601(SystemTime::now() + Duration::from_secs(3600)),
            });
            (200, body.to_string())
        })
        .await
    };
    let mut command = laptop_command(pki.dir.path());
    command.env(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{}/v1/credentials", endpoint.port()),
    );
    let proxy = ProxyProcess::start(command, &config_file(&pki, &upstream, "")).await;
    let count = |message: &str| {
        proxy
            .logs()
            .lines()
            .map(json)
            .filter(|l| {
                l["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(message)
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || count(NO_CREDENTIALS) == 1).await,
        "{}",
        proxy.logs()
    );
    // A few more failed fetches, then the endpoint starts answering.
    assert!(eventually(Duration::from_secs(10), || *calls.lock().unwrap() >= 3).await);
    available.store(true, Ordering::SeqCst);
    let found = "AWS credentials found";
    assert!(
        eventually(Duration::from_secs(20), || count(found) == 1).await,
        "{}",
        proxy.logs()
    );
    let reply = get(
        &client(),
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let (key, _) = upstream.requests().pop().unwrap().assert_signed();
    assert_eq!(key, "ASIALATECOMER");
    assert_eq!(count(NO_CREDENTIALS), 1, "{}", proxy.logs());
    assert_eq!(count(found), 1);
    for line in proxy.logs().lines() {
        assert!(line.len() < LONGEST_LINE, "a long line: {line}");
        assert!(!line.contains("late/secret") && !line.contains("late-token"));
    }
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

/// Reads one HTTP/1.1 response with a Content-Length body from `stream`: its status.
async fn read_response(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed after {bytes:?}");
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_requests_logged_duration_starts_at_its_first_byte_not_at_the_parsed_head() {
    use tokio::io::AsyncWriteExt;
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let file = regions_config_file(&pki, &ups, "");
    let proxy = ProxyProcess::start(command_with_static_key(pki.dir.path()), &file).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // A connection that sits idle before its first request: the wait is not the request's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"GET /v1/a HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nx-amz-request-id: idle-first\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await, 200);
    // The next request on the keep-alive connection arrives in two parts, 400 ms apart:
    // its client has been waiting since the first part, and so has its duration.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(b"GET /v1/b HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream
        .write_all(b"x-amz-marketplace: DE\r\nx-amz-request-id: split-head\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await, 200);

    let duration = |id: &'static str| {
        let proxy = &proxy;
        async move {
            proxy.request_line(|l| l["request_id"] == id).await["duration_ms"]
                .as_f64()
                .unwrap()
        }
    };
    let split = duration("split-head").await;
    assert!(split >= 400.0, "split-head took {split} ms by the log");
    // Generous: the upstream answers at once; only the 1.5 s idle wait must be left out.
    let first = duration("idle-first").await;
    assert!(first < 1000.0, "idle-first took {first} ms by the log");
}
