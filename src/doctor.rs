//! `prime-sigv4-proxy doctor`: checks, one by one, whether this setup can get a request
//! signed and answered by Prime, and says what to do when it cannot.
//!
//! Built on the proxy's own parts, so that what passes here works in the proxy: the same
//! configuration loading, credential chain, upstream TLS settings (system roots plus
//! `upstream.ca_file`, verification always on), signer and 403 explanations. Every check is
//! time-bound; the regions are checked side by side, and the credential chain is asked while
//! they are. Nothing secret is printed: of the credentials only the source, the access key
//! id's first 4 characters and the expiry; of the probe only the method, the path (never
//! the query) and the answer.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use bytes::Bytes;
use futures_util::future::join_all;
use http::header::DATE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::Full;
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{Config, ConfigError};
use crate::credentials;
use crate::error_chain::error_chain;
use crate::metrics::{Metrics, RegionMetrics};
use crate::prepare::{self, X_AMZ_MARKETPLACE};
use crate::route::{MarketplaceTable, Region};
use crate::sign::{self, SignedHeaders, SigningIdentity, SigningScope};
use crate::upstream::{auth_failure, client};

/// Exit status when every check passed.
pub const EXIT_OK: u8 = 0;
/// Exit status when a check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status when the configuration (or a doctor argument) is invalid.
pub const EXIT_INVALID: u8 = 2;

/// The credential chain's answer may take this long (IMDS and STS calls included).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(6);
/// One DNS lookup.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// The TLS handshake, once connected.
const TLS_TIMEOUT: Duration = Duration::from_secs(3);
/// The probe request, from dial to the end of its (small) body.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Of the probe's answer, at most this much body is read (for Prime's short 403 message).
const PROBE_BODY_LIMIT: usize = 4096;
/// Prime (API Gateway) refuses signatures dated further than this from its clock.
const SIGV4_WINDOW: Duration = Duration::from_secs(300);
/// Certificates closer than this to their expiry are named in the `tls` line.
const CERT_EXPIRY_NOTICE_DAYS: i64 = 14;

/// What `doctor` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--config`: the TOML file, as for the proxy.
    pub config_file: Option<PathBuf>,
    /// `--marketplace`: check only the region that serves this marketplace.
    pub marketplace: Option<String>,
    /// `--probe-path`: the path (and query) of the signed GET probe.
    pub probe_path: String,
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `config`, `credentials`, `dns`, `connect`, `tls`, `clock` or `signed_probe`.
    pub name: &'static str,
    /// The region key for the per-region checks, else `null`.
    pub region: Option<String>,
    pub ok: bool,
    /// What was found, or what went wrong and what to do about it.
    pub detail: String,
}

impl Check {
    fn pass(name: &'static str, region: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            name,
            region: region.map(str::to_owned),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: &'static str, region: Option<&str>, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            ..Self::pass(name, region, detail)
        }
    }

    /// A check that could not run because an earlier one failed: not passed.
    fn skipped(name: &'static str, region: &str, because: &str) -> Self {
        Self::fail(name, Some(region), format!("skipped: {because}"))
    }
}

/// Every check, in order; `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Self {
        Self {
            ok: checks.iter().all(|check| check.ok),
            checks,
        }
    }

    /// One line per check: `ok`/`FAIL`, the check, the region (`-` for the global ones),
    /// the detail.
    pub fn to_text(&self) -> String {
        let region_width = self
            .checks
            .iter()
            .filter_map(|check| check.region.as_deref().map(str::len))
            .max()
            .unwrap_or(1);
        let mut text = String::new();
        for check in &self.checks {
            let mark = if check.ok { "ok" } else { "FAIL" };
            let region = check.region.as_deref().unwrap_or("-");
            text.push_str(&format!(
                "{mark:<4} {:<12} {region:<region_width$} {}\n",
                check.name, check.detail
            ));
        }
        text
    }

    /// `{"ok": bool, "checks": [{"name", "region", "ok", "detail"}]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| {
            // Strings and booleans always serialise; kept total without a panic.
            String::from("{\"ok\":false,\"checks\":[]}")
        })
    }
}

/// What the doctor found, and the exit status that goes with it.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub exit: u8,
}

/// The doctor cannot check anything: the setup is invalid as given.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("configuration refused: {0}")]
    Config(#[from] ConfigError),
    #[error("region table: {0}")]
    Regions(String),
    #[error("--marketplace {marketplace}: {reason}")]
    Marketplace { marketplace: String, reason: String },
    #[error("--probe-path {path:?}: {reason}")]
    ProbePath { path: String, reason: String },
}

/// Runs every check and returns the report (exit 0 or 1), or only the failed `config`
/// check when the configuration or an argument is invalid (exit 2).
pub async fn run(options: &Options) -> Outcome {
    match Plan::new(options) {
        Ok(plan) => {
            let report = Report::new(plan.run().await);
            let exit = if report.ok { EXIT_OK } else { EXIT_FAILED };
            Outcome { report, exit }
        }
        Err(error) => Outcome {
            report: Report::new(vec![Check::fail("config", None, error.to_string())]),
            exit: EXIT_INVALID,
        },
    }
}

/// The checks to run, from a valid configuration.
struct Plan {
    config: Config,
    config_detail: String,
    regions: Vec<Target>,
    /// The probe's path and canonical query.
    probe: ProbeTarget,
}

/// One region to check.
struct Target {
    region: Arc<Region>,
    /// The marketplace the probe names in `x-amz-marketplace`.
    marketplace: HeaderValue,
    host: String,
    port: u16,
    tls: bool,
}

#[derive(Debug)]
struct ProbeTarget {
    path: String,
    canonical_query: String,
}

impl Plan {
    fn new(options: &Options) -> Result<Self, DoctorError> {
        let config = Config::load(options.config_file.as_deref())?;
        let table = MarketplaceTable::new(&config.regions).map_err(DoctorError::Regions)?;
        let probe = ProbeTarget::new(&options.probe_path)?;
        let chosen = match &options.marketplace {
            None => None,
            Some(marketplace) => {
                let invalid = |reason: String| DoctorError::Marketplace {
                    marketplace: marketplace.clone(),
                    reason,
                };
                let value = HeaderValue::from_str(marketplace)
                    .map_err(|_| invalid("not a header value".to_owned()))?;
                let region = table
                    .route_value(Some(&value))
                    .map_err(|e| invalid(e.to_string()))?;
                Some((Arc::clone(region), value))
            }
        };
        let mut regions = Vec::new();
        for region in table.regions() {
            let marketplace = match &chosen {
                Some((chosen, marketplace)) if chosen.index == region.index => marketplace.clone(),
                Some(_) => continue,
                None => first_marketplace(&config, &region.key)?,
            };
            regions.push(Target::new(Arc::clone(region), marketplace)?);
        }
        let config_detail = config_detail(options.config_file.as_deref(), &config, &regions);
        Ok(Self {
            config,
            config_detail,
            regions,
            probe,
        })
    }

    async fn run(self) -> Vec<Check> {
        let mut checks = vec![Check::pass("config", None, self.config_detail.clone())];
        let upstream = self.config.upstream.clone();
        let tls = tokio::task::spawn_blocking(move || {
            client::tls_config(&upstream).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading the trust roots failed: {e}")));
        let tls = tls.map(Arc::new);

        let connect_timeout = self.config.upstream.connect_timeout();
        let networks =
            join_all(self.regions.iter().map(|target| {
                target.reach(tls.as_ref(), connect_timeout, self.config.upstream.http2)
            }));
        let ((credentials_check, identity), reached) =
            tokio::join!(check_credentials(&self.config), networks);
        checks.push(credentials_check);

        let probes = join_all(self.regions.iter().zip(&reached).map(|(target, reach)| {
            let tls = tls.as_ref().ok();
            let identity = identity.as_ref();
            let plan = &self;
            async move {
                if let Some(because) = &reach.blocked {
                    return vec![
                        Check::skipped("clock", &target.region.key, because),
                        Check::skipped("signed_probe", &target.region.key, because),
                    ];
                }
                match tls {
                    Some(tls) => plan.probe(target, tls, identity).await,
                    None => vec![
                        Check::skipped("clock", &target.region.key, "tls failed"),
                        Check::skipped("signed_probe", &target.region.key, "tls failed"),
                    ],
                }
            }
        }))
        .await;
        for (reach, probe) in reached.into_iter().zip(probes) {
            checks.extend(reach.checks);
            checks.extend(probe);
        }
        checks
    }

    /// The `clock` and `signed_probe` checks of one region: one GET, signed when there are
    /// credentials (unsigned otherwise, for its `Date` only), through the proxy's own client.
    async fn probe(
        &self,
        target: &Target,
        tls: &Arc<rustls::ClientConfig>,
        identity: Option<&SigningIdentity>,
    ) -> Vec<Check> {
        let key = &*target.region.key;
        let request_id = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("doctor"));
        let request = match self.probe_request(target, &request_id, identity) {
            Ok(request) => request,
            Err(reason) => {
                return vec![
                    Check::skipped("clock", key, "no request could be made"),
                    Check::fail("signed_probe", Some(key), reason),
                ]
            }
        };
        // The region's own transport, with metrics nobody scrapes.
        let metrics = Arc::new(RegionMetrics::new(&Metrics::new(), &target.region.key));
        let (transport, gate) = client::build(
            &self.config.upstream,
            (**tls).clone(),
            &target.region.origin,
            &metrics,
        );
        let sent = SystemTime::now();
        let exchange = async {
            let _demand = gate.demand();
            // Only Prime's short 403 message is ever shown (when it cannot quote the request).
            let (parts, body) = transport.probe(request, PROBE_BODY_LIMIT).await?;
            Ok::<_, String>((parts, body, SystemTime::now()))
        };
        let what = format!("GET {}", self.probe.path);
        let (parts, body, received) = match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                let detail = format!("{what}: no answer: {reason}");
                return vec![
                    Check::skipped("clock", key, "the probe got no answer"),
                    Check::fail("signed_probe", Some(key), detail),
                ];
            }
            Err(_) => {
                let detail = format!("{what}: no answer within {} s", PROBE_TIMEOUT.as_secs());
                return vec![
                    Check::skipped("clock", key, "the probe got no answer"),
                    Check::fail("signed_probe", Some(key), detail),
                ];
            }
        };
        let clock = clock_check(key, parts.headers.get(DATE), sent, received);
        let probe = match identity {
            None => Check::skipped("signed_probe", key, "no credentials to sign with"),
            Some(_) => probe_check(key, &what, parts.status, &parts.headers, &body),
        };
        vec![clock, probe]
    }

    /// The probe as the proxy would forward a client's GET: `Host`, a fresh
    /// `x-amz-request-id`, `x-amz-marketplace`, `[upstream.headers]`, signed with the
    /// region's signing region.
    fn probe_request(
        &self,
        target: &Target,
        request_id: &HeaderValue,
        identity: Option<&SigningIdentity>,
    ) -> Result<Request<Full<Bytes>>, String> {
        let uri = prepare::upstream_uri(
            &target.region.origin,
            &self.probe.path,
            &self.probe.canonical_query,
        )
        .map_err(|e| format!("--probe-path: {e}"))?;
        let mut client_headers = HeaderMap::new();
        client_headers.insert(X_AMZ_MARKETPLACE.clone(), target.marketplace.clone());
        let mut headers =
            prepare::forward_headers(client_headers, &target.region.host, request_id, 0);
        let statics = static_headers(&self.config);
        prepare::add_static_headers(&mut headers, &statics);
        if let Some(identity) = identity {
            let scope = SigningScope {
                region: &target.region.signing_region,
                service: &self.config.signing.service,
            };
            sign::sign_request_with(
                &Method::GET,
                &uri,
                &mut headers,
                b"",
                identity,
                scope,
                SystemTime::now(),
                &SignedHeaders::with_static(statics.keys()),
            )
            .map_err(|e| e.to_string())?;
        }
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

impl ProbeTarget {
    fn new(probe_path: &str) -> Result<Self, DoctorError> {
        let invalid = |reason: String| DoctorError::ProbePath {
            path: path_only(probe_path).to_owned(),
            reason,
        };
        let uri: Uri = probe_path
            .parse()
            .map_err(|_| invalid("not a path".to_owned()))?;
        prepare::check_target(&Method::GET, &uri, Version::HTTP_11)
            .map_err(|e| invalid(e.to_string()))?;
        let canonical_query = prepare::normalize_query(uri.query().unwrap_or_default())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            path: uri.path().to_owned(),
            canonical_query,
        })
    }
}

/// The path of a path-and-query: a query may carry an LWA token and is never printed.
fn path_only(path_and_query: &str) -> &str {
    path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path)
}

/// `[upstream.headers]`, as the proxy adds them (validated by the configuration).
fn static_headers(config: &Config) -> HeaderMap {
    config
        .upstream
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

fn first_marketplace(config: &Config, key: &str) -> Result<HeaderValue, DoctorError> {
    let missing = || DoctorError::Regions(format!("regions.{key}.marketplaces is empty"));
    let code = config
        .regions
        .get(key)
        .and_then(|region| region.marketplaces.first())
        .ok_or_else(missing)?;
    HeaderValue::from_str(code.trim()).map_err(|_| missing())
}

fn config_detail(file: Option<&Path>, config: &Config, regions: &[Target]) -> String {
    let source = match file {
        Some(path) => format!("{} (with PRIME_PROXY_* environment)", path.display()),
        None => "built-in defaults (with PRIME_PROXY_* environment)".to_owned(),
    };
    let checked: Vec<String> = regions
        .iter()
        .map(|target| {
            format!(
                "{} = {} ({})",
                target.region.key, target.region.origin, target.region.signing_region
            )
        })
        .collect();
    let mut detail = format!("valid: {source}; checking {}", checked.join(", "));
    for warning in config.warnings() {
        detail.push_str("; note: ");
        detail.push_str(&warning);
    }
    detail
}

impl Target {
    fn new(region: Arc<Region>, marketplace: HeaderValue) -> Result<Self, DoctorError> {
        let bad = |reason: &str| {
            DoctorError::Regions(format!("regions.{}.endpoint: {reason}", region.key))
        };
        let uri: Uri = region.origin.parse().map_err(|_| bad("not a URI"))?;
        let tls = uri.scheme_str() != Some("http");
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            region,
            marketplace,
            host,
            port,
            tls,
        })
    }

    /// `dns`, `connect` and `tls`, each run only when the one before passed.
    async fn reach(
        &self,
        tls: Result<&Arc<rustls::ClientConfig>, &String>,
        connect_timeout: Duration,
        http2: bool,
    ) -> Reach {
        let key = &*self.region.key;
        let mut checks = Vec::new();
        let blocked = |checks: &mut Vec<Check>, names: &[&'static str], because: &str| {
            for name in names {
                checks.push(Check::skipped(name, key, because));
            }
        };

        let addresses = match self.resolve().await {
            Ok((addresses, detail)) => {
                checks.push(Check::pass("dns", Some(key), detail));
                addresses
            }
            Err(detail) => {
                checks.push(Check::fail("dns", Some(key), detail));
                blocked(&mut checks, &["connect", "tls"], "dns failed");
                return Reach::blocked(checks, "dns failed");
            }
        };

        let stream = match connect(&addresses, connect_timeout).await {
            Ok((stream, detail)) => {
                checks.push(Check::pass("connect", Some(key), detail));
                stream
            }
            Err(detail) => {
                let detail = format!(
                    "{detail}: nothing accepts connections there (check regions.{key}.endpoint, \
                     a firewall or an HTTPS proxy in between)"
                );
                checks.push(Check::fail("connect", Some(key), detail));
                blocked(&mut checks, &["tls"], "connect failed");
                return Reach::blocked(checks, "connect failed");
            }
        };

        if !self.tls {
            checks.push(Check::pass(
                "tls",
                Some(key),
                "not used: an http:// endpoint (upstream.allow_plain_http = true)",
            ));
            return Reach::open(checks);
        }
        match tls {
            Err(reason) => {
                checks.push(Check::fail("tls", Some(key), reason.clone()));
                Reach::blocked(checks, "tls failed")
            }
            Ok(tls) => match self.handshake(stream, tls, http2).await {
                Ok(detail) => {
                    checks.push(Check::pass("tls", Some(key), detail));
                    Reach::open(checks)
                }
                Err(detail) => {
                    checks.push(Check::fail("tls", Some(key), detail));
                    Reach::blocked(checks, "tls failed")
                }
            },
        }
    }

    async fn resolve(&self) -> Result<(Vec<SocketAddr>, String), String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok((
                vec![SocketAddr::new(ip, self.port)],
                format!("{ip} is an IP address: no lookup needed"),
            ));
        }
        let started = Instant::now();
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
            Ok(Ok(found)) => {
                let addresses: Vec<SocketAddr> = found.collect();
                if addresses.is_empty() {
                    return Err(format!("{} has no address", self.host));
                }
                let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
                Ok((
                    addresses,
                    format!(
                        "{} → {} in {} ms",
                        self.host,
                        shown.join(", "),
                        started.elapsed().as_millis()
                    ),
                ))
            }
            Ok(Err(error)) => Err(format!(
                "{} does not resolve: {error} (check the name in the endpoint, and the DNS \
                 resolver of this machine or pod)",
                self.host
            )),
            Err(_) => Err(format!(
                "no answer for {} within {} s: the DNS resolver is slow or unreachable",
                self.host,
                DNS_TIMEOUT.as_secs()
            )),
        }
    }

    /// The TLS handshake as the proxy's client makes it (same roots, same ALPN), and what
    /// the endpoint's certificate says.
    async fn handshake(
        &self,
        stream: TcpStream,
        tls: &Arc<rustls::ClientConfig>,
        http2: bool,
    ) -> Result<String, String> {
        let mut config = (**tls).clone();
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("{} is not a TLS server name: {e}", self.host))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = match tokio::time::timeout(TLS_TIMEOUT, connector.connect(name, stream)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(explain_tls_error(&error)),
            Err(_) => {
                return Err(format!(
                    "no TLS handshake within {} s (is this port TLS?)",
                    TLS_TIMEOUT.as_secs()
                ))
            }
        };
        let (_, connection) = stream.get_ref();
        let version = connection
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let certificate = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| describe_certificate(leaf.as_ref()))
            .unwrap_or_else(|| "no certificate details".to_owned());
        Ok(format!(
            "verified for {}; {certificate}; {version}",
            self.host
        ))
    }
}

/// `dns`, `connect` and `tls` of one region, and why the probe cannot run (if it cannot).
struct Reach {
    checks: Vec<Check>,
    blocked: Option<String>,
}

impl Reach {
    fn open(checks: Vec<Check>) -> Self {
        Self {
            checks,
            blocked: None,
        }
    }

    fn blocked(checks: Vec<Check>, because: &str) -> Self {
        Self {
            checks,
            blocked: Some(because.to_owned()),
        }
    }
}

/// Connects to the first address that answers.
async fn connect(
    addresses: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, String), String> {
    let mut failures = Vec::new();
    for address in addresses {
        let started = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let took = started.elapsed().as_secs_f64() * 1000.0;
                return Ok((stream, format!("{address} in {took:.1} ms")));
            }
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => failures.push(format!(
                "{address}: no connection within {} ms (upstream.connect_timeout_ms)",
                timeout.as_millis()
            )),
        }
    }
    Err(failures.join("; "))
}

/// A failed handshake in plain words; an untrusted certificate says where trust comes from.
fn explain_tls_error(error: &std::io::Error) -> String {
    let text = error_chain(error);
    let untrusted = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
    if untrusted {
        format!(
            "certificate not accepted: {text}: the endpoint's certificate must chain to a \
             system root or to upstream.ca_file, and name the endpoint's host"
        )
    } else {
        format!("handshake failed: {text}")
    }
}

/// Issuer and days to expiry of a DER certificate.
fn describe_certificate(der: &[u8]) -> String {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return "certificate not parsed".to_owned();
    };
    let not_after = certificate.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let days = (not_after - now).div_euclid(86_400);
    let soon = if days < CERT_EXPIRY_NOTICE_DAYS {
        " (soon: the endpoint's operator must renew it)"
    } else {
        ""
    };
    format!(
        "issuer {}; expires in {days} days{soon}",
        certificate.issuer()
    )
}

/// The `credentials` check, and the identity to sign the probes with when it passed.
async fn check_credentials(config: &Config) -> (Check, Option<SigningIdentity>) {
    let fetch = async {
        let provider = credentials::chain_provider(&config.credentials).await;
        provider.provide_credentials().await
    };
    let fetched = match tokio::time::timeout(CREDENTIALS_TIMEOUT, fetch).await {
        Ok(Ok(credentials)) => credentials,
        Ok(Err(error)) => {
            let detail = credentials::explain_failure(&error_chain(&error)).await;
            return (Check::fail("credentials", None, detail), None);
        }
        Err(_) => {
            let detail = format!(
                "the AWS credential chain gave no answer within {} s: usually it is waiting \
                 for EC2 instance metadata, which is not reachable here (set \
                 AWS_EC2_METADATA_DISABLED=true off EC2), or for STS",
                CREDENTIALS_TIMEOUT.as_secs()
            );
            return (Check::fail("credentials", None, detail), None);
        }
    };
    let now = SystemTime::now();
    let source = source_in_plain_words(&fetched, config);
    let key = key_prefix(&fetched);
    match fetched.expiry() {
        Some(expiry) if expiry <= now => {
            let detail = format!(
                "{source}: access key {key}, expired {} ago: renew them at the source",
                in_words(now.duration_since(expiry).unwrap_or_default())
            );
            return (Check::fail("credentials", None, detail), None);
        }
        _ => {}
    }
    let expiry = match fetched.expiry() {
        None => "no expiry (long-term keys)".to_owned(),
        Some(expiry) => format!(
            "expire in {} ({}); refreshed before then",
            in_words(expiry.duration_since(now).unwrap_or_default()),
            httpdate::fmt_http_date(expiry)
        ),
    };
    match SigningIdentity::new(&fetched) {
        Ok(identity) => (
            Check::pass(
                "credentials",
                None,
                format!("{source}: access key {key}, {expiry}"),
            ),
            Some(identity),
        ),
        Err(error) => (
            Check::fail("credentials", None, format!("{source}: {error}")),
            None,
        ),
    }
}

/// The access key id's first 4 characters (`AKIA` long-term, `ASIA` temporary), never more.
fn key_prefix(credentials: &Credentials) -> String {
    let prefix: String = credentials.access_key_id().chars().take(4).collect();
    format!("{prefix}…")
}

/// Which source of the chain answered, in plain words. aws-config tags the credentials it
/// returns with the sources they came through (the typed list it also reports in its
/// user agent); `Credentials` has no public getter for its provider name.
fn source_in_plain_words(credentials: &Credentials, config: &Config) -> String {
    use AwsCredentialFeature as Source;
    let sources = credentials
        .get_property::<Vec<AwsCredentialFeature>>()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let any = |wanted: &[Source]| wanted.iter().any(|source| sources.contains(source));
    let profile = std::env::var("AWS_PROFILE")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let base = if any(&[Source::CredentialsSso, Source::CredentialsProfileSso]) {
        Some(format!("profile `{profile}` (SSO)"))
    } else if any(&[
        Source::CredentialsProcess,
        Source::CredentialsProfileProcess,
    ]) {
        Some(format!("profile `{profile}` (credential_process)"))
    } else if any(&[Source::CredentialsLogin, Source::CredentialsProfileLogin]) {
        Some(format!("profile `{profile}` (aws login)"))
    } else if any(&[
        Source::CredentialsProfileStsWebIdToken,
        Source::CredentialsEnvVarsStsWebIdToken,
        Source::CredentialsStsAssumeRoleWebId,
    ]) {
        Some("web identity (AWS_WEB_IDENTITY_TOKEN_FILE, EKS IRSA)".to_owned())
    } else if any(&[Source::CredentialsHttp]) {
        Some("container credentials (ECS, EKS Pod Identity)".to_owned())
    } else if any(&[Source::CredentialsImds]) {
        Some("EC2 instance metadata (IMDSv2)".to_owned())
    } else if any(&[Source::CredentialsProfile]) && any(&[Source::CredentialsStsAssumeRole]) {
        Some(format!("profile `{profile}` (assumed role)"))
    } else if any(&[Source::CredentialsProfile]) {
        Some(format!("profile `{profile}`"))
    } else if any(&[Source::CredentialsEnvVars]) {
        Some("environment (AWS_ACCESS_KEY_ID)".to_owned())
    } else {
        None
    };
    let role_arn = &config.credentials.role_arn;
    match (role_arn.is_empty(), base) {
        (true, Some(base)) => base,
        (true, None) => "the AWS credential chain".to_owned(),
        (false, Some(base)) => {
            format!("assumed role {role_arn} (credentials.role_arn) on top of {base}")
        }
        (false, None) => format!("assumed role {role_arn} (credentials.role_arn)"),
    }
}

/// A duration as a person reads it: `45 s`, `58 min` (to the nearest minute), `5 h 3 min`,
/// `3 days`.
fn in_words(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7_199 => format!("{} min", (seconds + 30) / 60),
        7_200..=172_799 => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{} days", seconds / 86_400),
    }
}

/// The `clock` check: this machine's time against the endpoint's `Date`, taken half-way
/// through the exchange (`Date` has whole seconds, so ±1 s is noise).
fn clock_check(
    key: &str,
    date: Option<&HeaderValue>,
    sent: SystemTime,
    received: SystemTime,
) -> Check {
    let Some(date) = date.and_then(|v| v.to_str().ok()) else {
        return Check::fail(
            "clock",
            Some(key),
            "the endpoint sent no Date header: the skew cannot be measured",
        );
    };
    let Ok(server) = httpdate::parse_http_date(date) else {
        return Check::fail(
            "clock",
            Some(key),
            format!("the endpoint's Date {date:?} is not an HTTP date"),
        );
    };
    let local = sent + received.duration_since(sent).unwrap_or_default() / 2;
    let (skew, direction) = match server.duration_since(local) {
        Ok(ahead) => (ahead, "behind"),
        Err(behind) => (behind.duration(), "ahead of"),
    };
    let rounded = Duration::from_secs(skew.as_secs_f64().round() as u64);
    if rounded <= Duration::from_secs(1) {
        return Check::pass(
            "clock",
            Some(key),
            "in step with the endpoint's Date (within 1 s)",
        );
    }
    let said = format!(
        "this machine's clock is {} {direction} the endpoint's Date",
        in_words(rounded)
    );
    if skew < SIGV4_WINDOW {
        Check::pass(
            "clock",
            Some(key),
            format!("{said}: within the 5 min Prime allows"),
        )
    } else {
        Check::fail(
            "clock",
            Some(key),
            format!(
                "{said}: Prime refuses signatures more than 5 min off \
                 (InvalidSignatureException); sync this machine's clock (NTP)"
            ),
        )
    }
}

/// The `signed_probe` check: any answer but 403 means Prime accepted the signature; a 403
/// is explained per `x-amzn-ErrorType` in the request log's words.
fn probe_check(
    key: &str,
    what: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Check {
    if status != StatusCode::FORBIDDEN {
        return Check::pass(
            "signed_probe",
            Some(key),
            format!("{what} → {status}: the signature was accepted (any answer but 403 means so)"),
        );
    }
    let kind = auth_failure::kind(headers);
    let mut detail = format!("{what} → 403 {kind}: {}", auth_failure::hint(kind));
    if kind == "MissingAuthenticationTokenException" {
        detail.push_str(" (with --probe-path, probe a route your API has)");
    }
    if let Some(message) = auth_failure::safe_message(body) {
        detail.push_str(&format!("; Prime says {message:?}"));
    }
    Check::fail("signed_probe", Some(key), detail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_skew_beyond_the_sigv4_window_fails_and_a_small_one_passes() {
        let sent = SystemTime::now();
        let received = sent + Duration::from_millis(20);
        let date = |offset: i64| {
            let at = if offset >= 0 {
                sent + Duration::from_secs(offset as u64)
            } else {
                sent - Duration::from_secs(offset.unsigned_abs())
            };
            HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap()
        };
        assert!(clock_check("na", Some(&date(0)), sent, received).ok);
        assert!(clock_check("na", Some(&date(120)), sent, received).ok);
        let ahead = clock_check("na", Some(&date(900)), sent, received);
        assert!(!ahead.ok);
        assert!(ahead.detail.contains("15 min behind"), "{}", ahead.detail);
        let behind = clock_check("na", Some(&date(-900)), sent, received);
        assert!(!behind.ok);
        assert!(behind.detail.contains("ahead of"), "{}", behind.detail);
        assert!(!clock_check("na", None, sent, received).ok);
    }

    #[test]
    fn the_probe_path_query_is_never_shown() {
        let error = ProbeTarget::new("/v1/../x?customerIdentifier=Atza%7Csecret").unwrap_err();
        assert!(!error.to_string().contains("Atza"), "{error}");
        let probe = ProbeTarget::new("/v1/ping?customerIdentifier=Atza|x").unwrap();
        assert_eq!(probe.path, "/v1/ping");
        assert_eq!(probe.canonical_query, "customerIdentifier=Atza%7Cx");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(in_words(Duration::from_secs(45)), "45 s");
        assert_eq!(in_words(Duration::from_secs(58 * 60 + 5)), "58 min");
        assert_eq!(in_words(Duration::from_secs(15 * 60 - 1)), "15 min");
        assert_eq!(in_words(Duration::from_secs(5 * 3600 + 180)), "5 h 3 min");
        assert_eq!(in_words(Duration::from_secs(3 * 86_400)), "3 days");
    }
}
