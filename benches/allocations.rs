//! Heap allocations per request: preparing and signing one request in-process, and one
//! request end to end through the proxy running in a child process (this same bench
//! binary, started again with `ALLOC_BENCH_ROLE=proxy`), where every allocation the
//! child makes is the proxy's own: the client and the TLS upstream live in the parent.
//!
//! `cargo bench --bench allocations` (criterion reports "allocs" per iteration instead of
//! time; a summary with exact counts per request follows the criterion output).
//!
//! Counting needs a wrapping global allocator: `stats_alloc`'s instrumented system
//! allocator (the project forbids `unsafe`, and implementing `GlobalAlloc` is unsafe). The
//! counts do not depend on the allocator: the release binary's mimalloc serves the same
//! number of requests for memory.

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::System;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use prime_sigv4_proxy::prepare;
use prime_sigv4_proxy::sign::{sign_request, SigningIdentity, SigningScope};
use prime_sigv4_proxy::CredentialSource;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Environment variable that turns this binary into the proxy child.
const ROLE: &str = "ALLOC_BENCH_ROLE";
/// The upstream the child proxy forwards to (`127.0.0.1:PORT`) and the CA it trusts.
const UPSTREAM: &str = "ALLOC_BENCH_UPSTREAM";
const CA_FILE: &str = "ALLOC_BENCH_CA_FILE";

/// A realistic Login-with-Amazon token (`Atza|` and ~390 base64 characters), percent-encoded
/// as clients send it: the same request shape as `scripts/loadtest.sh`.
fn lwa_token_encoded() -> String {
    let body: String = (0..388)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i * 37 + 11) % 64]
                as char
        })
        .collect();
    format!("Atza|{body}==")
        .replace('%', "%25")
        .replace('|', "%7C")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// Allocations of one process (this one, or the child proxy): allocs + reallocs, because a
/// growing `Vec` or `String` asks the allocator again on every realloc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    allocations: u64,
    reallocations: u64,
    bytes: u64,
}

impl Counts {
    fn local() -> Self {
        let stats = GLOBAL.stats();
        Self {
            allocations: stats.allocations as u64,
            reallocations: stats.reallocations as u64,
            bytes: stats.bytes_allocated as u64,
        }
    }

    fn since(self, start: Counts) -> Counts {
        Counts {
            allocations: self.allocations.saturating_sub(start.allocations),
            reallocations: self.reallocations.saturating_sub(start.reallocations),
            bytes: self.bytes.saturating_sub(start.bytes),
        }
    }

    fn calls(self) -> u64 {
        self.allocations + self.reallocations
    }
}

/// Criterion measurement: allocator calls (allocations + reallocations) in this process.
struct AllocatorCalls;

impl Measurement for AllocatorCalls {
    type Intermediate = Counts;
    type Value = u64;

    fn start(&self) -> Counts {
        Counts::local()
    }
    fn end(&self, start: Counts) -> u64 {
        Counts::local().since(start).calls()
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CallsFormatter
    }
}

struct CallsFormatter;

impl ValueFormatter for CallsFormatter {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "allocs"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        // allocs per request, from allocs per iteration
        let per = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n,
            _ => 1,
        };
        for value in values.iter_mut() {
            *value /= per.max(1) as f64;
        }
        "allocs/req"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "allocs"
    }
}

// ---------------------------------------------------------------------------- in-process

/// What `prepare_and_sign` works on: the same inputs as `benches/signing.rs`.
struct SignInputs {
    encoded_query: String,
    identity: SigningIdentity,
    host: HeaderValue,
    client_headers: HeaderMap,
}

impl SignInputs {
    fn new() -> Self {
        let credentials = Credentials::new(
            "ASIAEXAMPLEEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD".repeat(12)),
            None,
            "bench",
        );
        let identity = SigningIdentity::new(&credentials).unwrap_or_else(|e| panic!("{e}"));
        let mut client_headers = HeaderMap::new();
        client_headers.insert("x-amz-marketplace", HeaderValue::from_static("US"));
        client_headers.insert("accept", HeaderValue::from_static("application/json"));
        client_headers.insert("user-agent", HeaderValue::from_static("okhttp/4.12.0"));
        Self {
            encoded_query: format!(
                "customerIdentifier={}&marketplaceId=ATVPDKIKX0DER",
                lwa_token_encoded()
            ),
            identity,
            host: HeaderValue::from_static("prime-apis.amazon.com"),
            client_headers,
        }
    }

    /// Allocations of each step of [`Self::prepare_and_sign`] on its own, `n` times each.
    fn step_counts(&self, n: u64) -> Vec<(&'static str, Counts, u64)> {
        let query = prepare::normalize_query(&self.encoded_query).unwrap_or_default();
        let uri = prepare::upstream_uri(
            "https://prime-apis.amazon.com",
            "/v1/customers/benefits",
            &query,
        );
        let id = prepare::new_request_id();
        let headers = prepare::forward_headers(self.client_headers.clone(), &self.host, &id, 0);
        let mut out = Vec::new();
        let mut count = |name: &'static str, step: &mut dyn FnMut()| {
            let start = Counts::local();
            for _ in 0..n {
                step();
            }
            out.push((name, Counts::local().since(start), n));
        };
        count("  step: prepare::normalize_query", &mut || {
            black_box(prepare::normalize_query(black_box(&self.encoded_query)).ok());
        });
        count("  step: prepare::upstream_uri", &mut || {
            black_box(
                prepare::upstream_uri(
                    "https://prime-apis.amazon.com",
                    "/v1/customers/benefits",
                    black_box(&query),
                )
                .ok(),
            );
        });
        count("  step: prepare::new_request_id", &mut || {
            black_box(prepare::new_request_id());
        });
        count("  step: HeaderMap clone (3 client headers)", &mut || {
            black_box(self.client_headers.clone());
        });
        count(
            "  step: prepare::forward_headers (incl. that clone)",
            &mut || {
                black_box(prepare::forward_headers(
                    self.client_headers.clone(),
                    &self.host,
                    &id,
                    0,
                ));
            },
        );
        count("  step: clone of the forwarded headers", &mut || {
            black_box(headers.clone());
        });
        if let Ok(uri) = &uri {
            count("  step: sign::sign_request (incl. that clone)", &mut || {
                let mut signed = headers.clone();
                let _ = sign_request(
                    &Method::GET,
                    uri,
                    &mut signed,
                    b"",
                    &self.identity,
                    SigningScope {
                        region: "us-east-1",
                        service: "execute-api",
                    },
                    SystemTime::now(),
                );
                black_box(signed);
            });
        }
        out
    }

    /// Normalise the query, build the upstream URI and headers, sign: the proxy's CPU work
    /// for one request, without I/O.
    fn prepare_and_sign(&self) -> HeaderMap {
        let query = prepare::normalize_query(black_box(&self.encoded_query)).unwrap_or_default();
        let uri = prepare::upstream_uri(
            "https://prime-apis.amazon.com",
            "/v1/customers/benefits",
            &query,
        );
        let id = prepare::new_request_id();
        let mut headers = prepare::forward_headers(self.client_headers.clone(), &self.host, &id, 0);
        if let Ok(uri) = uri {
            let _ = sign_request(
                &Method::GET,
                &uri,
                &mut headers,
                b"",
                &self.identity,
                SigningScope {
                    region: "us-east-1",
                    service: "execute-api",
                },
                SystemTime::now(),
            );
        }
        headers
    }
}

// ---------------------------------------------------------------------------- child proxy

/// The child: the proxy as `main.rs` runs it (its logging, one worker thread), on
/// 127.0.0.1:0. Prints `LISTENING <port>` on stderr, then answers each `stats` line on
/// stdin with `STATS <allocations> <reallocations> <bytes>` on stderr; stops at EOF.
fn run_child() {
    let upstream = std::env::var(UPSTREAM).unwrap_or_else(|e| panic!("{UPSTREAM}: {e}"));
    let ca_file = std::env::var(CA_FILE).unwrap_or_else(|e| panic!("{CA_FILE}: {e}"));
    let _logs = prime_sigv4_proxy::logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async move {
        let mut config = prime_sigv4_proxy::config::Config::default();
        for region in config.regions.values_mut() {
            region.endpoint = format!("https://{upstream}");
        }
        config.upstream.ca_file = ca_file;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let admin = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Commands on a plain thread: blocking stdin reads stay off the runtime.
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut line = String::with_capacity(64);
            let mut input = stdin.lock();
            loop {
                line.clear();
                match input.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim() == "stats" => {
                        let c = Counts::local();
                        eprintln!("STATS {} {} {}", c.allocations, c.reallocations, c.bytes);
                    }
                    Ok(_) => {}
                }
            }
            let _ = stop.send(());
        });
        eprintln!("LISTENING {port}");
        let provider =
            SharedCredentialsProvider::new(common::static_credentials(Some(common::SESSION_TOKEN)));
        prime_sigv4_proxy::run_with(
            config,
            listener,
            admin,
            CredentialSource::Provider(provider),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    });
}

/// The parent's handle on a child proxy.
struct ChildProxy {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: BufReader<ChildStderr>,
    url: String,
    /// Allocator calls one `stats` round trip itself costs the child (subtracted).
    overhead: Counts,
}

impl ChildProxy {
    fn start(upstream: SocketAddr, ca_file: &std::path::Path, rust_log: &str) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(exe)
            .env(ROLE, "proxy")
            .env(UPSTREAM, upstream.to_string())
            .env(CA_FILE, ca_file)
            .env("RUST_LOG", rust_log)
            .env("PRIME_PROXY_LOG_FORMAT", "json")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::null()) // its log lines: written, as in production, then dropped
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the child proxy: {e}"));
        let stdin = child.stdin.take();
        let stderr = child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("child without stderr"));
        let mut proxy = Self {
            child,
            stdin,
            replies: BufReader::new(stderr),
            url: String::new(),
            overhead: Counts::default(),
        };
        let port = proxy.read_reply("LISTENING");
        proxy.url = format!("http://127.0.0.1:{port}");
        proxy
    }

    /// What one `stats` round trip costs the child, once it is idle: the least of a few
    /// back-to-back pairs (the child's timers and log writer may run during any one pair).
    fn calibrate(&mut self) {
        let mut least: Option<Counts> = None;
        for _ in 0..5 {
            let first = self.counts();
            let delta = self.counts().since(first);
            if least.is_none_or(|l| delta.calls() < l.calls()) {
                least = Some(delta);
            }
        }
        self.overhead = least.unwrap_or_default();
    }

    fn read_reply(&mut self, tag: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            match self.replies.read_line(&mut line) {
                Ok(0) | Err(_) => panic!("the child proxy exited before answering {tag}"),
                Ok(_) => {
                    if let Some(rest) = line.trim().strip_prefix(tag) {
                        return rest.trim().to_owned();
                    }
                    // anything else the child prints on stderr: pass it on
                    eprint!("child: {line}");
                }
            }
        }
    }

    fn counts(&mut self) -> Counts {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"stats\n");
            let _ = stdin.flush();
        }
        let reply = self.read_reply("STATS");
        let mut fields = reply
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        Counts {
            allocations: fields.next().unwrap_or(0),
            reallocations: fields.next().unwrap_or(0),
            bytes: fields.next().unwrap_or(0),
        }
    }

    /// The child's allocations while `work` runs, less one `stats` round trip.
    fn measure(&mut self, work: impl FnOnce()) -> Counts {
        let start = self.counts();
        work();
        let end = self.counts();
        let delta = end.since(start);
        Counts {
            allocations: delta.allocations.saturating_sub(self.overhead.allocations),
            reallocations: delta
                .reallocations
                .saturating_sub(self.overhead.reallocations),
            bytes: delta.bytes.saturating_sub(self.overhead.bytes),
        }
    }

    fn stop(mut self) {
        drop(self.stdin.take()); // EOF: the child shuts down
        let _ = self.child.wait();
    }
}

/// `n` sequential keep-alive requests through the child proxy; panics on a non-200.
async fn requests(client: &common::PlainClient, url: &str, n: u64) {
    for _ in 0..n {
        let request = Request::get(url)
            .header("x-amz-marketplace", "US")
            .header("accept", "application/json")
            .header("user-agent", "okhttp/4.12.0")
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let response = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("proxy request failed: {e}"));
        assert_eq!(response.status(), 200, "the child proxy did not forward");
        let _ = response.into_body().collect().await;
    }
}

fn main() {
    if std::env::var_os(ROLE).is_some() {
        run_child();
        return;
    }
    let mut criterion = Criterion::default()
        .with_measurement(AllocatorCalls)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let inputs = SignInputs::new();
    let mut group = criterion.benchmark_group("allocations");
    group.throughput(Throughput::Elements(1));
    group.bench_function("prepare_and_sign/get_with_lwa_token", |b| {
        b.iter(|| inputs.prepare_and_sign())
    });
    group.finish();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = common::Pki::new();
    let upstream = runtime.block_on(common::fixed_upstream(&pki));
    let client = common::client();
    let path = format!("/v1/benefits?customerIdentifier={}", lwa_token_encoded());

    let mut summary = Vec::new();
    {
        let sign_start = Counts::local();
        const N: u64 = 1000;
        for _ in 0..N {
            black_box(inputs.prepare_and_sign());
        }
        summary.push((
            "prepare_and_sign (in-process)",
            Counts::local().since(sign_start),
            N,
        ));
    }
    summary.extend(inputs.step_counts(1000));

    for rust_log in ["info", "warn"] {
        let mut proxy = ChildProxy::start(upstream, &pki.ca_file, rust_log);
        let url = format!("{}{path}", proxy.url);
        // Warm: the upstream connection, the signing key, the metric series exist.
        runtime.block_on(requests(&client, &url, 20));
        std::thread::sleep(Duration::from_millis(200)); // the log writer's flush, then quiet
        proxy.calibrate();
        let mut group = criterion.benchmark_group("allocations");
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("end_to_end/RUST_LOG={rust_log}"), |b| {
            b.iter_custom(|iters| {
                proxy
                    .measure(|| runtime.block_on(requests(&client, &url, iters)))
                    .calls()
            })
        });
        group.finish();
        const N: u64 = 2000;
        let counts = proxy.measure(|| runtime.block_on(requests(&client, &url, N)));
        summary.push((
            if rust_log == "info" {
                "end to end, proxy process, RUST_LOG=info (default)"
            } else {
                "end to end, proxy process, RUST_LOG=warn"
            },
            counts,
            N,
        ));
        proxy.stop();
    }

    criterion.final_summary();
    println!();
    println!("Allocations per request (exact counts; allocs + reallocs = allocator calls):");
    for (name, counts, n) in summary {
        let per = |x: u64| x as f64 / n as f64;
        println!(
            "  {name:<52} {:>6.1} allocs + {:>5.1} reallocs = {:>6.1} calls, {:>8.0} bytes  ({n} requests)",
            per(counts.allocations),
            per(counts.reallocations),
            per(counts.calls()),
            per(counts.bytes),
        );
    }
}
