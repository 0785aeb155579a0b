//! Accepting clients: one task per connection (HTTP/1.1 keep-alive or h2c with prior
//! knowledge, optionally inside TLS), limits against abusive clients, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;
use crate::respond::ClientBody;

/// Builds the HTTP server half shared by every connection of one listener.
pub fn http_builder(limits: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Head and idle deadlines are enforced per connection by `Activity` instead: hyper's
        // timer also runs while a keep-alive connection is idle between requests, which
        // would close pooled client connections after the (short) head deadline.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// How one listener serves its connections.
pub struct ServeOptions {
    /// TLS in front of HTTP, when configured.
    pub tls: Option<TlsAcceptor>,
    pub builder: auto::Builder<TokioExecutor>,
    /// At this many open connections, accepting pauses until one closes.
    pub max_connections: usize,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// How long open connections may take to finish once `shutdown` turns true.
    pub grace: Duration,
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish for up
/// to `options.grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    options: ServeOptions,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ClientBody>> + Send + 'static,
{
    let ServeOptions {
        tls,
        builder,
        max_connections,
        handshake_timeout,
        idle_timeout,
        grace,
    } = options;
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(max_connections));
    loop {
        // At the connection cap, stop accepting: new clients wait in the kernel backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |request| {
                    let handler = handler.clone();
                    let activity = Arc::clone(&activity);
                    async move {
                        let _busy = activity.request_started(request.version());
                        Ok::<_, Infallible>(handler(request).await)
                    }
                })
            };
            let served = async {
                match tls {
                    None => {
                        let io = TokioIo::new(Tracked::new(stream, Arc::clone(&activity)));
                        watcher.watch(builder.serve_connection(io, service)).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return Ok(());
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return Ok(());
                                }
                            };
                        let io = TokioIo::new(Tracked::new(stream, Arc::clone(&activity)));
                        watcher.watch(builder.serve_connection(io, service)).await
                    }
                }
            };
            let result = tokio::select! {
                result = served => result,
                () = activity.idle(handshake_timeout, idle_timeout) => {
                    tracing::debug!(%peer, "idle connection closed");
                    Ok(())
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "shutdown grace ran out; closing the remaining connections"
        );
    }
}

/// What a connection has been doing: when bytes last moved, when the current request head
/// started arriving, and how many of its requests are in flight. It enforces two deadlines
/// that hyper's single header timer cannot tell apart: a request head must arrive within
/// `head` once it has started (slowloris) or after connecting, and a keep-alive connection
/// may sit idle between requests for `idle`.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` when bytes last moved.
    last_ms: AtomicU64,
    /// Milliseconds since `epoch` + 1 when the pending request head started; 0 when none.
    head_started_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2 multiplexes: once its first request has started, bytes between requests are
    /// frames (pings, settings), not the start of a head, so only the idle deadline applies.
    multiplexed: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            // A new connection owes us a request head.
            head_started_ms: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived: between requests they start a new head.
    fn received(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.multiplexed.load(Ordering::Relaxed)
        {
            let _ = self.head_started_ms.compare_exchange(
                0,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn request_started(self: &Arc<Self>, version: Version) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        if version >= Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        RequestGuard(Arc::clone(self))
    }

    /// Completes when the connection should be closed: a head that took longer than
    /// `head`, or no request and no bytes for `idle`.
    async fn idle(&self, head: Duration, idle: Duration) {
        let head_ms = u64::try_from(head.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let tick = head.min(idle) / 4;
        loop {
            tokio::time::sleep(tick.max(Duration::from_millis(25))).await;
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                continue;
            }
            let now = self.now_ms();
            let head_started = self.head_started_ms.load(Ordering::Relaxed);
            if head_started > 0 && now.saturating_sub(head_started - 1) >= head_ms {
                return;
            }
            if head_started == 0
                && now.saturating_sub(self.last_ms.load(Ordering::Relaxed)) >= idle_ms
            {
                return;
            }
        }
    }
}

/// Counts one request in flight on its connection while it lives.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records its progress in an [`Activity`].
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
