//! Real parts for the integration tests: a certificate authority made with rcgen at test
//! time, verifying TLS upstreams that check every SigV4 signature they receive (with the
//! independent verifier in `support/`) and inject faults on demand, the proxy started
//! in-process or as the real binary, and plain clients.
//!
//! Tests are shaped like production: [`Upstreams`] starts one upstream per region on its own
//! loopback address (`na` on 127.0.0.1, `eu` on 127.0.0.2, `fe` on 127.0.0.3, each with a
//! certificate for its own address only), as Prime's three regions are three hosts, and
//! [`config_for_regions`] / [`regions_config_file`] point the proxy at them. The older
//! single-upstream helpers ([`FakeUpstream::start`], [`config_for`], [`config_file`]) point
//! every region at one endpoint; they stay for the few tests that say why one upstream is
//! right, and new tests use the three-upstream layout.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/sigv4_verifier.rs"]
pub mod sigv4_verifier;

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prime_sigv4_proxy::config::Config;
use prime_sigv4_proxy::CredentialSource;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

pub use sigv4_verifier::{ReceivedRequest, VerifyOptions};

/// The static test identity the in-process proxy signs with.
pub const ACCESS_KEY: &str = "AKIDPROXYTEST";
pub const SECRET_KEY: &str = "proxy-test-secret/Key+With=Symbols";
pub const SESSION_TOKEN: &str = "session-token-for-tests-FwoGZXIvYXdzEJr";

/// An LWA access token as Amazon issues them, and its canonical query encoding.
pub const LWA_TOKEN: &str = "Atza|IwEBIJ+kR/9z0Y7Q==";
pub const LWA_TOKEN_CANONICAL: &str = "Atza%7CIwEBIJ%2BkR%2F9z0Y7Q%3D%3D";

/// The built-in region table as the tests lay it out: region key, signing region, the
/// loopback address its upstream listens on, and its marketplaces.
pub const REGIONS: [(&str, &str, Ipv4Addr, &[&str]); 3] = [
    (
        "na",
        "us-east-1",
        Ipv4Addr::new(127, 0, 0, 1),
        &["US", "CA", "MX"],
    ),
    (
        "eu",
        "eu-west-1",
        Ipv4Addr::new(127, 0, 0, 2),
        &[
            "UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR",
        ],
    ),
    (
        "fe",
        "us-west-2",
        Ipv4Addr::new(127, 0, 0, 3),
        &["JP", "SG", "AU"],
    ),
];

/// (region key, signing region) of a marketplace code (any case).
pub fn region_of(marketplace: &str) -> (&'static str, &'static str) {
    let code = marketplace.to_ascii_uppercase();
    REGIONS
        .iter()
        .find(|(_, _, _, codes)| codes.contains(&code.as_str()))
        .map(|(key, signing, _, _)| (*key, *signing))
        .unwrap_or_else(|| panic!("{marketplace} is in no region"))
}

/// `len` bytes of printable ASCII whose period (95) divides no chunk size the tests use, so
/// a lost, repeated or reordered chunk shows up in a byte-for-byte comparison.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b' ' + (i % 95) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// Certificates

/// A throw-away certificate authority and the files it writes.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
}

/// A certificate chain and key, as PEM text.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "prime-sigv4-proxy test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self { ca, dir, ca_file }
    }

    /// A server (or client) certificate for `names` (an IP address becomes an IP SAN),
    /// signed by the CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "prime-sigv4-proxy test");
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

/// A rustls server configuration for `leaf` that offers HTTP/1.1 by ALPN.
pub fn server_tls(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    server_tls_with_alpn(leaf, vec![b"http/1.1".to_vec()])
}

fn server_tls_with_alpn(leaf: &Leaf, alpn: Vec<Vec<u8>>) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------
// The verifying, fault-injecting upstream

/// Bytes per chunk of the streamed bodies the upstream sends.
pub const CHUNK: usize = 16 * 1024;

/// Lets a test decide when an upstream body continues (see [`Action::FirstChunkThenWait`]).
#[derive(Clone, Debug)]
pub struct Release(Arc<Semaphore>);

impl Release {
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }

    /// Lets the waiting body send the rest.
    pub fn release(&self) {
        self.0.add_permits(1);
    }

    async fn wait(&self) {
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
    }
}

impl Default for Release {
    fn default() -> Self {
        Self::new()
    }
}

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with this status, headers and body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Send the head with `Content-Length: 100`, 10 bytes of body, then reset.
    ResetMidBody,
    /// Close the connection without any response (HTTP/2: reset the stream).
    CloseWithoutResponse,
    /// HTTP/2: reset the stream with REFUSED_STREAM (the server did not process it).
    RefuseStream,
    /// Wait this long, then answer 200.
    Sleep(Duration),
    /// Answer 200 with a chunked body whose second chunk comes after this long.
    StreamSlowly(Duration),
    /// Answer 200 with a chunked body (no `Content-Length`): `pattern(total)` in chunks of
    /// `chunk` bytes.
    Chunked { total: usize, chunk: usize },
    /// Answer 200 with a chunked body: the first `first` bytes of `pattern(first + rest)`,
    /// then nothing until the test calls [`Release::release`], then the other `rest`.
    FirstChunkThenWait {
        first: usize,
        rest: usize,
        release: Release,
    },
    /// Answer 200 with `Content-Length: declared` and send the first `sent` bytes of
    /// `pattern(declared)`, then nothing more for as long as the connection lives.
    StallAfter { sent: usize, declared: usize },
}

impl Action {
    pub fn status(status: u16) -> Self {
        Action::Respond {
            status,
            headers: Vec::new(),
            body: format!("{{\"status\":{status}}}"),
        }
    }

    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Action::Respond {
            status,
            headers: vec![(name.to_owned(), value.to_owned())],
            body: format!("{{\"status\":{status}}}"),
        }
    }

    /// 200 with a `Content-Length` body of `pattern(len)`.
    pub fn sized(len: usize) -> Self {
        Action::Respond {
            status: 200,
            headers: Vec::new(),
            body: String::from_utf8(pattern(len)).unwrap(),
        }
    }
}

/// Request headers the tests send through the proxy to choose the upstream's answer when
/// no action is queued: concurrent clients can ask for their own kind of body.
pub const ASK_CHUNKED: &str = "x-fake-chunked";
/// See [`ASK_CHUNKED`]: `x-fake-length: N` asks for a `Content-Length` body of `pattern(N)`.
pub const ASK_LENGTH: &str = "x-fake-length";

/// How an upstream speaks HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// ALPN `http/1.1` only (Prime's default).
    Http1,
    /// ALPN `h2` only, served by hyper's HTTP/2 server.
    Http2,
    /// As `Http2`, announcing this SETTINGS_MAX_CONCURRENT_STREAMS.
    Http2Streams(u32),
}

/// One request as the upstream received it, with the verdict of the SigV4 verifier.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `Ok(access key id, signing region)` when the signature verified.
    pub verdict: Result<(String, String), String>,
    pub at: std::time::Instant,
    /// Which of this upstream's connections carried it (1 for the first accepted).
    pub connection: usize,
    pub version: Version,
    /// The `Host` header, or the HTTP/2 `:authority`.
    pub authority: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    #[track_caller]
    pub fn assert_signed(&self) -> (String, String) {
        match &self.verdict {
            Ok(v) => v.clone(),
            Err(e) => panic!(
                "upstream rejected the signature of {} {}: {e}",
                self.method, self.path
            ),
        }
    }

    /// The signing region, when the signature verified.
    pub fn signed_region(&self) -> Option<&str> {
        self.verdict
            .as_ref()
            .ok()
            .map(|(_, region)| region.as_str())
    }

    /// `SignedHeaders` of the `Authorization` header (empty when there is none).
    pub fn signed_headers(&self) -> Vec<String> {
        self.header("authorization")
            .and_then(|a| sigv4_verifier::parse_authorization(a).ok())
            .map(|a| a.signed_headers)
            .unwrap_or_default()
    }
}

/// Keys the upstream accepts: access key id → (secret, expiry).
pub type KeyRing = Arc<Mutex<HashMap<String, (String, Option<SystemTime>)>>>;

/// A key ring that accepts the static test key.
pub fn default_keys() -> KeyRing {
    let keys: KeyRing = Arc::new(Mutex::new(HashMap::new()));
    keys.lock()
        .unwrap()
        .insert(ACCESS_KEY.to_owned(), (SECRET_KEY.to_owned(), None));
    keys
}

/// Faults on the first attempt of every `every`-th new request id (see
/// [`FakeUpstream::fault_first_attempts`]).
struct FaultPlan {
    every: usize,
    faults: Vec<Action>,
    seen: HashSet<String>,
    new_requests: usize,
    injected: usize,
}

/// A TLS upstream on a loopback address that records and verifies every request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub endpoint: String,
    pub protocol: Protocol,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<VecDeque<Action>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// TCP connections open now.
    pub open: Arc<AtomicUsize>,
    /// Ids (see [`Received::connection`]) of the connections open now.
    open_ids: Arc<Mutex<HashSet<usize>>>,
    pub keys: KeyRing,
    faults: Arc<Mutex<Option<FaultPlan>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    ids: Arc<Mutex<HashSet<usize>>>,
    id: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.ids.lock().unwrap().remove(&self.id);
    }
}

impl FakeUpstream {
    /// Starts on 127.0.0.1 (certificate for 127.0.0.1 and localhost), accepting the static
    /// test key. New tests use [`Upstreams`].
    pub async fn start(pki: &Pki) -> Self {
        Self::start_with_keys(pki, default_keys()).await
    }

    pub async fn start_with_keys(pki: &Pki, keys: KeyRing) -> Self {
        Self::start_on(
            pki,
            Ipv4Addr::LOCALHOST,
            &["127.0.0.1", "localhost"],
            Protocol::Http1,
            keys,
        )
        .await
    }

    /// Starts on `ip` (port 0) with a certificate for `names` only.
    pub async fn start_on(
        pki: &Pki,
        ip: Ipv4Addr,
        names: &[&str],
        protocol: Protocol,
        keys: KeyRing,
    ) -> Self {
        let leaf = pki.leaf(names);
        let alpn = match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::Http2 | Protocol::Http2Streams(_) => b"h2".to_vec(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls_with_alpn(&leaf, vec![alpn]));
        let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let open_ids = Arc::new(Mutex::new(HashSet::new()));
        let faults = Arc::new(Mutex::new(None));
        let state = UpstreamState {
            received: Arc::clone(&received),
            script: Arc::clone(&script),
            keys: Arc::clone(&keys),
            faults: Arc::clone(&faults),
            connection: 0,
            version: Version::HTTP_11,
        };
        let accepted = Arc::clone(&connections);
        let open_now = Arc::clone(&open);
        let ids = Arc::clone(&open_ids);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                open_now.fetch_add(1, Ordering::SeqCst);
                ids.lock().unwrap().insert(id);
                let guard = OpenGuard {
                    open: Arc::clone(&open_now),
                    ids: Arc::clone(&ids),
                    id,
                };
                let acceptor = acceptor.clone();
                let mut state = state.clone();
                state.connection = id;
                tokio::spawn(async move {
                    let _guard = guard;
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    state.version = if h2 {
                        Version::HTTP_2
                    } else {
                        Version::HTTP_11
                    };
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { state.answer(request).await }
                    });
                    if h2 {
                        let mut builder =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        if let Protocol::Http2Streams(limit) = protocol {
                            builder.max_concurrent_streams(limit);
                        }
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                });
            }
        });
        Self {
            addr,
            endpoint: format!("https://{ip}:{}", addr.port()),
            protocol,
            received,
            script,
            connections,
            open,
            open_ids,
            keys,
            faults,
            task,
        }
    }

    /// `host:port` as the proxy must send it in `Host` (or `:authority`).
    pub fn authority(&self) -> &str {
        &self.endpoint["https://".len()..]
    }

    /// Accepts signatures made with this (non-expiring) key from now on.
    pub fn accept_key(&self, access_key_id: &str, secret: &str) {
        self.keys
            .lock()
            .unwrap()
            .insert(access_key_id.to_owned(), (secret.to_owned(), None));
    }

    /// Queues actions for the next requests (then it answers 200 again).
    pub fn push(&self, actions: impl IntoIterator<Item = Action>) {
        self.script.lock().unwrap().extend(actions);
    }

    /// From now on, the first attempt of every `every`-th new request (by
    /// `x-amz-request-id`) gets the next of `faults` (in turn); its retries, and every
    /// other request, are answered normally. Queued actions still come first.
    pub fn fault_first_attempts(&self, every: usize, faults: Vec<Action>) {
        assert!(every > 0 && !faults.is_empty());
        *self.faults.lock().unwrap() = Some(FaultPlan {
            every,
            faults,
            seen: HashSet::new(),
            new_requests: 0,
            injected: 0,
        });
    }

    /// How many faults [`FakeUpstream::fault_first_attempts`] has injected.
    pub fn faults_injected(&self) -> usize {
        self.faults
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |p| p.injected)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether the connection with this id (see [`Received::connection`]) is still open.
    pub fn is_open(&self, connection: usize) -> bool {
        self.open_ids.lock().unwrap().contains(&connection)
    }
}

/// One verifying upstream per region, each on its own loopback address with a certificate
/// for that address only: `na` on 127.0.0.1, `eu` on 127.0.0.2, `fe` on 127.0.0.3.
pub struct Upstreams {
    pub na: FakeUpstream,
    pub eu: FakeUpstream,
    pub fe: FakeUpstream,
}

impl Upstreams {
    /// HTTP/1.1 upstreams accepting the static test key.
    pub async fn start(pki: &Pki) -> Self {
        Self::start_with(pki, Protocol::Http1, default_keys()).await
    }

    /// HTTP/2 upstreams (ALPN `h2` only) accepting the static test key.
    pub async fn start_h2(pki: &Pki) -> Self {
        Self::start_with(pki, Protocol::Http2, default_keys()).await
    }

    /// HTTP/2 upstreams that allow `streams` concurrent streams per connection.
    pub async fn start_h2_limited(pki: &Pki, streams: u32) -> Self {
        Self::start_with(pki, Protocol::Http2Streams(streams), default_keys()).await
    }

    /// Upstreams sharing one key ring (rotating credentials are accepted by every region).
    pub async fn start_with(pki: &Pki, protocol: Protocol, keys: KeyRing) -> Self {
        let start = |ip: Ipv4Addr| {
            let keys = Arc::clone(&keys);
            async move {
                FakeUpstream::start_on(pki, ip, &[ip.to_string().as_str()], protocol, keys).await
            }
        };
        Self {
            na: start(REGIONS[0].2).await,
            eu: start(REGIONS[1].2).await,
            fe: start(REGIONS[2].2).await,
        }
    }

    pub fn all(&self) -> [&FakeUpstream; 3] {
        [&self.na, &self.eu, &self.fe]
    }

    /// The upstream of a region key (`na`, `eu`, `fe`).
    pub fn region(&self, key: &str) -> &FakeUpstream {
        match key {
            "na" => &self.na,
            "eu" => &self.eu,
            "fe" => &self.fe,
            other => panic!("no region {other}"),
        }
    }

    /// The upstream that serves a marketplace code.
    pub fn for_marketplace(&self, marketplace: &str) -> &FakeUpstream {
        self.region(region_of(marketplace).0)
    }

    /// Requests received by all three together.
    pub fn count(&self) -> usize {
        self.all().iter().map(|u| u.count()).sum()
    }

    pub fn accept_key(&self, access_key_id: &str, secret: &str) {
        // One key ring may be shared; inserting into each is harmless.
        for upstream in self.all() {
            upstream.accept_key(access_key_id, secret);
        }
    }

    /// Finds the request with this `x-amz-request-id` (its last attempt) and the region key
    /// of the upstream that received it.
    pub fn find(&self, request_id: &str) -> Option<(&'static str, Received)> {
        for (key, upstream) in [("na", &self.na), ("eu", &self.eu), ("fe", &self.fe)] {
            if let Some(found) = upstream
                .requests()
                .into_iter()
                .rev()
                .find(|r| r.header("x-amz-request-id") == Some(request_id))
            {
                return Some((key, found));
            }
        }
        None
    }
}

#[derive(Clone)]
struct UpstreamState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Action>>>,
    keys: KeyRing,
    faults: Arc<Mutex<Option<FaultPlan>>>,
    connection: usize,
    version: Version,
}

type TestBody = UnsyncBoxBody<Bytes, std::io::Error>;
/// A fault the upstream's service injects; hyper's HTTP/2 server resets the stream with
/// the h2 reason it finds among the error's sources (else INTERNAL_ERROR).
#[derive(Debug)]
enum Injected {
    Close(std::io::Error),
    Reset(h2::Error),
}

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault")
    }
}

impl std::error::Error for Injected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Injected::Close(e) => Some(e),
            Injected::Reset(e) => Some(e),
        }
    }
}
type FrameSender = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// A response body fed by a producer task through a one-frame channel, so the upstream only
/// sends as fast as the proxy reads (and a test can see where it is).
struct ChannelBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    length: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.frames.poll_recv(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.length {
            Some(length) => http_body::SizeHint::with_exact(length),
            None => http_body::SizeHint::default(),
        }
    }
}

fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A 200 whose body the `producer` task sends; with `length`, a `Content-Length` body.
fn produced<F, Fut>(length: Option<u64>, producer: F) -> Response<TestBody>
where
    F: FnOnce(FrameSender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(producer(tx));
    let mut response = Response::new(ChannelBody { frames: rx, length }.boxed_unsync());
    if let Some(length) = length {
        response.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
    }
    response
}

/// Sends `bytes` in `chunk`-sized frames; false once the receiver is gone.
async fn send_chunks(tx: &FrameSender, bytes: &[u8], chunk: usize) -> bool {
    for piece in bytes.chunks(chunk.max(1)) {
        if tx
            .send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

impl UpstreamState {
    /// What to do with a request: the queued script first, then a planned fault, then what
    /// the request asks for ([`ASK_CHUNKED`], [`ASK_LENGTH`]), else a small JSON 200.
    fn next_action(&self, headers: &[(String, String)], verdict_ok: bool) -> Action {
        if let Some(action) = self.script.lock().unwrap().pop_front() {
            return action;
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if let Some(plan) = self.faults.lock().unwrap().as_mut() {
            let id = header("x-amz-request-id").unwrap_or_default();
            if plan.seen.insert(id) {
                plan.new_requests += 1;
                if plan.new_requests % plan.every == 0 {
                    let fault = plan.faults[plan.injected % plan.faults.len()].clone();
                    plan.injected += 1;
                    return fault;
                }
            }
        }
        if let Some(total) = header(ASK_CHUNKED).and_then(|v| v.parse().ok()) {
            return Action::Chunked {
                total,
                chunk: CHUNK,
            };
        }
        if let Some(len) = header(ASK_LENGTH).and_then(|v| v.parse().ok()) {
            return Action::sized(len);
        }
        Action::Respond {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!("{{\"benefits\":[],\"signatureValid\":{verdict_ok}}}"),
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Response<TestBody>, Injected> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let authority = parts
            .headers
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        // Over HTTP/2 the host travels as `:authority`; the signature covers it as `host`,
        // as Prime (API Gateway) checks it.
        let mut signed_view = headers.clone();
        if !signed_view
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            signed_view.push(("host".to_owned(), authority.clone()));
        }
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let verdict = self.verify(parts.method.as_str(), &path, &query, &signed_view, &body);
        let action = self.next_action(&headers, verdict.is_ok());
        self.received.lock().unwrap().push(Received {
            method: parts.method.to_string(),
            path,
            query,
            headers,
            body: body.to_vec(),
            verdict,
            at: std::time::Instant::now(),
            connection: self.connection,
            version: self.version,
            authority,
        });
        let full = |status: u16, headers: Vec<(String, String)>, body: String| {
            let mut response = Response::new(full_body(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(&value).unwrap(),
                );
            }
            response
        };
        match action {
            Action::Respond {
                status,
                headers,
                body,
            } => Ok(full(status, headers, body)),
            Action::Sleep(wait) => {
                tokio::time::sleep(wait).await;
                Ok(full(200, Vec::new(), "{\"slept\":true}".into()))
            }
            Action::StreamSlowly(pause) => Ok(produced(None, move |tx| async move {
                if send_chunks(&tx, b"{\"part\":1,", CHUNK).await {
                    tokio::time::sleep(pause).await;
                    send_chunks(&tx, b"\"done\":true}", CHUNK).await;
                }
            })),
            Action::Chunked { total, chunk } => Ok(produced(None, move |tx| async move {
                send_chunks(&tx, &pattern(total), chunk).await;
            })),
            Action::FirstChunkThenWait {
                first,
                rest,
                release,
            } => Ok(produced(None, move |tx| async move {
                let body = pattern(first + rest);
                if send_chunks(&tx, &body[..first], CHUNK).await {
                    release.wait().await;
                    send_chunks(&tx, &body[first..], CHUNK).await;
                }
            })),
            Action::StallAfter { sent, declared } => {
                Ok(produced(Some(declared as u64), move |tx| async move {
                    if send_chunks(&tx, &pattern(declared)[..sent], CHUNK).await {
                        // Silent, but alive, until the proxy gives up on the body.
                        tx.closed().await;
                    }
                }))
            }
            Action::ResetMidBody => Ok(produced(Some(100), |tx| async move {
                if send_chunks(&tx, b"{\"partial\"", CHUNK).await {
                    let _ = tx.send(Err(std::io::Error::other("injected reset"))).await;
                }
            })),
            Action::CloseWithoutResponse => {
                Err(Injected::Close(std::io::Error::other("injected close")))
            }
            // hyper's server resets the stream with the h2 reason it finds in the error.
            Action::RefuseStream => Err(Injected::Reset(h2::Reason::REFUSED_STREAM.into())),
        }
    }

    fn verify(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(String, String), String> {
        let request = ReceivedRequest {
            method,
            path,
            query,
            headers,
            body,
        };
        let keys = self.keys.lock().unwrap().clone();
        let mut options = VerifyOptions::new(SystemTime::now());
        options.require_payload_hash_header = true;
        options.max_skew = Duration::from_secs(300);
        let verified = sigv4_verifier::verify(
            &request,
            |id| keys.get(id).map(|(secret, _)| secret.clone()),
            &options,
        )
        .map_err(|e| e.to_string())?;
        if verified.service != "execute-api" {
            return Err(format!("signed for service {}", verified.service));
        }
        // Temporary keys must not be used after they expire.
        if let Some((_, Some(expiry))) = keys.get(&verified.access_key_id) {
            let signed_at =
                sigv4_verifier::parse_amz_date(&verified.date).map_err(|e| e.to_string())?;
            if signed_at > *expiry {
                return Err(format!(
                    "signed at {} with key {} after it expired",
                    verified.date, verified.access_key_id
                ));
            }
        }
        Ok((verified.access_key_id, verified.region))
    }
}

// ---------------------------------------------------------------------------------------
// The proxy, in-process

/// The proxy running in this process on ports chosen by the OS.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// Stops the proxy (as SIGTERM does) and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_text(self.admin).await
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Trusts the test CA, retries fast, drains quickly.
fn test_defaults(config: &mut Config, pki: &Pki) {
    config.upstream.ca_file = pki.ca_file.display().to_string();
    config.retry.base_delay_ms = 10;
    config.retry.max_delay_ms = 200;
    config.shutdown_grace_ms = 5_000;
}

/// A configuration whose three regions all point at one `upstream` (keeping their own
/// signing regions and marketplaces), trusting the test CA, with fast retries.
///
/// Not what production looks like (three hosts): new tests use [`config_for_regions`].
pub fn config_for(upstream: &FakeUpstream, pki: &Pki) -> Config {
    let mut config = Config::default();
    for region in config.regions.values_mut() {
        region.endpoint = upstream.endpoint.clone();
    }
    test_defaults(&mut config, pki);
    config
}

/// The production layout: `na` → 127.0.0.1, `eu` → 127.0.0.2, `fe` → 127.0.0.3 (each region
/// keeping its built-in signing region and marketplaces), trusting the test CA, with fast
/// retries.
pub fn config_for_regions(upstreams: &Upstreams, pki: &Pki) -> Config {
    let mut config = Config::default();
    for (key, region) in config.regions.iter_mut() {
        region.endpoint = upstreams.region(key).endpoint.clone();
    }
    test_defaults(&mut config, pki);
    config
}

/// Merges TOML tables: `extra`'s keys replace `base`'s, tables merge key by key.
fn merge_toml(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => merge_toml(into, from),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `config` with the TOML document `extra` merged on top, validated as the binary would.
/// Keys the struct may not have yet (e.g. `[upstream.headers]`) are set this way, so a test
/// fails at run time, naming the key, instead of not compiling.
#[track_caller]
pub fn config_with(config: &Config, extra: &str) -> Config {
    let mut base: toml::Table = toml::from_str(&toml::to_string(config).unwrap()).unwrap();
    let table: toml::Table =
        toml::from_str(extra).unwrap_or_else(|e| panic!("bad test TOML {extra:?}: {e}"));
    merge_toml(&mut base, table);
    let merged = toml::to_string(&base).unwrap();
    Config::from_toml(&merged)
        .unwrap_or_else(|e| panic!("the proxy refused the configuration {extra:?}: {e}"))
}

pub fn static_credentials(session_token: Option<&str>) -> Credentials {
    Credentials::new(
        ACCESS_KEY,
        SECRET_KEY,
        session_token.map(str::to_owned),
        None,
        "tests",
    )
}

/// Starts the proxy in-process with the static test credentials (and session token).
pub async fn start_proxy(config: Config) -> TestProxy {
    let provider = SharedCredentialsProvider::new(static_credentials(Some(SESSION_TOKEN)));
    start_proxy_with(config, CredentialSource::Provider(provider)).await
}

pub async fn start_proxy_with(config: Config, source: CredentialSource) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        prime_sigv4_proxy::run_with(config, listener, admin_listener, source, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestProxy {
        addr,
        admin,
        stop: Some(stop),
        task: Some(task),
    }
}

// ---------------------------------------------------------------------------------------
// The proxy, as the real binary

/// The real `prime-sigv4-proxy` binary, started with a config file and environment.
pub struct ProxyProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_prime-sigv4-proxy")
}

/// A command for the binary with a clean AWS environment: no ambient credentials, no IMDS,
/// no profile files, so each test says exactly where credentials come from.
pub fn clean_command(home: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command.env_clear();
    command
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("no-aws-credentials"),
        )
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    command
}

/// [`clean_command`] with the static test key in the environment.
pub fn command_with_static_key(home: &Path) -> tokio::process::Command {
    let mut command = clean_command(home);
    command
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    command
}

impl ProxyProcess {
    /// Starts the binary (listening on ports 0) and waits for its "serving" log line.
    pub async fn start(mut command: tokio::process::Command, config_file: &Path) -> Self {
        command
            .arg("--config")
            .arg(config_file)
            .env("PRIME_PROXY_LISTEN", "127.0.0.1:0")
            .env("PRIME_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = oneshot::channel::<(SocketAddr, SocketAddr)>();
        let sink = Arc::clone(&logs);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    if json["message"] == "prime-sigv4-proxy serving" {
                        let listen = json["listen"].as_str().unwrap().parse().unwrap();
                        let admin = json["admin_listen"].as_str().unwrap().parse().unwrap();
                        if let Some(tx) = ready.take() {
                            let _ = tx.send((listen, admin));
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let sink = Arc::clone(&logs);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, admin) = tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .unwrap_or_else(|_| panic!("proxy did not start; logs: {:?}", logs.lock().unwrap()))
            .unwrap_or_else(|_| panic!("proxy exited; logs: {:?}", logs.lock().unwrap()));
        Self {
            child,
            addr,
            admin,
            logs,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The per-request log lines (JSON, message "request") so far.
    pub fn request_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "request")
            .collect()
    }

    /// The first request log line that `matches`, waited for (lines reach stdout in batches,
    /// a little after the response): up to 10 s, then a panic with the logs.
    pub async fn request_line(
        &self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.request_lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no such request line in:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_text(self.admin).await
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

/// Writes `base` with the TOML document `extra` merged on top as `proxy.toml` in the PKI's
/// directory.
fn write_config(pki: &Pki, mut base: toml::Table, extra: &str) -> PathBuf {
    let table: toml::Table =
        toml::from_str(extra).unwrap_or_else(|e| panic!("bad test TOML {extra:?}: {e}"));
    merge_toml(&mut base, table);
    pki.write("proxy.toml", &toml::to_string(&base).unwrap())
}

fn file_base(pki: &Pki, endpoints: [&str; 3]) -> toml::Table {
    let mut regions = toml::Table::new();
    for (key, endpoint) in ["na", "eu", "fe"].into_iter().zip(endpoints) {
        let mut region = toml::Table::new();
        region.insert("endpoint".into(), endpoint.into());
        regions.insert(key.into(), region.into());
    }
    let mut upstream = toml::Table::new();
    upstream.insert("ca_file".into(), pki.ca_file.display().to_string().into());
    let mut base = toml::Table::new();
    base.insert("upstream".into(), upstream.into());
    base.insert("regions".into(), regions.into());
    base
}

/// A config file for the binary whose regions all point at one `upstream`, with the TOML
/// document `extra` merged in. New tests use [`regions_config_file`].
pub fn config_file(pki: &Pki, upstream: &FakeUpstream, extra: &str) -> PathBuf {
    let e = upstream.endpoint.as_str();
    write_config(pki, file_base(pki, [e, e, e]), extra)
}

/// A config file for the binary in the production layout (see [`config_for_regions`]), with
/// the TOML document `extra` merged in (tables merge key by key, so `extra` may have its
/// own `[upstream]`).
pub fn regions_config_file(pki: &Pki, upstreams: &Upstreams, extra: &str) -> PathBuf {
    let endpoints = [
        upstreams.na.endpoint.as_str(),
        upstreams.eu.endpoint.as_str(),
        upstreams.fe.endpoint.as_str(),
    ];
    write_config(pki, file_base(pki, endpoints), extra)
}

// ---------------------------------------------------------------------------------------
// Clients

pub type PlainClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that keeps (at most) one connection to the proxy and reuses it: one keep-alive
/// client, as an application's HTTP library is.
pub fn keep_alive_client() -> PlainClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http()
}

/// A reply read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the SPEC's error shape and returns the JSON body.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.header("x-prime-proxy-error"), Some(code));
        let json = self.json();
        assert_eq!(json["error"], code);
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(json["requestId"].as_str(), self.header("x-amz-request-id"));
        json
    }
}

/// Sends a request built by `build` and reads the whole reply.
pub async fn send(client: &PlainClient, request: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("proxy did not answer within 30 s")
        .expect("request to the proxy failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET url` with the given headers.
pub async fn get(client: &PlainClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(client, builder.body(Full::new(Bytes::new())).unwrap()).await
}

/// `GET url` with the given headers, returning as soon as the response head is in, with
/// the body still to be read.
pub async fn get_head(
    client: &PlainClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("proxy did not answer within 30 s")
        .expect("request to the proxy failed")
}

/// A streamed response whose upstream has sent its first bytes and holds back the rest.
pub struct HeldStream {
    pub response: Response<Incoming>,
    /// What the client has read so far.
    pub got: Vec<u8>,
    release: Release,
    total: usize,
    marketplace: String,
}

impl HeldStream {
    /// Asks `upstream` (through `url`, a streaming path) for `first` bytes followed by
    /// `rest` held back, and asserts the client reads the first bytes while the rest is
    /// still held: the response is streamed, not buffered.
    pub async fn open(
        client: &PlainClient,
        url: &str,
        upstream: &FakeUpstream,
        marketplace: &str,
        first: usize,
        rest: usize,
    ) -> Self {
        let release = Release::new();
        upstream.push([Action::FirstChunkThenWait {
            first,
            rest,
            release: release.clone(),
        }]);
        let mut response = get_head(client, url, &[("x-amz-marketplace", marketplace)]).await;
        assert_eq!(response.status(), 200, "{marketplace}");
        let mut got = Vec::new();
        let read_first = tokio::time::timeout(Duration::from_secs(3), async {
            while got.len() < first {
                match next_data(response.body_mut()).await {
                    Some(Ok(data)) => got.extend_from_slice(&data),
                    other => panic!("{marketplace}: body ended early: {other:?}"),
                }
            }
        })
        .await;
        assert!(
            read_first.is_ok(),
            "{marketplace}: the first {first} bytes did not reach the client while the upstream \
             held back the rest (got {} bytes): the response is not streamed",
            got.len()
        );
        assert_eq!(
            got.len(),
            first,
            "{marketplace}: bytes the upstream has not sent"
        );
        Self {
            response,
            got,
            release,
            total: first + rest,
            marketplace: marketplace.to_owned(),
        }
    }

    /// Lets the upstream send the rest and asserts the client gets every byte, in order.
    pub async fn finish(mut self) {
        self.release.release();
        let rest = tokio::time::timeout(
            Duration::from_secs(10),
            read_to_end(self.response.body_mut()),
        )
        .await
        .unwrap()
        .unwrap();
        self.got.extend_from_slice(&rest);
        assert!(
            self.got == pattern(self.total),
            "{}: bytes differ",
            self.marketplace
        );
    }
}

/// The next data bytes of a streamed body (skipping trailers), `None` at its end.
pub async fn next_data(body: &mut Incoming) -> Option<Result<Bytes, String>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(e) => return Some(Err(e.to_string())),
        }
    }
}

/// Reads a streamed body to its end: the bytes, or the error and the bytes before it.
pub async fn read_to_end(body: &mut Incoming) -> Result<Vec<u8>, (String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(next) = next_data(body).await {
        match next {
            Ok(data) => out.extend_from_slice(&data),
            Err(e) => return Err((e, out)),
        }
    }
    Ok(out)
}

/// Writes raw bytes to `addr` and reads what comes back until the server closes or
/// `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a raw HTTP/1.1 reply.
pub fn raw_body(reply: &str) -> &str {
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// `GET /metrics` on an admin listener.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let reply = get(&client(), &format!("http://{admin}/metrics"), &[]).await;
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// The value of one series (`name{labels}` exactly as printed) in a metrics text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// ISO 8601 (`2026-11-23T18:00:00Z`), as the credential endpoints write expirations.
pub fn iso8601(time: SystemTime) -> String {
    let amz = sigv4_verifier::format_amz_date(time);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &amz[0..4],
        &amz[4..6],
        &amz[6..8],
        &amz[9..11],
        &amz[11..13],
        &amz[13..15]
    )
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for credential endpoints (container credentials,
/// STS): `answer` gets (method, path and query, headers, body) and returns (status, body).
pub async fn http_endpoint<F>(answer: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(&str, &str, &http::HeaderMap, &[u8]) -> (u16, String) + Send + Sync + 'static,
{
    http_endpoint_with_headers(move |method, target, headers, body| {
        let (status, text) = answer(method, target, headers, body);
        (status, Vec::new(), text)
    })
    .await
}

/// [`http_endpoint`] whose answers carry headers too (IMDS sends the token's TTL in one, the
/// SSO services their error type): `answer` returns (status, headers, body).
pub async fn http_endpoint_with_headers<F>(answer: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(&str, &str, &http::HeaderMap, &[u8]) -> (u16, Vec<(String, String)>, String)
        + Send
        + Sync
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let answer = Arc::clone(&answer);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let target = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/");
                        let (status, headers, text) =
                            answer(parts.method.as_str(), target, &parts.headers, &body);
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        for (name, value) in headers {
                            response.headers_mut().insert(
                                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                                http::HeaderValue::from_str(&value).unwrap(),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A container-credentials endpoint (EKS Pod Identity / ECS) that hands out a new key every
/// `period`, each valid for `lifetime`, and adds every key it issues to `keys` (with its
/// expiry, so the upstreams refuse it afterwards).
pub struct RotatingCredentials {
    pub addr: SocketAddr,
    /// The `Authorization` header of every call.
    pub authorizations: Arc<Mutex<Vec<String>>>,
    _task: JoinHandle<()>,
}

/// The token the proxy must present to the container-credentials endpoint.
pub const POD_IDENTITY_TOKEN: &str = "eks-pod-identity-token-value";

impl RotatingCredentials {
    pub async fn start(keys: KeyRing, period: Duration, lifetime: Duration) -> Self {
        let authorizations = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen_auth = Arc::clone(&authorizations);
        let (addr, task) = http_endpoint(move |_method, target, headers, _body| {
            seen_auth.lock().unwrap().push(
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            );
            if target != "/v1/credentials" {
                return (404, String::new());
            }
            let now = SystemTime::now();
            let epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            let slot = epoch.as_secs() / period.as_secs();
            let start = SystemTime::UNIX_EPOCH + Duration::from_secs(slot * period.as_secs());
            let expiry = start + lifetime;
            let id = format!("ASIAROTATING{slot}");
            let secret = format!("secret/{slot}+rotating");
            keys.lock()
                .unwrap()
                .insert(id.clone(), (secret.clone(), Some(expiry)));
            let body = serde_json::json!({
                "AccessKeyId": id,
                "SecretAccessKey": secret,
                "Token": format!("token-{slot}"),
                "Expiration": iso8601(expiry),
                "AccountId": "123456789012",
            });
            (200, body.to_string())
        })
        .await;
        Self {
            addr,
            authorizations,
            _task: task,
        }
    }

    /// Points the binary's AWS chain at this endpoint (the token file goes into `pki`'s
    /// directory).
    pub fn configure(&self, command: &mut tokio::process::Command, pki: &Pki) {
        let token_file = pki.write("pod-identity-token", POD_IDENTITY_TOKEN);
        command
            .env(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://127.0.0.1:{}/v1/credentials", self.addr.port()),
            )
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    }
}

/// A TLS upstream (certificate for 127.0.0.1 and localhost) answering every request like the
/// load test's nginx: 200 with a small JSON body. For the benches.
pub async fn fixed_upstream(pki: &Pki) -> SocketAddr {
    let leaf = pki.leaf(&["127.0.0.1", "localhost"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(&leaf));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(b"{\"benefits\":[]}")));
                    response.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}
