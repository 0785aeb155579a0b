//! Credentials after the machine sleeps: a laptop suspended past the expiry of the held
//! credentials wakes with the refresher's timer (monotonic time, which stops during suspend)
//! still far off. The first requests must get one fresh fetch at once, shared by all of them,
//! instead of 503s until the timer fires.
//!
//! The suspend is simulated with tokio's clock (the proxy's monotonic time) paused and held
//! still, while the wall clock moves on: no timer of the proxy fires, so the only way to fresh
//! credentials is the one a request starts. (Paused time alone would not do: it jumps ahead
//! whenever the runtime waits on loopback I/O, firing timeouts; a blocking task keeps it still.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use common::*;
use prime_sigv4_proxy::CredentialSource;

/// Hands out `ASIABEFORESLEEP` (valid for 2 s) first, then `ASIAAFTERWAKE` (valid for an
/// hour), registering each with the upstream's key ring, and counts its calls.
#[derive(Debug)]
struct SleepyLaptop {
    calls: Arc<AtomicUsize>,
    keys: KeyRing,
}

const BEFORE: &str = "ASIABEFORESLEEP";
const AFTER: &str = "ASIAAFTERWAKE";

impl ProvideCredentials for SleepyLaptop {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let (id, lifetime) = if call == 0 {
            (BEFORE, Duration::from_secs(2))
        } else {
            (AFTER, Duration::from_secs(3600))
        };
        let expiry = SystemTime::now() + lifetime;
        let secret = format!("{id}/secret");
        self.keys
            .lock()
            .unwrap()
            .insert(id.to_owned(), (secret.clone(), Some(expiry)));
        future::ProvideCredentials::ready(Ok(Credentials::new(
            id,
            secret,
            Some(format!("{id}-token")),
            Some(expiry),
            "sleepy-laptop",
        )))
    }
}

const CLIENTS: usize = 20;

#[tokio::test(start_paused = true)]
async fn after_a_sleep_past_the_expiry_requests_share_one_refresh_and_are_signed_with_the_new_key()
{
    // tokio's clock stands still until `thaw` is dropped (or, should the test hang, for at
    // most two minutes: then timeouts fire and fail it).
    let (thaw, frozen) = std::sync::mpsc::channel::<()>();
    let freeze = tokio::task::spawn_blocking(move || {
        let _ = frozen.recv_timeout(Duration::from_secs(120));
    });
    let pki = Pki::new();
    let keys: KeyRing = Arc::new(Mutex::new(HashMap::new()));
    let upstream = FakeUpstream::start_with_keys(&pki, Arc::clone(&keys)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let provider = SharedCredentialsProvider::new(SleepyLaptop {
        calls: Arc::clone(&calls),
        keys,
    });
    let proxy = start_proxy_with(
        config_for(&upstream, &pki),
        CredentialSource::Provider(provider),
    )
    .await;
    let url = proxy.url("/v1/benefits");

    // Twenty keep-alive clients, each with a connection signed with the first key.
    let clients: Vec<PlainClient> = (0..CLIENTS).map(|_| client()).collect();
    for client in &clients {
        let reply = get(client, &url, &[("x-amz-marketplace", "US")]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.assert_signed().0 == BEFORE));

    // The lid closes for longer than the first key lives: the wall clock passes its expiry,
    // tokio's clock (and so the refresher's timer) does not move.
    let lid_closed = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_millis(2_500));

    let requests: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let url = url.clone();
            tokio::spawn(async move { get(&client, &url, &[("x-amz-marketplace", "DE")]).await })
        })
        .collect();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "after the wake: {:?}", reply.body);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one fetch after the wake, shared by all {CLIENTS} requests"
    );
    let received = upstream.requests();
    assert_eq!(received.len(), 2 * CLIENTS);
    for request in &received[CLIENTS..] {
        let (key, region) = request.assert_signed();
        assert_eq!((key.as_str(), region.as_str()), (AFTER, "eu-west-1"));
        assert_eq!(
            request.header("x-amz-security-token"),
            Some("ASIAAFTERWAKE-token")
        );
    }
    assert_eq!(
        lid_closed.elapsed(),
        Duration::ZERO,
        "tokio's clock stood still"
    );
    drop(thaw);
    freeze.await.unwrap();
    proxy.stop().await;
}
