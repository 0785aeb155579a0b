//! The listener certificate check never holds up the runtime: with the default single worker
//! thread, a certificate file whose read blocks (here a FIFO nobody writes yet, as a hung
//! network volume would) must not stop the proxy from answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;

/// A proxy (the real binary) serving inbound TLS from certificate files, answering, and then
/// its certificate file replaced by a FIFO: opening it for reading blocks until someone writes.
struct Served {
    proxy: ProxyProcess,
    cert_file: std::path::PathBuf,
    leaf: Leaf,
    _upstream: FakeUpstream,
    _pki: Pki,
}

async fn serve_with_a_certificate_fifo() -> Served {
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    let cert_file = pki.write("tls.crt", &leaf.cert_pem);
    let key_file = pki.write("tls.key", &leaf.key_pem);
    let extra = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let command = command_with_static_key(pki.dir.path());
    let proxy = ProxyProcess::start(command, &config_file(&pki, &upstream, &extra)).await;
    let healthz = format!("http://{}/healthz", proxy.admin);
    assert_eq!(get(&client(), &healthz, &[]).await.status, 200);
    std::fs::remove_file(&cert_file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&cert_file)
        .status()
        .unwrap();
    assert!(made.success());
    Served {
        proxy,
        cert_file,
        leaf,
        _upstream: upstream,
        _pki: pki,
    }
}

#[tokio::test]
async fn a_certificate_read_that_blocks_does_not_stop_the_single_worker() {
    // worker_threads is 1 by default: one blocked thread would be the whole proxy.
    let Served {
        proxy,
        cert_file,
        leaf,
        _upstream,
        _pki,
    } = serve_with_a_certificate_fifo().await;
    let client = client();
    let healthz = format!("http://{}/healthz", proxy.admin);

    // Longer than one check interval (5 s): a check starts meanwhile and blocks on the FIFO.
    let until = Instant::now() + Duration::from_secs(7);
    let mut answered = 0;
    while Instant::now() < until {
        let asked = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(3), get(&client, &healthz, &[]))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "/healthz not answered within 3 s while the certificate read blocks \
                     ({answered} answered before)"
                )
            });
        assert_eq!(reply.status, 200);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Now the certificate comes through the FIFO, and the check that was waiting on it
    // finishes: it had been blocked all along, off the runtime.
    let pem = leaf.cert_pem.clone();
    let fifo = cert_file.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        file.write_all(pem.as_bytes()).unwrap();
    });
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("nobody was reading the FIFO")
        .unwrap();
    let reloaded = eventually(Duration::from_secs(10), || {
        proxy.logs().contains("listener TLS certificate reloaded")
    })
    .await;
    assert!(reloaded, "{}", proxy.logs());
    assert_eq!(get(&client, &healthz, &[]).await.status, 200);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn sigterm_while_a_certificate_read_blocks_exits_at_once() {
    let Served {
        proxy,
        _upstream,
        _pki,
        ..
    } = serve_with_a_certificate_fifo().await;
    let healthz = format!("http://{}/healthz", proxy.admin);
    // A check starts within one interval and blocks on the FIFO, for ever: nobody writes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(get(&client(), &healthz, &[]).await.status, 200);
    let asked = Instant::now();
    assert_eq!(proxy.terminate().await.code(), Some(0));
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        asked.elapsed()
    );
}
