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

use http::{header, Request, Response, Version};
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
use crate::prepare::FramingConflict;
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
    /// The longest request head accepted (`listener.max_header_bytes`).
    pub max_header_bytes: usize,
}

/// Serves `listener` until `shutdown` turns true, then lets open connections finish for up
/// to `options.grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    options: ServeOptions,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, Instant) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ClientBody>> + Send + 'static,
{
    let ServeOptions {
        tls,
        builder,
        max_connections,
        handshake_timeout,
        idle_timeout,
        grace,
        max_header_bytes,
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
                        let received_at = activity.head_first_byte().unwrap_or_else(Instant::now);
                        let _busy = activity.request_started(request.version());
                        let mut request = request;
                        // The head had both Content-Length and Transfer-Encoding: hyper kept
                        // only the latter, and prepare refuses what it is told about.
                        if activity.framing_conflict.swap(false, Ordering::Relaxed)
                            && request.headers().contains_key(header::TRANSFER_ENCODING)
                        {
                            request.extensions_mut().insert(FramingConflict);
                        }
                        Ok::<_, Infallible>(handler(request, received_at).await)
                    }
                })
            };
            let served = async {
                match tls {
                    None => {
                        let io = TokioIo::new(Tracked::new(
                            stream,
                            Arc::clone(&activity),
                            max_header_bytes,
                        ));
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
                        let io = TokioIo::new(Tracked::new(
                            stream,
                            Arc::clone(&activity),
                            max_header_bytes,
                        ));
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
    /// Microseconds since `epoch` + 1 when the first byte of the HTTP/1 request head being
    /// read arrived; 0 when unknown. The request's clock starts there, as its client's does,
    /// not when hyper has parsed the whole head.
    head_first_byte_us: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2 multiplexes: once its first request has started, bytes between requests are
    /// frames (pings, settings), not the start of a head, so only the idle deadline applies.
    multiplexed: AtomicBool,
    /// Requests finished on this connection: a new request head can only follow one.
    finished: AtomicU64,
    /// The request head just read carried both Content-Length and Transfer-Encoding.
    framing_conflict: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            // A new connection owes us a request head.
            head_started_ms: AtomicU64::new(1),
            head_first_byte_us: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            framing_conflict: AtomicBool::new(false),
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

    /// A request head's first byte is arriving now.
    fn head_arriving(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.head_first_byte_us.store(us + 1, Ordering::Relaxed);
    }

    /// When the head of the request now starting began to arrive, if the head watch saw it
    /// (HTTP/1; not a head pipelined behind a body); taken, so no later request reuses it.
    fn head_first_byte(&self) -> Option<Instant> {
        match self.head_first_byte_us.swap(0, Ordering::Relaxed) {
            0 => None,
            us => self.epoch.checked_add(Duration::from_micros(us - 1)),
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
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records its progress in an [`Activity`], and watches HTTP/1 request heads
/// go by for the one thing hyper cannot tell the service: that a head had both
/// Content-Length and Transfer-Encoding (hyper keeps Transfer-Encoding, drops the length
/// and closes the connection afterwards, RFC 9112 §6.3). A proxy refuses such a request, as
/// Envoy does by default, so the watch reports it in `Activity::framing_conflict`.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
    heads: HeadWatch,
    /// `Activity::finished` when the watch last started on a head.
    finished_seen: u64,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Arc<Activity>, max_header_bytes: usize) -> Self {
        Self {
            inner,
            activity,
            heads: HeadWatch::new(max_header_bytes),
            finished_seen: 0,
        }
    }

    /// Feeds newly read bytes to the head watch. A head is watched from the connection's
    /// first byte and from the first bytes after each finished request (clients send their
    /// next request after the answer); body bytes are never scanned. A head pipelined behind
    /// a body is not watched: hyper's own framing still holds for it, so nothing ambiguous
    /// goes upstream either way.
    fn watch_heads(&mut self, bytes: &[u8]) {
        if self.heads.is_waiting() {
            let finished = self.activity.finished.load(Ordering::Relaxed);
            if finished == self.finished_seen {
                return;
            }
            self.finished_seen = finished;
            self.heads.start();
            self.activity.head_arriving();
        }
        if self.heads.feed(bytes) {
            self.activity
                .framing_conflict
                .store(true, Ordering::Relaxed);
        }
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
            if !self.heads.is_off() {
                self.watch_heads(&buf.filled()[before..]);
            }
        }
        polled
    }
}

/// The longest header-name prefix [`HeadWatch`] compares: `transfer-encoding:`.
const WATCHED_PREFIX: usize = 18;

/// A byte-at-a-time scan of one HTTP/1 request head (request line, header lines, empty
/// line) that notes whether it names both Content-Length and Transfer-Encoding. It keeps
/// only the first bytes of the current line, so heads split across reads cost nothing more.
#[derive(Debug)]
struct HeadWatch {
    state: WatchState,
    max_bytes: usize,
    /// Bytes of the current head seen so far.
    scanned: usize,
    /// Lines of the current head completed so far (the request line is the first).
    lines: usize,
    /// The current line's first bytes, lower-cased, without CR.
    prefix: [u8; WATCHED_PREFIX],
    /// Bytes in the current line, without CR.
    line_len: usize,
    content_length: bool,
    transfer_encoding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    /// Inside a head.
    Scanning,
    /// Between heads: waiting for a request to finish.
    Waiting,
    /// An HTTP/2 connection: there are no more HTTP/1 heads to watch.
    Off,
}

impl HeadWatch {
    fn new(max_bytes: usize) -> Self {
        Self {
            state: WatchState::Scanning,
            max_bytes,
            scanned: 0,
            lines: 0,
            prefix: [0; WATCHED_PREFIX],
            line_len: 0,
            content_length: false,
            transfer_encoding: false,
        }
    }

    fn is_waiting(&self) -> bool {
        self.state == WatchState::Waiting
    }

    fn is_off(&self) -> bool {
        self.state == WatchState::Off
    }

    /// Starts watching a new head.
    fn start(&mut self) {
        *self = Self::new(self.max_bytes);
    }

    /// Scans `bytes`; true when they end a head that had both framing headers.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while self.state == WatchState::Scanning {
            if self.line_len >= WATCHED_PREFIX {
                // The rest of a long line (the request line with its query, a token): only
                // its end matters.
                let skip = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
                self.scanned += skip;
                self.line_len += skip;
                bytes = &bytes[skip..];
            }
            let Some((&byte, rest)) = bytes.split_first() else {
                break;
            };
            bytes = rest;
            self.scanned += 1;
            match byte {
                b'\r' => {}
                b'\n' => {
                    if self.end_line() {
                        return true;
                    }
                }
                _ => {
                    if let Some(slot) = self.prefix.get_mut(self.line_len) {
                        *slot = byte.to_ascii_lowercase();
                    }
                    self.line_len += 1;
                }
            }
            // Longer than hyper accepts: hyper refuses it, and this is no head to watch.
            if self.scanned > self.max_bytes {
                self.state = WatchState::Waiting;
            }
        }
        false
    }

    /// A line ended; true when it ended a head with both framing headers.
    fn end_line(&mut self) -> bool {
        let line = &self.prefix[..self.line_len.min(WATCHED_PREFIX)];
        let first = self.lines == 0;
        self.line_len = 0;
        if line.is_empty() {
            // Empty lines before the request line are allowed (RFC 9112 §2.2).
            if first {
                return false;
            }
            self.state = WatchState::Waiting;
            return self.content_length && self.transfer_encoding;
        }
        self.lines += 1;
        if first {
            // The HTTP/2 connection preface: `PRI * HTTP/2.0`.
            if line == b"pri * http/2.0" {
                self.state = WatchState::Off;
            }
        } else if line.starts_with(b"content-length:") {
            self.content_length = true;
        } else if line.starts_with(b"transfer-encoding:") {
            self.transfer_encoding = true;
        }
        false
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `head` to a fresh watch in pieces of `step` bytes; true when it reported both
    /// framing headers.
    fn conflict(head: &[u8], step: usize) -> bool {
        let mut watch = HeadWatch::new(16 * 1024);
        let mut seen = false;
        for piece in head.chunks(step) {
            seen |= watch.feed(piece);
        }
        seen
    }

    #[test]
    fn both_framing_headers_are_seen_in_any_order_case_and_split() {
        let heads: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nHost: x\r\ncontent-length: 5\r\n\r\n",
            b"\r\nPOST / HTTP/1.1\r\nCONTENT-LENGTH:5\r\nTRANSFER-ENCODING:chunked\r\n\r\n5\r\nhello",
            b"POST / HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
        ];
        for head in heads {
            for step in [1, 2, 7, head.len()] {
                assert!(conflict(head, step), "{step}: {}", head.escape_ascii());
            }
        }
        // Long lines (a 500-byte query, a long value) are skipped over, in any split.
        let mut long = b"GET /v1/benefits?customerIdentifier=".to_vec();
        long.extend_from_slice(&[b'A'; 500]);
        long.extend_from_slice(b" HTTP/1.1\r\nX-Long: ");
        long.extend_from_slice(&[b'b'; 300]);
        long.extend_from_slice(b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        for step in [1, 5, 19, 64, long.len()] {
            assert!(conflict(&long, step), "{step}");
        }
    }

    #[test]
    fn one_framing_header_or_a_lookalike_is_no_conflict() {
        let heads: [&[u8]; 5] = [
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Lengthy: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            // A body that looks like headers is not scanned: the head ended before it.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1c\r\ncontent-length: 5\r\n\r\n\r\n",
        ];
        for head in heads {
            for step in [1, 3, head.len()] {
                assert!(!conflict(head, step), "{step}: {}", head.escape_ascii());
            }
        }
    }

    #[test]
    fn the_watch_waits_between_heads_and_stops_for_http2() {
        let mut watch = HeadWatch::new(16 * 1024);
        assert!(!watch.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(watch.is_waiting());
        // Waiting: bytes are not scanned until the next head starts.
        assert!(!watch
            .feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        watch.start();
        assert!(watch
            .feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));

        let mut h2 = HeadWatch::new(16 * 1024);
        assert!(!h2.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(h2.is_off());

        // A head longer than hyper accepts is not watched to its end.
        let mut long = HeadWatch::new(64);
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n".to_vec();
        head.extend_from_slice(&[b'a'; 80]);
        head.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!long.feed(&head));
        assert!(long.is_waiting());
    }
}
