//! A stand-in for Prime's latency: a TLS server (HTTP/1.1 and HTTP/2 by ALPN) that answers every
//! request after a fixed delay, for the load script's latency-bound shape (`MODE=latency`).
//!
//! Prime answers in tens to hundreds of milliseconds, so in production the proxy holds many
//! requests in flight and opens connections in bursts; an upstream that answers in microseconds
//! hides both. This one keeps up with well over 10,000 requests a second on one core (a timer and
//! a fixed body per request) and counts what the proxy in front of it did: connections opened,
//! how many of them resumed a TLS session, HTTP/2 connections, requests, connections open now.
//!
//! ```sh
//! DELAYED_LISTEN=127.0.0.1:18543 DELAYED_STATS=127.0.0.1:18544 DELAYED_MS=100 \
//!   DELAYED_CERT=server.pem DELAYED_KEY=server.key DELAYED_H2_MAX_STREAMS=128 \
//!   cargo bench --bench delayed_upstream
//! curl http://127.0.0.1:18544/stats   # {"connections":…,"resumed":…,"h2_connections":…,…}
//! ```
//!
//! A `[[bench]]` with `harness = false` so that it is built with the release profile beside the
//! other benchmarks and never by `cargo test`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::HandshakeKind;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// What the proxy in front did, since the server started.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    resumed: AtomicU64,
    h2_connections: AtomicU64,
    requests: AtomicU64,
    open: AtomicU64,
    handshake_failures: AtomicU64,
}

impl Counters {
    fn json(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "{{\"connections\":{},\"resumed\":{},\"h2_connections\":{},\"requests\":{},\"open\":{},\"handshake_failures\":{}}}\n",
            get(&self.connections),
            get(&self.resumed),
            get(&self.h2_connections),
            get(&self.requests),
            get(&self.open),
            get(&self.handshake_failures),
        )
    }
}

/// The settings, from the environment (the load script starts it).
struct Settings {
    listen: SocketAddr,
    stats: SocketAddr,
    delay: Duration,
    h2_max_streams: u32,
    tls: Arc<rustls::ServerConfig>,
}

fn env(name: &str, default: Option<&str>) -> Result<String, String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => default
            .map(str::to_owned)
            .ok_or_else(|| format!("{name} is not set")),
    }
}

fn parsed<T: std::str::FromStr>(name: &str, default: Option<&str>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let text = env(name, default)?;
    text.parse().map_err(|e| format!("{name}={text:?}: {e}"))
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let cert_file = env("DELAYED_CERT", None)?;
        let key_file = env("DELAYED_KEY", None)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
            .and_then(Iterator::collect)
            .map_err(|e| format!("DELAYED_CERT={cert_file}: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(&key_file)
            .map_err(|e| format!("DELAYED_KEY={key_file}: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("DELAYED_CERT/DELAYED_KEY: {e}"))?;
        // Resumption as a production TLS terminator offers it: stateless tickets (TLS 1.3
        // and 1.2) and a session cache; whether a client resumes is then up to the client.
        tls.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(65_536);
        tls.send_tls13_tickets = 2;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            listen: parsed("DELAYED_LISTEN", Some("127.0.0.1:18543"))?,
            stats: parsed("DELAYED_STATS", Some("127.0.0.1:18544"))?,
            delay: Duration::from_millis(parsed("DELAYED_MS", Some("100"))?),
            h2_max_streams: parsed("DELAYED_H2_MAX_STREAMS", Some("128"))?,
            tls: Arc::new(tls),
        })
    }
}

fn main() {
    // `cargo bench` runs every bench target: without its settings this one has nothing to
    // measure and says where it is used instead of failing the run.
    if std::env::var_os("DELAYED_CERT").is_none() {
        eprintln!(
            "delayed_upstream: not a benchmark; the upstream of `MODE=latency scripts/loadtest.sh`"
        );
        return;
    }
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("delayed_upstream: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(serve(settings));
}

async fn serve(settings: Settings) {
    let counters = Arc::new(Counters::default());
    let listener = TcpListener::bind(settings.listen)
        .await
        .unwrap_or_else(|e| panic!("DELAYED_LISTEN={}: {e}", settings.listen));
    let stats = TcpListener::bind(settings.stats)
        .await
        .unwrap_or_else(|e| panic!("DELAYED_STATS={}: {e}", settings.stats));
    tokio::spawn(serve_stats(stats, Arc::clone(&counters)));
    eprintln!(
        "delayed_upstream: https://{} answers after {:?} (h2 stream limit {}); stats on http://{}/stats",
        settings.listen, settings.delay, settings.h2_max_streams, settings.stats
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&settings.tls));
    let delay = settings.delay;
    let mut server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .keep_alive(true)
        .http2()
        .max_concurrent_streams(settings.h2_max_streams);
    let server = Arc::new(server);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, counters, server) =
            (acceptor.clone(), Arc::clone(&counters), Arc::clone(&server));
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(_) => {
                    counters.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let (_, connection) = tls.get_ref();
            counters.connections.fetch_add(1, Ordering::Relaxed);
            if connection.handshake_kind() == Some(HandshakeKind::Resumed) {
                counters.resumed.fetch_add(1, Ordering::Relaxed);
            }
            if connection.alpn_protocol() == Some(b"h2") {
                counters.h2_connections.fetch_add(1, Ordering::Relaxed);
            }
            counters.open.fetch_add(1, Ordering::Relaxed);
            let requests = Arc::clone(&counters);
            let service = service_fn(move |_request: Request<Incoming>| {
                let requests = Arc::clone(&requests);
                async move {
                    tokio::time::sleep(delay).await;
                    requests.requests.fetch_add(1, Ordering::Relaxed);
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(b"{\"benefits\":[]}")));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = server.serve_connection(TokioIo::new(tls), service).await;
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// `GET /stats` (any path, in fact): the counters as one JSON object, then close.
async fn serve_stats(listener: TcpListener, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                let body = counters.json();
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
