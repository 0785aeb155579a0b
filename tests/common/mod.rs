//! Real parts for the integration tests: a certificate authority made with rcgen at test
//! time, a TLS upstream on 127.0.0.1 that verifies every SigV4 signature it receives (with
//! the independent verifier in `support/`) and injects faults on demand, the proxy started
//! in-process or as the real binary, and plain clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/sigv4_verifier.rs"]
pub mod sigv4_verifier;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use sigv4_verifier::{ReceivedRequest, VerifyOptions};

/// The static test identity the in-process proxy signs with.
pub const ACCESS_KEY: &str = "AKIDPROXYTEST";
pub const SECRET_KEY: &str = "proxy-test-secret/Key+With=Symbols";
pub const SESSION_TOKEN: &str = "session-token-for-tests-FwoGZXIvYXdzEJr";

/// An LWA access token as Amazon issues them, and its canonical query encoding.
pub const LWA_TOKEN: &str = "Atza|IwEBIJ+kR/9z0Y7Q==";
pub const LWA_TOKEN_CANONICAL: &str = "Atza%7CIwEBIJ%2BkR%2F9z0Y7Q%3D%3D";

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

    /// A server (or client) certificate for `names`, signed by the CA.
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

pub fn server_tls(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------
// The verifying, fault-injecting upstream

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
    /// Close the connection without any response.
    CloseWithoutResponse,
    /// Wait this long, then answer 200.
    Sleep(Duration),
    /// Answer 200 with a chunked body whose second chunk comes after this long.
    StreamSlowly(Duration),
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
}

/// One request as the upstream received it, with the verdict of the SigV4 verifier.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `Ok(access key id, region)` when the signature verified.
    pub verdict: Result<(String, String), String>,
    pub at: std::time::Instant,
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
}

/// Keys the upstream accepts: access key id → (secret, expiry).
pub type KeyRing = Arc<Mutex<HashMap<String, (String, Option<SystemTime>)>>>;

/// A TLS upstream on 127.0.0.1 that records and verifies every request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub endpoint: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<VecDeque<Action>>>,
    pub connections: Arc<AtomicUsize>,
    pub keys: KeyRing,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts on 127.0.0.1 with a certificate from `pki`, accepting the static test key.
    pub async fn start(pki: &Pki) -> Self {
        let keys: KeyRing = Arc::new(Mutex::new(HashMap::new()));
        keys.lock()
            .unwrap()
            .insert(ACCESS_KEY.to_owned(), (SECRET_KEY.to_owned(), None));
        Self::start_with_keys(pki, keys).await
    }

    pub async fn start_with_keys(pki: &Pki, keys: KeyRing) -> Self {
        let leaf = pki.leaf(&["127.0.0.1", "localhost"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(&leaf));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let state = UpstreamState {
            received: Arc::clone(&received),
            script: Arc::clone(&script),
            keys: Arc::clone(&keys),
        };
        let counter = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { state.answer(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            endpoint: format!("https://127.0.0.1:{}", addr.port()),
            received,
            script,
            connections,
            keys,
            task,
        }
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

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

#[derive(Clone)]
struct UpstreamState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Action>>>,
    keys: KeyRing,
}

/// A body that sends 10 bytes of a promised 100, then fails: hyper resets the connection.
struct BrokenBody {
    sent: bool,
}

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent {
            Poll::Ready(Some(Err(std::io::Error::other("injected reset"))))
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"partial\"")))))
        }
    }
}

/// A chunked body: one chunk now, another after a pause, then the end.
struct SlowBody {
    pause: Pin<Box<tokio::time::Sleep>>,
    sent: u8,
}

impl http_body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.sent {
            0 => {
                self.sent = 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"part\":1,")))))
            }
            1 => match self.pause.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.sent = 2;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\"done\":true}")))))
                }
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Ready(None),
        }
    }
}

type TestBody = http_body_util::Either<Full<Bytes>, http_body_util::Either<BrokenBody, SlowBody>>;

impl UpstreamState {
    async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<TestBody>, std::io::Error> {
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
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let verdict = self.verify(parts.method.as_str(), &path, &query, &headers, &body);
        let action = self.script.lock().unwrap().pop_front();
        self.received.lock().unwrap().push(Received {
            method: parts.method.to_string(),
            path,
            query,
            headers,
            body: body.to_vec(),
            verdict: verdict.clone(),
            at: std::time::Instant::now(),
        });
        let action = action.unwrap_or_else(|| Action::Respond {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!("{{\"benefits\":[],\"signatureValid\":{}}}", verdict.is_ok()),
        });
        let full = |status: u16, headers: Vec<(String, String)>, body: String| {
            let mut response = Response::new(TestBody::Left(Full::new(Bytes::from(body))));
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
            Action::StreamSlowly(pause) => Ok(Response::new(TestBody::Right(
                http_body_util::Either::Right(SlowBody {
                    pause: Box::pin(tokio::time::sleep(pause)),
                    sent: 0,
                }),
            ))),
            Action::ResetMidBody => {
                let mut response =
                    Response::new(TestBody::Right(http_body_util::Either::Left(BrokenBody {
                        sent: false,
                    })));
                response.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from_static("100"),
                );
                Ok(response)
            }
            Action::CloseWithoutResponse => Err(std::io::Error::other("injected close")),
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
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A configuration whose three regions all point at `upstream` (keeping their own signing
/// regions and marketplaces), trusting the test CA, with fast retries.
pub fn config_for(upstream: &FakeUpstream, pki: &Pki) -> Config {
    let mut config = Config::default();
    for region in config.regions.values_mut() {
        region.endpoint = upstream.endpoint.clone();
    }
    config.upstream.ca_file = pki.ca_file.display().to_string();
    config.retry.base_delay_ms = 10;
    config.retry.max_delay_ms = 200;
    config.shutdown_grace_ms = 5_000;
    config
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

/// A config file for the binary whose regions all point at `upstream`.
pub fn config_file(pki: &Pki, upstream: &FakeUpstream, extra: &str) -> PathBuf {
    // Top-level keys in `extra` must come before the first table.
    let (top, tables) = match extra.find('[') {
        Some(at) => extra.split_at(at),
        None => (extra, ""),
    };
    let toml = format!(
        "{top}\n[upstream]\nca_file = {ca:?}\n\n[regions.na]\nendpoint = {e:?}\n[regions.eu]\nendpoint = {e:?}\n[regions.fe]\nendpoint = {e:?}\n\n{tables}\n",
        ca = pki.ca_file.display().to_string(),
        e = upstream.endpoint,
    );
    pki.write("proxy.toml", &toml)
}

// ---------------------------------------------------------------------------------------
// Clients

pub type PlainClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
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
                        let (status, text) =
                            answer(parts.method.as_str(), target, &parts.headers, &body);
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
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
