//! The request body on its way to the upstream: streamed frame by frame, never buffered whole,
//! cut off when it grows past the body limit or when the client pauses longer than the idle
//! timeout. What went wrong is recorded so the proxy can answer 413 or 408 instead of 502.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::http1::BodyWatch;

/// Why a request body stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// More bytes than the limit.
    TooLarge,
    /// The client paused longer than the idle timeout.
    Stalled,
    /// The client's stream broke (disconnect, protocol error).
    Aborted,
}

/// Shared record of a body failure, read by the proxy after the upstream call fails.
#[derive(Debug, Default, Clone)]
pub struct FailureCell(Arc<AtomicU8>);

impl FailureCell {
    fn set(&self, f: BodyFailure) {
        let v = match f {
            BodyFailure::TooLarge => 1,
            BodyFailure::Stalled => 2,
            BodyFailure::Aborted => 3,
        };
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The failure, if the body failed.
    pub fn get(&self) -> Option<BodyFailure> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyFailure::TooLarge),
            2 => Some(BodyFailure::Stalled),
            3 => Some(BodyFailure::Aborted),
            _ => None,
        }
    }
}

/// Error yielded by a [`GuardedBody`] that was cut off.
#[derive(Debug)]
pub struct BodyError(pub BodyFailure);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body stopped: {:?}", self.0)
    }
}

impl std::error::Error for BodyError {}

pin_project_lite::pin_project! {
    /// A client's request body as hyper delivers it. On a plain HTTP/1 connection it tells the
    /// connection loop when it has been read to its end (see [`crate::http1`]): only then may
    /// the loop take the idle connection back from hyper.
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        watch: Option<BodyWatch>,
    }
}

impl ClientBody {
    /// A body nobody waits for (HTTP/2, TLS, or no body at all).
    pub fn new(inner: Incoming) -> ClientBody {
        ClientBody { inner, watch: None }
    }

    /// A body whose end `watch` reports.
    pub fn watched(inner: Incoming, watch: BodyWatch) -> ClientBody {
        ClientBody {
            inner,
            watch: Some(watch),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(watch) = this.watch.take() {
            watch.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A client's request body with a size limit and an idle timeout.
    pub struct GuardedBody {
        #[pin]
        inner: ClientBody,
        remaining: u64,
        idle: Duration,
        // Allocated at the first pause, then re-armed (not re-allocated) at each later one.
        timer: Option<Pin<Box<Sleep>>>,
        // Whether `timer` counts the current pause (cleared by every frame).
        armed: bool,
        failure: FailureCell,
        // `headers.allow_underscores`, for the trailers ([`crate::headers::sanitize_trailers`]).
        allow_underscores: bool,
    }
}

impl GuardedBody {
    /// Wraps `inner`, allowing at most `limit` bytes and `idle` between frames. Trailers are
    /// cleaned like the request head ([`crate::headers::sanitize_trailers`]).
    pub fn new(inner: ClientBody, limit: u64, idle: Duration, failure: FailureCell) -> GuardedBody {
        GuardedBody {
            inner,
            remaining: limit,
            idle,
            timer: None,
            armed: false,
            failure,
            allow_underscores: false,
        }
    }

    /// Lets trailer names with `_` through (`headers.allow_underscores`).
    pub fn allowing_underscores(mut self, allow: bool) -> GuardedBody {
        self.allow_underscores = allow;
        self
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.armed = false;
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.failure.set(BodyFailure::TooLarge);
                        return Poll::Ready(Some(Err(BodyError(BodyFailure::TooLarge))));
                    }
                    *this.remaining -= n;
                }
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        crate::headers::sanitize_trailers(&mut trailers, *this.allow_underscores);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                this.failure.set(BodyFailure::Aborted);
                Poll::Ready(Some(Err(BodyError(BodyFailure::Aborted))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = *this.idle;
                let timer = match this.timer {
                    Some(t) if !*this.armed => {
                        t.as_mut().reset(tokio::time::Instant::now() + idle);
                        t
                    }
                    Some(t) => t,
                    None => this.timer.insert(Box::pin(tokio::time::sleep(idle))),
                };
                *this.armed = true;
                if timer.as_mut().poll(cx).is_ready() {
                    this.failure.set(BodyFailure::Stalled);
                    return Poll::Ready(Some(Err(BodyError(BodyFailure::Stalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body on its way through the pipeline: still streaming from the client, or read
/// whole because an authorizer had to see it (SigV4 signs the body's hash).
pub enum ReqBody {
    /// Not read yet.
    Streaming(ClientBody),
    /// Read whole (bounded by the body limit).
    Buffered(Bytes),
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectError {
    /// Larger than the limit.
    TooLarge,
    /// Not complete within the deadline.
    Timeout,
    /// The client's stream broke.
    Aborted,
}

impl ReqBody {
    /// Reads the whole body, refusing more than `limit` bytes or taking longer than `deadline`.
    pub async fn collect(self, limit: usize, deadline: Duration) -> Result<Bytes, CollectError> {
        use http_body_util::BodyExt;
        match self {
            ReqBody::Buffered(b) if b.len() > limit => Err(CollectError::TooLarge),
            ReqBody::Buffered(b) => Ok(b),
            ReqBody::Streaming(inc) => {
                let collected = tokio::time::timeout(
                    deadline,
                    http_body_util::Limited::new(inc, limit).collect(),
                )
                .await
                .map_err(|_| CollectError::Timeout)?;
                match collected {
                    Ok(c) => Ok(c.to_bytes()),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        Err(CollectError::TooLarge)
                    }
                    Err(_) => Err(CollectError::Aborted),
                }
            }
        }
    }
}
