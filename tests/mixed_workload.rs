//! The real binary under a production-shaped mix for about ten seconds: three
//! regions on three endpoints, keep-alive and one-shot clients, GETs and POSTs, small, large,
//! chunked and buffered responses, about 5% of first attempts failing (503, connection closed
//! without an answer), container credentials rotating every 2 s, and clients arriving one by
//! one as traffic ramps up after start. Zero requests may fail
//! at the client, and every signature must verify at the upstream it reached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const RUN_FOR: Duration = Duration::from_secs(10);
const KEEP_ALIVE_CLIENTS: usize = 8;
const ONE_SHOT_CLIENTS: usize = 2;
/// How long the first client is alone.
const ALONE: Duration = Duration::from_millis(3_000);
/// A request slower than this counts as failed: nothing here takes a tenth of it, and a
/// request held back behind another region's connection takes the attempt timeout (2 s).
const TOO_SLOW: Duration = Duration::from_millis(1_500);
/// Between one client's start and the next one's, after that.
const RAMP_UP: Duration = Duration::from_millis(100);
/// One first attempt in this many fails (5%).
const FAULT_EVERY: usize = 20;

const MARKETPLACES: [&str; 9] = ["US", "DE", "JP", "CA", "FR", "SG", "MX", "UK", "AU"];

/// What one request asks for and what the client must get back.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Small,
    Post,
    Chunked(usize),
    Sized(usize),
}

fn kind(i: usize) -> Kind {
    match i % 10 {
        6 => Kind::Post,
        7 => Kind::Chunked(64 * 1024),
        8 => Kind::Sized(300 * 1024),
        9 => Kind::Sized(20 * 1024),
        _ => Kind::Small,
    }
}

/// Sends one request; `Err` says what went wrong.
async fn one(
    client: &PlainClient,
    url: &str,
    marketplace: &str,
    id: &str,
    kind: Kind,
) -> Result<(), String> {
    let mut builder = Request::get(url)
        .header("x-amz-marketplace", marketplace)
        .header("x-amz-request-id", id);
    let mut body = Bytes::new();
    match kind {
        Kind::Small => {}
        Kind::Post => {
            builder = builder
                .method("POST")
                .header("content-type", "application/json");
            body = Bytes::from(format!(
                "{{\"customerIdentifier\":\"Atza|{id}+/=\",\"pad\":\"{}\"}}",
                "p".repeat(2048)
            ));
        }
        Kind::Chunked(len) => builder = builder.header(ASK_CHUNKED, len.to_string()),
        Kind::Sized(len) => builder = builder.header(ASK_LENGTH, len.to_string()),
    }
    let request = builder.body(Full::new(body)).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let mut incoming = response.into_body();
    let bytes = read_to_end(&mut incoming)
        .await
        .map_err(|(e, got)| format!("{status}: body broken after {} bytes: {e}", got.len()))?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    let fine = match kind {
        Kind::Small | Kind::Post => serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|json| json["signatureValid"] == true),
        Kind::Chunked(len) | Kind::Sized(len) => bytes == pattern(len),
    };
    if fine {
        Ok(())
    } else {
        Err(format!("{kind:?}: wrong body of {} bytes", bytes.len()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_faults_streams_and_rotating_credentials_fail_no_request() {
    let pki = Pki::new();
    let keys: KeyRing = Arc::new(Mutex::new(HashMap::new()));
    let ups = Upstreams::start_with(&pki, Protocol::Http1, Arc::clone(&keys)).await;
    for upstream in ups.all() {
        upstream.fault_first_attempts(
            FAULT_EVERY,
            vec![Action::status(503), Action::CloseWithoutResponse],
        );
    }
    let rotating =
        RotatingCredentials::start(keys, Duration::from_secs(2), Duration::from_secs(3)).await;
    let mut command = clean_command(pki.dir.path());
    rotating.configure(&mut command, &pki);
    let file = regions_config_file(&pki, &ups, "[upstream]\nattempt_timeout_ms = 2000\n");
    let proxy = ProxyProcess::start(command, &file).await;

    let url = proxy.url("/v1/benefits?customerIdentifier=Atza%7Cmixed");
    let deadline = Instant::now() + RUN_FOR;
    let mut tasks = Vec::new();
    for c in 0..KEEP_ALIVE_CLIENTS + ONE_SHOT_CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Traffic ramps up after start as an application's does: at first one client
            // alone switches between regions (longer than an attempt may take), then the
            // others arrive one after another.
            if c > 0 {
                tokio::time::sleep(ALONE + RAMP_UP * c as u32).await;
            }
            let keep_alive = keep_alive_client();
            let mut done = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let marketplace = MARKETPLACES[(c + i) % MARKETPLACES.len()];
                let id = format!("mixed-{c}-{i}");
                let kind = kind(c * 7 + i);
                let started = Instant::now();
                let mut result = if c < KEEP_ALIVE_CLIENTS {
                    one(&keep_alive, &url, marketplace, &id, kind).await
                } else {
                    // A new connection for every request.
                    one(&client(), &url, marketplace, &id, kind).await
                };
                let took = started.elapsed();
                if result.is_ok() && took > TOO_SLOW {
                    result = Err(format!("answered, but after {took:?}"));
                }
                done.push((marketplace, id, kind, result));
                i += 1;
            }
            done
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }

    let failed: Vec<_> = all.iter().filter(|(_, _, _, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}\nlogs (tail):\n{}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(5)],
        proxy
            .logs()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        all.len() >= 200,
        "only {} requests in {RUN_FOR:?}",
        all.len()
    );

    // Every attempt at every endpoint was signed validly for that endpoint's region.
    let mut keys_used = BTreeSet::new();
    for (key, signing_region, _, _) in REGIONS {
        let upstream = ups.region(key);
        for received in upstream.requests() {
            let (access_key, region) = received.assert_signed();
            assert_eq!(region, signing_region, "{key}");
            assert_eq!(received.authority, upstream.authority(), "{key}");
            keys_used.insert(access_key);
        }
        assert!(
            upstream.faults_injected() >= 1,
            "{key}: no fault was injected"
        );
    }
    // Each request reached its own region, and was retried only after a fault.
    let faults: usize = ups.all().iter().map(|u| u.faults_injected()).sum();
    assert_eq!(ups.count(), all.len() + faults, "one retry per fault");
    for (marketplace, id, _, _) in &all {
        let (at, _) = ups
            .find(id)
            .unwrap_or_else(|| panic!("{id} reached no upstream"));
        assert_eq!(at, region_of(marketplace).0, "{id} ({marketplace})");
    }
    assert!(
        keys_used.len() >= 3,
        "credentials did not rotate during the run: {keys_used:?}"
    );
    // The proxy agrees: one request line per request, all 200.
    // (The last lines reach us a little after their responses.)
    eventually(Duration::from_secs(5), || {
        proxy.request_lines().len() >= all.len()
    })
    .await;
    let lines = proxy.request_lines();
    assert_eq!(lines.len(), all.len());
    assert!(lines.iter().all(|l| l["status"] == 200));
    let kinds = |pick: fn(&Kind) -> bool| all.iter().filter(|(_, _, k, _)| pick(k)).count();
    assert!(kinds(|k| matches!(k, Kind::Chunked(_))) > 0);
    assert!(kinds(|k| matches!(k, Kind::Sized(n) if *n > 256 * 1024)) > 0);
    assert!(kinds(|k| matches!(k, Kind::Post)) > 0);
    let slowest = lines
        .iter()
        .filter_map(|l| l["duration_ms"].as_f64())
        .fold(0.0, f64::max);
    assert!(slowest < TOO_SLOW.as_secs_f64() * 1000.0, "{slowest} ms");
    eprintln!(
        "mixed workload: {} requests, {faults} faults injected, {} attempts, slowest {slowest:.0} ms, keys {keys_used:?}",
        all.len(),
        ups.count()
    );
    assert_eq!(proxy.terminate().await.code(), Some(0));
}
