//! Inbound TLS for the listener (`[tls]`): a rustls server whose certificate is re-read when
//! its files change (cert-manager rotates them), with optional client certificates.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::InboundTlsConfig;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("tls: {0}")]
    Config(String),
}

/// The current certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// Modification times of (cert, key) when last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_key(
    cert_file: &PathBuf,
    key_file: &PathBuf,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let file_error = |key: &'static str, path: &PathBuf, reason: String| TlsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("tls.cert_file", cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            "tls.cert_file",
            cert_file,
            "contains no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_error("tls.key_file", key_file, e.to_string()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error("tls.key_file", key_file, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        file_error(
            "tls.key_file",
            key_file,
            format!("does not match tls.cert_file: {e}"),
        )
    })?;
    Ok(certified)
}

impl ReloadingCertificate {
    fn load(config: &InboundTlsConfig, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let cert_file = PathBuf::from(&config.cert_file);
        let key_file = PathBuf::from(&config.key_file);
        let stamps = (modified(&cert_file), modified(&key_file));
        let certified = load_key(&cert_file, &key_file, &provider)?;
        Ok(Self {
            current: ArcSwap::from_pointee(certified),
            loaded: Mutex::new(stamps),
            cert_file,
            key_file,
            provider,
        })
    }

    /// Re-reads the files if either changed. A broken new pair (half-written during a
    /// rotation) is logged and the previous certificate kept.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = (modified(&self.cert_file), modified(&self.key_file));
        {
            let Ok(loaded) = self.loaded.lock() else {
                return false;
            };
            if *loaded == stamps {
                return false;
            }
        }
        match load_key(&self.cert_file, &self.key_file, &self.provider) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                if let Ok(mut loaded) = self.loaded.lock() {
                    *loaded = stamps;
                }
                tracing::info!(cert_file = %self.cert_file.display(), "listener TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "new listener TLS certificate not usable; keeping the previous one");
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`] for ever (aborted at shutdown).
    ///
    /// Each check runs on the blocking pool: `stat`, reading and parsing the files must not
    /// hold up a runtime worker (the default is a single one), whatever the file system does
    /// (a slow network volume, a FIFO nobody writes).
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let certificate = Arc::clone(&self);
            // A check that never returns keeps this task waiting, so checks never pile up.
            if let Err(error) =
                tokio::task::spawn_blocking(move || certificate.reload_if_changed()).await
            {
                tracing::warn!(%error, "listener TLS certificate check failed");
            }
        }
    }
}

/// The acceptor for the listener, and the certificate holder to watch for changes.
pub fn acceptor(
    config: &InboundTlsConfig,
) -> Result<(TlsAcceptor, Arc<ReloadingCertificate>), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certificate = Arc::new(ReloadingCertificate::load(config, Arc::clone(&provider))?);
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if config.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let ca_error = |reason: String| TlsError::File {
            key: "tls.client_ca_file",
            path: config.client_ca_file.clone(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&config.client_ca_file)
            .map_err(|e| ca_error(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| ca_error(e.to_string()))?)
                .map_err(|e| ca_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("contains no PEM certificate".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ca_error(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder.with_cert_resolver(certificate.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(server)), certificate))
}
