//! One region's upstream client over rustls, trusting the system roots plus
//! `upstream.ca_file`: hyper-util's pooled HTTP/1.1 client, or with `upstream.http2` our own
//! HTTP/2 pool ([`super::h2pool`]). Each region has
//! its own client, pool and connection gate: traffic to one endpoint never waits for, or
//! shares connections with, another.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::gate::{ConnectionGate, GatedConnector, GatedStream};
use super::h2pool::H2Pool;
use crate::config::UpstreamConfig;
use crate::metrics::RegionMetrics;

/// The pooled TLS client every HTTP/1.1 upstream attempt goes through.
pub type UpstreamClient = Client<HttpsConnector<GatedConnector<HttpConnector>>, Full<Bytes>>;

/// TCP and TLS (ALPN `h2` only) for the region's HTTP/2 pool.
pub type H2Connector = HttpsConnector<GatedConnector<HttpConnector>>;

/// One connection [`H2Connector`] opens.
pub type H2Stream = hyper_rustls::MaybeHttpsStream<GatedStream<TokioIo<tokio::net::TcpStream>>>;

/// How one region's attempts reach its endpoint.
// One per region, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    /// hyper-util's pooled client (HTTP/1.1).
    Http1(UpstreamClient),
    /// Our own pool of HTTP/2 connections (`upstream.http2`).
    Http2(H2Pool),
}

/// The upstream client could not be built (a bad `upstream.ca_file`, no roots at all).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("no trusted root certificates: the system has none and upstream.ca_file is not set")]
    NoRoots,
}

/// System roots plus the PEM certificates of `ca_file`.
fn root_store(config: &UpstreamConfig) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "some system root certificates could not be loaded");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    let mut extra = 0;
    if !config.ca_file.is_empty() {
        let ca_error = |reason: String| ClientError::CaFile {
            path: config.ca_file.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(&config.ca_file)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("contains no PEM certificate".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            extra += 1;
        }
    }
    if roots.is_empty() {
        return Err(ClientError::NoRoots);
    }
    tracing::debug!(system = added, extra, "upstream trust roots loaded");
    Ok(roots)
}

/// The TLS settings every region's client shares: built once (loading the system roots is
/// slow). Verification is always on: there is no switch to turn it off.
pub fn tls_config(config: &UpstreamConfig) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ClientError::NoRoots)?
        .with_root_certificates(root_store(config)?)
        .with_no_client_auth())
}

/// One region's transport, and the gate that keeps its connection count at what that
/// region's requests need (and counts its open connections).
pub fn build(
    config: &UpstreamConfig,
    tls: rustls::ClientConfig,
    endpoint: &str,
    metrics: &Arc<RegionMetrics>,
) -> (Transport, Arc<ConnectionGate>) {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout()));
    http.set_keepalive(Some(std::time::Duration::from_secs(30)));
    let gate = ConnectionGate::new();
    // The HTTP/2 pool opens a connection only when the open ones are at their stream limit:
    // nothing to hold back. Otherwise an unneeded dial waits as long as an attempt may, then
    // gives up.
    let patience = (!config.http2).then(|| config.attempt_timeout());
    let http = GatedConnector::new(http, Arc::clone(&gate), patience);
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if config.allow_plain_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    if config.http2 {
        // Prime has agreed to HTTP/2: offer only `h2`.
        let connector = builder.enable_http2().wrap_connector(http);
        // Validated by config: every endpoint is a URI.
        let endpoint = endpoint.parse().unwrap_or_default();
        let pool = H2Pool::new(
            connector,
            endpoint,
            config.http2_max_connections,
            config.pool_idle_timeout(),
            config.attempt_timeout(),
            Arc::clone(metrics),
        );
        return (Transport::Http2(pool), gate);
    }
    let connector = builder.enable_http1().wrap_connector(http);
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout())
        .pool_max_idle_per_host(config.pool_max_idle_per_host);
    (Transport::Http1(client.build(connector)), gate)
}

impl Transport {
    /// One request outside the retry loop (`doctor`'s probe), over whichever protocol the
    /// region uses: the response head and at most `limit` bytes of its body.
    pub async fn probe(
        &self,
        request: http::Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(http::response::Parts, Bytes), String> {
        use http_body_util::{BodyExt, Limited};
        match self {
            Transport::Http1(client) => {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| crate::error_chain::error_chain(&e))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, limit).collect().await;
                Ok((parts, body.map(|b| b.to_bytes()).unwrap_or_default()))
            }
            Transport::Http2(pool) => {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let response = pool
                    .send(&parts, &body)
                    .await
                    .map_err(|e| crate::error_chain::error_chain(&e))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, limit).collect().await;
                Ok((parts, body.map(|b| b.to_bytes()).unwrap_or_default()))
            }
        }
    }
}
