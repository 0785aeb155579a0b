//! The listener over TLS (`[tls]`): server certificates, mutual TLS, and certificate rotation
//! without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS client trusting `ca_pem`, optionally presenting `identity`.
fn tls_client(ca_pem: &str, identity: Option<&Leaf>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    // A resumed session reports the certificate of the session it resumes: each connection
    // must show the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One request over TLS; returns the served certificate and the raw reply (or the error).
async fn request_over_tls(
    proxy: &TestProxy,
    connector: &tokio_rustls::TlsConnector,
) -> Result<(CertificateDer<'static>, String), std::io::Error> {
    let tcp = TcpStream::connect(proxy.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    tls.write_all(
        b"GET /v1/tls HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut reply))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok((served, String::from_utf8_lossy(&reply).into_owned()))
}

fn der(leaf: &Leaf) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn the_listener_serves_tls_and_reloads_a_rotated_certificate() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let first = pki.leaf(&["localhost"]);
    let cert_file = pki.write("tls.crt", &first.cert_pem);
    let key_file = pki.write("tls.key", &first.key_pem);
    let mut config = config_for_regions(&ups, &pki);
    config.tls.cert_file = cert_file.display().to_string();
    config.tls.key_file = key_file.display().to_string();
    let proxy = start_proxy(config).await;
    let connector = tls_client(&pki.ca_pem(), None);

    let (served, reply) = request_over_tls(&proxy, &connector).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(served, der(&first));
    ups.na.requests()[0].assert_signed();

    // Plain HTTP on a TLS listener gets nowhere.
    let plain = raw(
        proxy.addr,
        b"GET /v1/tls HTTP/1.1\r\nHost: x\r\nx-amz-marketplace: US\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(!plain.contains("HTTP/1.1 200"));

    // A half-written rotation (certificate without its key) is ignored...
    let second = pki.leaf(&["localhost"]);
    pki.write("tls.crt", &second.cert_pem);
    tokio::time::sleep(prime_sigv4_proxy::tls::RELOAD_INTERVAL + Duration::from_millis(500)).await;
    let (served, _) = request_over_tls(&proxy, &connector).await.unwrap();
    assert_eq!(
        served,
        der(&first),
        "a mismatched pair must not replace a working one"
    );
    // ...and the completed rotation is picked up without a restart.
    pki.write("tls.key", &second.key_pem);
    let mut rotated = false;
    for _ in 0..((prime_sigv4_proxy::tls::RELOAD_INTERVAL.as_millis() / 250) + 8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (served, reply) = request_over_tls(&proxy, &connector).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"));
        if served == der(&second) {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the rotated certificate was not served");
    proxy.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_configured_ca() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let server = pki.leaf(&["localhost"]);
    let clients = Pki::new();
    let mut config = config_for_regions(&ups, &pki);
    config.tls.cert_file = pki.write("tls.crt", &server.cert_pem).display().to_string();
    config.tls.key_file = pki.write("tls.key", &server.key_pem).display().to_string();
    config.tls.client_ca_file = pki
        .write("clients-ca.pem", &clients.ca_pem())
        .display()
        .to_string();
    let proxy = start_proxy(config).await;

    let trusted = clients.leaf(&["app.prime.svc"]);
    let (_, reply) = request_over_tls(&proxy, &tls_client(&pki.ca_pem(), Some(&trusted)))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let anonymous = request_over_tls(&proxy, &tls_client(&pki.ca_pem(), None)).await;
    assert!(
        anonymous.is_err() || !anonymous.unwrap().1.contains("200"),
        "no client certificate must be refused"
    );
    let stranger = pki.leaf(&["stranger"]);
    let foreign = request_over_tls(&proxy, &tls_client(&pki.ca_pem(), Some(&stranger))).await;
    assert!(
        foreign.is_err() || !foreign.unwrap().1.contains("200"),
        "a certificate from another CA must be refused"
    );
    assert_eq!(ups.na.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_missing_or_broken_certificate_refuses_to_start() {
    let pki = Pki::new();
    let ups = Upstreams::start(&pki).await;
    let leaf = pki.leaf(&["localhost"]);
    let other = pki.leaf(&["localhost"]);
    let cases = [
        (
            "/nonexistent/tls.crt".to_owned(),
            pki.write("k1.pem", &leaf.key_pem).display().to_string(),
            "tls.cert_file",
        ),
        (
            pki.write("c2.pem", "not a pem").display().to_string(),
            pki.write("k2.pem", &leaf.key_pem).display().to_string(),
            "tls.cert_file",
        ),
        (
            pki.write("c3.pem", &leaf.cert_pem).display().to_string(),
            pki.write("k3.pem", &other.key_pem).display().to_string(),
            "tls.key_file",
        ),
    ];
    for (cert, key, named) in cases {
        let mut config = config_for_regions(&ups, &pki);
        config.tls.cert_file = cert;
        config.tls.key_file = key;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let error = prime_sigv4_proxy::run(config, listener, admin, std::future::pending())
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains(named),
            "{error} does not name {named}"
        );
    }
}
