//! prime-sigv4-proxy: a localhost signing sidecar for Amazon Prime APIs.
//!
//! An application sends a plain HTTP request with an `x-amz-marketplace` header; the proxy
//! routes it to the marketplace's Prime region, signs it with AWS SigV4 using IAM role
//! credentials, forwards it over pooled TLS connections with retries and rate limits, and
//! streams the answer back.
//!
//! The modules follow a request: [`config`] → [`listener`] → [`route`] → [`prepare`] →
//! [`limit`] → [`sign`] → [`upstream`] → [`respond`], orchestrated by [`proxy`] and logged
//! once by [`access_log`]; beside them [`credentials`] (with [`sso`]), [`memory`] (the budget
//! for buffered bodies), [`admin`] (with [`metrics`]), [`tls`], [`error`] and the leaf
//! [`error_chain`]; [`doctor`] checks a setup with the same parts.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod config;
pub mod credentials;
pub mod doctor;
pub mod error;
pub mod error_chain;
pub mod limit;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod prepare;
pub mod proxy;
pub mod respond;
pub mod route;
pub mod sign;
pub mod sso;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminState;
use crate::config::Config;
use crate::credentials::CredentialStore;
use crate::limit::RateLimiter;
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::route::MarketplaceTable;
use crate::upstream::Upstream;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("region table: {0}")]
    Regions(String),
    #[error(transparent)]
    Client(#[from] upstream::client::ClientError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
}

/// Where signing credentials come from.
pub enum CredentialSource {
    /// The standard AWS chain, with `credentials.role_arn` assumed on top when set.
    DefaultChain,
    /// A given provider (tests and embedding).
    Provider(SharedCredentialsProvider),
}

/// Runs the proxy on the given listeners until `shutdown` completes, then drains in-flight
/// requests for up to `shutdown_grace_ms`. Credentials come from the default AWS chain.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with(
        config,
        listener,
        admin_listener,
        CredentialSource::DefaultChain,
        shutdown,
    )
    .await
}

/// [`run`] with an explicit credential source.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    source: CredentialSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let credentials = CredentialStore::new();
    let table = MarketplaceTable::new(&config.regions).map_err(StartError::Regions)?;
    let limiter = Arc::new(RateLimiter::new(&config.rate_limit, &metrics));
    let memory = MemoryBudget::new(config.listener.max_buffered_bytes);
    // One upstream stack per region, built once with the table.
    let upstream = Upstream::new(
        &config,
        &table,
        Arc::clone(&credentials),
        Arc::clone(&limiter),
        memory,
        &metrics,
    )?;
    let tls = if config.tls.enabled() {
        Some(tls::acceptor(&config.tls)?)
    } else {
        None
    };

    // Background tasks: credential refresh and certificate reload, off the request path.
    let mut background = Vec::new();
    let store = Arc::clone(&credentials);
    let credentials_config = config.credentials.clone();
    background.push(tokio::spawn(async move {
        let (provider, sso) = match source {
            CredentialSource::DefaultChain => (
                credentials::chain_provider(&credentials_config).await,
                sso::SsoLogin::of_selected_profile().await,
            ),
            CredentialSource::Provider(provider) => (provider, None),
        };
        credentials::refresh_forever(provider, sso, store).await;
    }));
    let acceptor = tls.map(|(acceptor, certificate)| {
        background.push(tokio::spawn(certificate.watch()));
        acceptor
    });

    // `[tracing]` and the OTEL_* variables; validated with the configuration.
    let telemetry =
        match telemetry::Settings::resolve(&config.tracing, |name| std::env::var(name).ok())? {
            Some(settings) => Some(telemetry::Telemetry::start(&settings, &config.upstream)?),
            None => None,
        };
    let proxy = Arc::new(
        Proxy::new(&config, table, upstream, Arc::clone(&metrics))
            .with_telemetry(telemetry.clone()),
    );
    // The shared rate limit's leasing and heartbeat task, when `[rate_limit.shared]` is on.
    background.extend(limiter.background().map(tokio::spawn));
    let admin = AdminState::new(Arc::clone(&credentials), Arc::clone(&metrics));

    for region in proxy_regions(&config) {
        tracing::info!(%region, "region configured");
    }
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin_listen = %admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = acceptor.is_some(),
        "prime-sigv4-proxy serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = config.shutdown_grace();
    let handshake_timeout =
        std::time::Duration::from_millis(config.listener.header_read_timeout_ms);

    let proxy_handler = {
        let proxy = Arc::clone(&proxy);
        move |request, received_at| {
            let proxy = Arc::clone(&proxy);
            async move { proxy.handle(request, received_at).await }
        }
    };
    let proxy_options = listener::ServeOptions {
        tls: acceptor,
        builder: listener::http_builder(&config.listener),
        max_connections: config.listener.max_connections,
        handshake_timeout,
        idle_timeout: std::time::Duration::from_millis(config.listener.idle_timeout_ms),
        grace,
        max_header_bytes: config.listener.max_header_bytes,
    };
    let proxy_server = tokio::spawn(listener::serve(
        listener,
        proxy_options,
        proxy_handler,
        stop_rx,
    ));

    let admin_handler = {
        let admin = Arc::clone(&admin);
        let proxy = Arc::clone(&proxy);
        move |request, _received_at| {
            let response = admin.handle(&request, proxy.upstream());
            async move { response }
        }
    };
    // The admin listener keeps answering while the proxy drains (readiness says 503), and
    // stops after it.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_options = listener::ServeOptions {
        tls: None,
        builder: listener::http_builder(&config.listener),
        max_connections: 64,
        handshake_timeout,
        idle_timeout: std::time::Duration::from_millis(config.listener.idle_timeout_ms),
        grace: std::time::Duration::from_secs(1),
        max_header_bytes: config.listener.max_header_bytes,
    };
    let admin_server = tokio::spawn(listener::serve(
        admin_listener,
        admin_options,
        admin_handler,
        admin_stop_rx,
    ));

    shutdown.await;
    tracing::info!(
        grace_ms = config.shutdown_grace_ms,
        "shutting down: no new connections, draining in-flight requests"
    );
    admin.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if let Err(error) = proxy_server.await {
        tracing::error!(%error, "proxy listener task failed");
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin_server.await;
    for task in background {
        task.abort();
    }
    if let Some(telemetry) = telemetry {
        // Waits (bounded) for the export thread to send the last spans.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn proxy_regions(config: &Config) -> impl Iterator<Item = String> + '_ {
    config.regions.iter().map(|(key, region)| {
        format!(
            "{key}: {} ({}) for {}",
            region.endpoint,
            region.signing_region,
            region.marketplaces.join(",")
        )
    })
}
