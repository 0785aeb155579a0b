//! Keeps the number of open upstream connections at what concurrent requests need.
//!
//! hyper-util's pool races a new connection against the pool whenever a request finds no
//! idle connection, and a connection goes back to the pool only after its response has been
//! handed on, in a task of its own. Under keep-alive load a client's next request often
//! arrives before that, so the pool dials a connection it does not need (measured: 116
//! upstream connections for 64 client connections). The gate lets a new connection be
//! opened only while fewer are open than attempts are in flight. A dial that is not needed
//! waits: the request that started it is served by the pool's checkout meanwhile, and the
//! dial itself (which hyper finishes in the background) goes ahead only if demand grows,
//! or gives up after its patience (a background dial's error is dropped by hyper). A first
//! version dialled anyway after 100 ms; under load every lost race still became a
//! connection (147 for 64 clients).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Open connections and in-flight requests, shared by the connector and the request path.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    open: AtomicUsize,
    demand: AtomicUsize,
    changed: Notify,
}

impl ConnectionGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts a connection that is opened without asking (HTTP/2: one connection serves all).
    fn force_open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(Arc::clone(self))
    }

    /// Counts one upstream attempt as needing a connection while the guard lives.
    pub fn demand(self: &Arc<Self>) -> Demand {
        self.demand.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Demand(Arc::clone(self))
    }

    /// Open connections (for tests and metrics).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until a new connection is needed (fewer open than in demand), then counts it
    /// as open. `None` after `patience`: the dial is not needed.
    async fn admit(self: &Arc<Self>, patience: Duration) -> Option<Open> {
        let deadline = Instant::now() + patience;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open = self.open.load(Ordering::Acquire);
            if open < self.demand.load(Ordering::Acquire)
                && self
                    .open
                    .compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Some(Open(Arc::clone(self)));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// One attempt's claim on a connection.
#[derive(Debug)]
pub struct Demand(Arc<ConnectionGate>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.demand.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open connection; closing it (dropping the stream) frees its place.
#[derive(Debug)]
struct Open(Arc<ConnectionGate>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A connector that asks the gate before dialing.
#[derive(Clone, Debug)]
pub struct GatedConnector<C> {
    inner: C,
    gate: Arc<ConnectionGate>,
    /// `None`: every dial goes ahead at once (HTTP/2).
    patience: Option<Duration>,
}

impl<C> GatedConnector<C> {
    pub fn new(inner: C, gate: Arc<ConnectionGate>, patience: Option<Duration>) -> Self {
        Self {
            inner,
            gate,
            patience,
        }
    }
}

/// A dial the gate found unnecessary.
#[derive(Debug, thiserror::Error)]
#[error("no new upstream connection was needed within {0:?}")]
pub struct NotNeeded(Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for GatedConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = GatedStream<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let gate = Arc::clone(&self.gate);
        let patience = self.patience;
        // The service contract: call the instance that was polled ready.
        let replacement = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, replacement);
        Box::pin(async move {
            let open = match patience {
                None => gate.force_open(),
                Some(patience) => gate.admit(patience).await.ok_or(NotNeeded(patience))?,
            };
            let stream = inner.call(uri).await.map_err(Into::into)?;
            Ok(GatedStream {
                inner: stream,
                _open: open,
            })
        })
    }
}

/// A connection counted by the gate for as long as it exists.
#[derive(Debug)]
pub struct GatedStream<T> {
    inner: T,
    _open: Open,
}

impl<T: Connection> Connection for GatedStream<T> {
    /// The inner connection's facts without its `extra`: the TCP connector attaches an
    /// `HttpInfo` (local and peer address), which the client copies into every response's
    /// extensions, two allocations per response that nothing here reads.
    fn connected(&self) -> Connected {
        let inner = self.inner.connected();
        let connected = Connected::new().proxy(inner.is_proxied());
        if inner.is_negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl<T: Read + Unpin> Read for GatedStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for GatedStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn a_connection_is_admitted_at_once_only_while_demand_exceeds_open() {
        let gate = ConnectionGate::new();
        let first = gate.demand();
        let open_1 = gate.admit(Duration::from_secs(5)).await.unwrap();
        assert_eq!(gate.open(), 1);
        // One in flight, one open: a second dial waits...
        let waiting = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // ...until a second request needs a connection.
        let second = gate.demand();
        let open_2 = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.open(), 2);
        drop((first, second, open_1, open_2));
        assert_eq!(gate.open(), 0);
    }

    #[tokio::test]
    async fn an_unneeded_dial_gives_up_after_its_patience() {
        let gate = ConnectionGate::new();
        let started = std::time::Instant::now();
        assert!(gate.admit(Duration::from_millis(80)).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(70));
        assert_eq!(gate.open(), 0);
        // HTTP/2 dials are never held back.
        let _h2 = gate.force_open();
        assert_eq!(gate.open(), 1);
    }

    #[tokio::test]
    async fn a_gated_connection_attaches_no_extra_to_responses() {
        use hyper_util::client::legacy::connect::HttpInfo;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let inner = TokioIo::new(tcp);
        let extra = |connected: Connected| {
            let mut extensions = http::Extensions::new();
            connected.get_extras(&mut extensions);
            extensions.get::<HttpInfo>().is_some()
        };
        // The TCP connection itself has one...
        assert!(extra(inner.connected()));
        let gate = ConnectionGate::new();
        let stream = GatedStream {
            inner,
            _open: gate.force_open(),
        };
        // ...the gated one does not, and keeps the rest.
        let connected = stream.connected();
        assert!(!connected.is_proxied() && !connected.is_negotiated_h2());
        assert!(!extra(connected));
    }

    #[tokio::test]
    async fn closing_a_connection_lets_a_waiting_dial_through() {
        let gate = ConnectionGate::new();
        let _demand = gate.demand();
        let open = gate.admit(Duration::from_secs(5)).await.unwrap();
        let waiting = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(open);
        let _reopened = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.open(), 1);
    }
}
