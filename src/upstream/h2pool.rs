//! HTTP/2 to one region's endpoint (`upstream.http2`): a small connection pool of our own
//! over the `h2` crate.
//!
//! hyper-util's pool keeps one HTTP/2 connection per host and queues every request beyond
//! the server's SETTINGS_MAX_CONCURRENT_STREAMS on it, without bound or metric. This pool
//! opens another connection when every open one is at the limit the server announced (up to
//! `upstream.http2_max_connections`); past that cap a request waits for a stream (within its
//! attempt timeout, counted in `prime_proxy_upstream_stream_waits_total`). A stream the
//! server did not process (RFC 9113 §8.7: reset with REFUSED_STREAM, or above the last
//! stream id of a GOAWAY) is sent again on another stream within the same attempt. Requests
//! go out with `:authority` and no `host` header (RFC 9113 §8.3.1); the signature still
//! covers `host` with the authority's value.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream};
use http::header::{CONTENT_LENGTH, HOST};
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

use super::client::H2Connector;
use crate::error_chain::error_chain;
use crate::metrics::RegionMetrics;

/// Until a connection to the endpoint has announced its limit, one being opened is expected
/// to carry this many streams (RFC 9113 §6.5.2 recommends no less than 100): concurrent first
/// requests share the first connection instead of each opening one.
const ASSUMED_STREAM_LIMIT: usize = 100;

/// Sends of one attempt that the server may leave unprocessed before the attempt fails (a
/// server that refuses every stream must not keep an attempt spinning).
const MAX_REPLAYS: u32 = 4;

/// Why an attempt over HTTP/2 got no response head.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("no HTTP/2 connection to the upstream could be opened: {0}")]
    Connect(String),
    #[error("the HTTP/2 stream to the upstream failed: {0}")]
    Stream(#[source] h2::Error),
}

impl H2Error {
    /// Whether no connection could be opened (as opposed to a failed stream).
    pub fn is_connect(&self) -> bool {
        matches!(self, H2Error::Connect(_))
    }
}

/// Why the server did not process a stream, so that sending it again is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unprocessed {
    RefusedStream,
    GoAway,
    /// The connection was gone before the stream's first frame left.
    NotSent,
}

impl Unprocessed {
    fn label(self) -> &'static str {
        match self {
            Unprocessed::RefusedStream => "refused_stream",
            Unprocessed::GoAway => "goaway",
            Unprocessed::NotSent => "not_sent",
        }
    }

    /// A stream error the server guarantees it did not act on: its RST_STREAM with
    /// REFUSED_STREAM, or h2 failing the stream because it is above a GOAWAY's last stream id
    /// (h2 reports a stream cut by the connection's end, processed or not, as an I/O error).
    fn of(error: &h2::Error) -> Option<Self> {
        if error.is_remote() && error.is_reset() && error.reason() == Some(Reason::REFUSED_STREAM) {
            Some(Unprocessed::RefusedStream)
        } else if error.is_remote() && error.is_go_away() {
            Some(Unprocessed::GoAway)
        } else {
            None
        }
    }
}

/// One open connection.
struct Entry {
    id: u64,
    send: SendRequest<Bytes>,
    in_flight: usize,
    /// The server sent GOAWAY: streams under way finish, no new one starts here.
    draining: bool,
    idle_since: Instant,
}

#[derive(Default)]
struct PoolState {
    connections: Vec<Entry>,
    dialing: usize,
    /// Checkouts waiting for a connection being opened.
    awaiting_dial: usize,
    /// The stream limit the endpoint's latest new connection announced.
    learned_limit: Option<usize>,
    /// Dials that failed so far, and the latest one's reason: a checkout waiting for a dial
    /// that failed fails too, instead of dialling again.
    failed_dials: u64,
    last_failure: String,
    next_id: u64,
}

struct PoolInner {
    connector: H2Connector,
    endpoint: Uri,
    max_connections: usize,
    idle_timeout: Duration,
    dial_timeout: Duration,
    state: Mutex<PoolState>,
    changed: Notify,
    metrics: Arc<RegionMetrics>,
}

impl PoolInner {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        // No code panics while holding the lock; a poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One region's HTTP/2 connections.
#[derive(Clone)]
pub struct H2Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Pool")
    }
}

/// A stream's place on a connection, held until its response body is done.
struct Lease {
    pool: Arc<PoolInner>,
    id: u64,
    send: SendRequest<Bytes>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut state = self.pool.state();
            if let Some(entry) = state.connections.iter_mut().find(|e| e.id == self.id) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                if entry.in_flight == 0 {
                    entry.idle_since = Instant::now();
                }
            }
        }
        self.pool.changed.notify_waiters();
    }
}

/// A checkout's place among those waiting for a dial; given back when it stops waiting.
struct AwaitingDial<'a>(&'a PoolInner);

impl Drop for AwaitingDial<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.awaiting_dial = state.awaiting_dial.saturating_sub(1);
    }
}

enum Step {
    Ready(Lease),
    Dial,
    WaitForDial,
    WaitForStream,
    Failed(String),
}

impl H2Pool {
    pub fn new(
        connector: H2Connector,
        endpoint: Uri,
        max_connections: usize,
        idle_timeout: Duration,
        dial_timeout: Duration,
        metrics: Arc<RegionMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                connector,
                endpoint,
                max_connections: max_connections.max(1),
                idle_timeout,
                dial_timeout,
                state: Mutex::new(PoolState::default()),
                changed: Notify::new(),
                metrics,
            }),
        }
    }

    /// Sends `request` (its URI absolute) and returns the response head; the body streams
    /// from the same stream. Streams the server did not process are sent again.
    pub async fn send(
        &self,
        request: &http::request::Parts,
        body: &Bytes,
    ) -> Result<Response<H2Body>, H2Error> {
        let mut replays = 0;
        loop {
            let lease = self.checkout().await?;
            let (why, error) = match send_on(&lease, request, body).await {
                Ok(response) => {
                    let length = response
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    return Ok(response.map(|recv| H2Body {
                        recv,
                        remaining: length,
                        data_done: false,
                        _lease: lease,
                    }));
                }
                Err(failed) => failed,
            };
            match why {
                Some(why) if replays < MAX_REPLAYS => {
                    if why != Unprocessed::RefusedStream {
                        self.drain(lease.id);
                    }
                    replays += 1;
                    self.inner.metrics.replay(why.label());
                    tracing::debug!(reason = why.label(), %error, "HTTP/2 stream not processed by the upstream; sending it again");
                }
                _ => return Err(H2Error::Stream(error)),
            }
        }
    }

    /// No new stream starts on connection `id` any more.
    fn drain(&self, id: u64) {
        let mut state = self.inner.state();
        if let Some(entry) = state.connections.iter_mut().find(|e| e.id == id) {
            entry.draining = true;
        }
    }

    /// A place for one stream: on the busiest connection that has room (so that the others
    /// can idle out), else on a new connection while fewer than the cap are open, else the
    /// first place to come free.
    async fn checkout(&self) -> Result<Lease, H2Error> {
        let inner = &*self.inner;
        let mut awaiting: Option<AwaitingDial<'_>> = None;
        let mut failed_before = None;
        let mut counted = false;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The place among dial waiters is given back before looking again.
            drop(awaiting.take());
            let step = {
                let mut state = inner.state();
                let room = state
                    .connections
                    .iter_mut()
                    .filter(|e| !e.draining && e.in_flight < e.send.current_max_send_streams())
                    .max_by_key(|e| e.in_flight);
                if let Some(entry) = room {
                    entry.in_flight += 1;
                    Step::Ready(Lease {
                        pool: Arc::clone(&self.inner),
                        id: entry.id,
                        send: entry.send.clone(),
                    })
                } else if failed_before.is_some_and(|before| state.failed_dials > before) {
                    Step::Failed(state.last_failure.clone())
                } else {
                    let limit = state.learned_limit.unwrap_or(ASSUMED_STREAM_LIMIT);
                    let usable = state.connections.iter().filter(|e| !e.draining).count();
                    if state.awaiting_dial < state.dialing.saturating_mul(limit) {
                        state.awaiting_dial += 1;
                        failed_before.get_or_insert(state.failed_dials);
                        Step::WaitForDial
                    } else if usable + state.dialing < inner.max_connections {
                        state.dialing += 1;
                        state.awaiting_dial += 1;
                        failed_before.get_or_insert(state.failed_dials);
                        Step::Dial
                    } else {
                        Step::WaitForStream
                    }
                }
            };
            match step {
                Step::Ready(lease) => return Ok(lease),
                Step::Failed(reason) => return Err(H2Error::Connect(reason)),
                Step::Dial => {
                    awaiting = Some(AwaitingDial(inner));
                    // The dial finishes even if this attempt gives up first: the connection
                    // serves the next requests.
                    tokio::spawn(dial(Arc::clone(&self.inner)));
                }
                Step::WaitForDial => awaiting = Some(AwaitingDial(inner)),
                Step::WaitForStream => {
                    if !counted {
                        counted = true;
                        inner.metrics.stream_waits.inc();
                    }
                }
            }
            notified.await;
        }
    }
}

/// Opens one connection and adds it to the pool (or records why it could not be opened).
async fn dial(pool: Arc<PoolInner>) {
    let result = match tokio::time::timeout(pool.dial_timeout, connect(&pool)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no HTTP/2 connection within {} ms",
            pool.dial_timeout.as_millis()
        )),
    };
    {
        let mut state = pool.state();
        state.dialing = state.dialing.saturating_sub(1);
        match result {
            Ok((id, send)) => {
                state.learned_limit = Some(send.current_max_send_streams());
                state.connections.push(Entry {
                    id,
                    send,
                    in_flight: 0,
                    draining: false,
                    idle_since: Instant::now(),
                });
            }
            Err(reason) => {
                state.failed_dials += 1;
                state.last_failure = reason;
            }
        }
    }
    pool.changed.notify_waiters();
}

/// TCP, TLS (ALPN `h2`), the HTTP/2 handshake, and one PING: the server's SETTINGS come
/// before its PING acknowledgement, so once the PONG is in, the connection's stream limit
/// is the one the server announced.
async fn connect(pool: &Arc<PoolInner>) -> Result<(u64, SendRequest<Bytes>), String> {
    let mut connector = pool.connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| error_chain(&*e))?;
    let io = connector
        .call(pool.endpoint.clone())
        .await
        .map_err(|e| error_chain(&*e))?;
    let (send, mut connection) = h2::client::Builder::new()
        .handshake::<_, Bytes>(TokioIo::new(io))
        .await
        .map_err(|e| error_chain(&e))?;
    let ping = connection.ping_pong();
    let id = {
        let mut state = pool.state();
        state.next_id += 1;
        state.next_id
    };
    tokio::spawn(drive(Arc::downgrade(pool), id, connection));
    if let Some(mut ping) = ping {
        ping.ping(h2::Ping::opaque())
            .await
            .map_err(|e| error_chain(&e))?;
    }
    let send = send.ready().await.map_err(|e| error_chain(&e))?;
    Ok((id, send))
}

/// Runs one connection until it ends or idles out, then takes it out of the pool.
async fn drive(
    pool: Weak<PoolInner>,
    id: u64,
    connection: h2::client::Connection<TokioIo<super::client::H2Stream>, Bytes>,
) {
    tokio::pin!(connection);
    // When to look again whether the connection has idled out.
    while let Some(check_at) = pool.upgrade().map(|pool| {
        let state = pool.state();
        let idle_at = state
            .connections
            .iter()
            .find(|e| e.id == id)
            .filter(|e| e.in_flight == 0)
            .map(|e| e.idle_since + pool.idle_timeout);
        idle_at.unwrap_or_else(|| Instant::now() + pool.idle_timeout.max(Duration::from_secs(1)))
    }) {
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(error = %error_chain(&error), "HTTP/2 upstream connection ended");
                }
                break;
            }
            () = tokio::time::sleep_until(check_at) => {
                let Some(pool) = pool.upgrade() else { break };
                let mut state = pool.state();
                let idle = state.connections.iter().position(|e| {
                    e.id == id && e.in_flight == 0 && e.idle_since + pool.idle_timeout <= Instant::now()
                });
                if let Some(index) = idle {
                    state.connections.swap_remove(index);
                    break;
                }
            }
        }
    }
    if let Some(pool) = pool.upgrade() {
        pool.state().connections.retain(|e| e.id != id);
        pool.changed.notify_waiters();
    }
}

/// One send on the leased stream: the head (no `host`: `:authority` carries it), then the
/// body; the error says whether the server left the stream unprocessed.
async fn send_on(
    lease: &Lease,
    request: &http::request::Parts,
    body: &Bytes,
) -> Result<Response<RecvStream>, (Option<Unprocessed>, h2::Error)> {
    let not_sent = |e: h2::Error| (Some(Unprocessed::NotSent), e);
    let mut send = lease.send.clone().ready().await.map_err(not_sent)?;
    let mut head = Request::new(());
    *head.method_mut() = request.method.clone();
    *head.uri_mut() = authority_from_host(request);
    *head.version_mut() = Version::HTTP_2;
    let headers = head.headers_mut();
    headers.reserve(request.headers.len());
    headers.extend(
        request
            .headers
            .iter()
            .filter(|(name, _)| *name != HOST)
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    let (response, mut stream) = send.send_request(head, body.is_empty()).map_err(not_sent)?;
    if !body.is_empty() {
        // h2 holds what the peer's flow-control window does not take yet and sends it as the
        // window opens (the body is at most `max_body_bytes`, already in memory).
        stream
            .send_data(body.clone(), true)
            .map_err(|e| (Unprocessed::of(&e), e))?;
    }
    response.await.map_err(|e| (Unprocessed::of(&e), e))
}

/// The request's URI with the signed `host` as its authority: `:authority` carries exactly
/// what the signature covers (the endpoint's authority without a default port).
fn authority_from_host(request: &http::request::Parts) -> Uri {
    let Some(host) = request.headers.get(HOST) else {
        return request.uri.clone();
    };
    let mut parts = request.uri.clone().into_parts();
    match http::uri::Authority::try_from(host.as_bytes()) {
        Ok(authority) => parts.authority = Some(authority),
        Err(_) => return request.uri.clone(),
    }
    Uri::from_parts(parts).unwrap_or_else(|_| request.uri.clone())
}

/// A response body read from an HTTP/2 stream; the stream's place on its connection is
/// held until the body is done or dropped (dropping it mid-body resets the stream).
pub struct H2Body {
    recv: RecvStream,
    /// Bytes still to come, by `Content-Length`.
    remaining: Option<u64>,
    data_done: bool,
    _lease: Lease,
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // The bytes are handed on: let the server send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.remaining = this
                        .remaining
                        .map(|left| left.saturating_sub(data.len() as u64));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}
