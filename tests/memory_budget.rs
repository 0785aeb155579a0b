//! The memory budget under a burst of large uploads, with the real binary: every request is
//! answered 200 or 503 `overloaded` (none lost), the process stays alive, and its peak RSS
//! stays under the budget plus a fixed overhead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// What the process needs besides buffered bodies: code, runtime, TLS and connection state
/// for a few hundred connections (measured: see README, "Memory budget").
const FIXED_OVERHEAD_MIB: u64 = 56;

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_uploads_stays_inside_the_budget_and_nothing_is_lost() {
    const UPLOADS: usize = 300;
    const BUDGET_MIB: u64 = 64; // the default listener.max_buffered_bytes
    let pki = Pki::new();
    let upstream = FakeUpstream::start(&pki).await;
    // A slow upstream: every request it gets waits, so bodies stay buffered meanwhile.
    upstream.push((0..UPLOADS).map(|_| Action::Sleep(Duration::from_millis(1500))));
    let command = command_with_static_key(pki.dir.path());
    let proxy = ProxyProcess::start(command, &config_file(&pki, &upstream, "")).await;
    let pid = proxy.child.id().unwrap();
    let body = Bytes::from(vec![b'x'; 1024 * 1024]);
    let url = proxy.url("/v1/link");
    let tasks: Vec<_> = (0..UPLOADS)
        .map(|_| {
            let body = body.clone();
            let url = url.clone();
            tokio::spawn(async move {
                // One connection per upload, as 300 separate callers would.
                let client = client();
                let request = Request::post(url)
                    .header("x-amz-marketplace", "DE")
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(body))
                    .unwrap();
                send(&client, request).await
            })
        })
        .collect();
    let (mut ok, mut overloaded) = (0, 0);
    for task in tasks {
        let reply = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("an upload got no answer")
            .unwrap();
        match reply.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(reply.json()["error"], "overloaded");
                assert!(reply.header("retry-after").is_some());
                overloaded += 1;
            }
            other => panic!("status {other}: {:?}", reply.body),
        }
    }
    assert_eq!(ok + overloaded, UPLOADS);
    assert!(
        ok > 0 && overloaded > 0,
        "{ok} answered, {overloaded} overloaded"
    );
    // Counted by their reason: the budget, not the in-flight limit (1024, above 300).
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"prime_proxy_overloaded_total{reason="memory_budget"}"#
        ),
        Some(overloaded as f64)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"prime_proxy_overloaded_total{reason="in_flight"}"#
        ),
        Some(0.0)
    );
    // Every upload that was forwarded arrived whole.
    for received in upstream.requests() {
        assert_eq!(received.body.len(), 1024 * 1024);
        received.assert_signed();
    }
    let peak = peak_rss_mib(pid);
    eprintln!("{ok} answered 200, {overloaded} overloaded; peak RSS {peak} MiB");
    assert!(
        peak < BUDGET_MIB + FIXED_OVERHEAD_MIB,
        "peak RSS {peak} MiB over the {BUDGET_MIB} MiB budget + {FIXED_OVERHEAD_MIB} MiB"
    );
    // Still serving.
    let after = get(
        &client(),
        &proxy.url("/v1/benefits"),
        &[("x-amz-marketplace", "US")],
    )
    .await;
    assert_eq!(after.status, 200);
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
