//! Client → proxy (in-process) → local TLS upstream, beside the same client going straight
//! to the upstream over TLS. Both keep their connections alive; the difference is the proxy.
//!
//! `cargo bench --bench end_to_end`

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prime_sigv4_proxy::CredentialSource;
use rustls_pki_types::pem::PemObject;

const PATH: &str = "/v1/customers/benefits?customerIdentifier=Atza%7CIwEBIJ%2BkR%2F9z0Y7Q%3D%3D";

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = common::Pki::new();
    let (upstream, proxy) = runtime.block_on(async {
        let upstream = common::fixed_upstream(&pki).await;
        let mut config = prime_sigv4_proxy::config::Config::default();
        for region in config.regions.values_mut() {
            region.endpoint = format!("https://127.0.0.1:{}", upstream.port());
        }
        config.upstream.ca_file = pki.ca_file.display().to_string();
        let provider =
            SharedCredentialsProvider::new(common::static_credentials(Some(common::SESSION_TOKEN)));
        let proxy = common::start_proxy_with(config, CredentialSource::Provider(provider)).await;
        (upstream, proxy)
    });

    let direct_client = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()).flatten()
        {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector)
    };
    let proxy_client = common::client();
    let direct_url = format!("https://127.0.0.1:{}{PATH}", upstream.port());
    let proxy_url = proxy.url(PATH);

    let mut group = c.benchmark_group("request_round_trip");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("direct_tls", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let request = Request::get(&direct_url)
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default();
                    if let Ok(response) = direct_client.request(request).await {
                        let _ = response.into_body().collect().await;
                    }
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("through_proxy", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let request = Request::get(&proxy_url)
                        .header("x-amz-marketplace", "US")
                        .body(Full::new(Bytes::new()))
                        .unwrap_or_default();
                    let response = proxy_client.request(request).await;
                    match response {
                        Ok(response) => {
                            assert_eq!(response.status(), 200);
                            let _ = response.into_body().collect().await;
                        }
                        Err(e) => panic!("proxy request failed: {e}"),
                    }
                }
                started.elapsed()
            })
        })
    });
    group.finish();
    runtime.block_on(proxy.stop());
}

criterion_group!(benches, bench);
criterion_main!(benches);
