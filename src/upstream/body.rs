//! Response bodies from Prime as the client receives them: read whole inside the attempt
//! (small, and held against the memory budget), or streamed with a watch for an upstream
//! that stops sending half-way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::gate::Demand;
use super::h2pool::H2Body;
use crate::memory::Reservation;

/// A streamed response could not be delivered whole.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the upstream response body brought no bytes for {} ms", .0.as_millis())]
    Stalled(Duration),
    #[error("the upstream response body broke off: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("the upstream response body broke off: {0}")]
    Http2(#[from] h2::Error),
}

impl StreamError {
    /// The `error` field of the request's log line.
    pub fn code(&self) -> &'static str {
        match self {
            StreamError::Stalled(_) => "upstream_body_stalled",
            StreamError::Upstream(_) | StreamError::Http2(_) => "upstream_body_broken",
        }
    }
}

/// An upstream response body.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Read whole inside the attempt; the bytes count against the memory budget until sent.
    Buffered {
        data: Option<Bytes>,
        _held: Reservation,
    },
    /// Streamed from the upstream connection as it arrives.
    Streamed(StreamedBody),
}

impl UpstreamBody {
    pub fn buffered(data: Bytes, held: Reservation) -> Self {
        UpstreamBody::Buffered {
            data: (!data.is_empty()).then_some(data),
            _held: held,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.get_mut() {
            UpstreamBody::Buffered { data, .. } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            UpstreamBody::Streamed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Buffered { data, .. } => data.is_none(),
            UpstreamBody::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Streamed(body) => body.size_hint(),
        }
    }
}

/// A response body as it comes off the wire: hyper-util's pooled HTTP/1.1 client, or a
/// stream of our own HTTP/2 pool.
#[derive(Debug)]
pub enum WireBody {
    Http1(Incoming),
    Http2(H2Body),
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.get_mut() {
            WireBody::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(StreamError::from))),
            WireBody::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(StreamError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            WireBody::Http1(body) => body.is_end_stream(),
            WireBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            WireBody::Http1(body) => body.size_hint(),
            WireBody::Http2(body) => body.size_hint(),
        }
    }
}

/// A body streamed from upstream. Its connection stays counted as in demand until the body
/// is done (so the region's connection gate lets other requests dial meanwhile), and it ends
/// with [`StreamError::Stalled`] when upstream sends nothing for `idle` while the client is
/// waiting for more. Dropping it mid-body discards the upstream connection (hyper never
/// reuses a connection with an unread body).
#[derive(Debug)]
pub struct StreamedBody {
    inner: WireBody,
    _demand: Demand,
    idle: Duration,
    /// Armed when the client asks for bytes that upstream has not sent yet; a client that
    /// reads slowly is never mistaken for a stalled upstream.
    stall: Pin<Box<Sleep>>,
    armed: bool,
    failed: bool,
}

impl StreamedBody {
    pub fn new(inner: WireBody, demand: Demand, idle: Duration) -> Self {
        Self {
            inner,
            _demand: demand,
            idle,
            stall: Box::pin(tokio::time::sleep(idle)),
            armed: false,
            failed: false,
        }
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.failed = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = Instant::now() + this.idle;
                    this.stall.as_mut().reset(deadline);
                }
                match this.stall.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.failed = true;
                        Poll::Ready(Some(Err(StreamError::Stalled(this.idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
