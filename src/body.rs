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

/// Why a request body stopped early, streamed or read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// More bytes than the limit.
    TooLarge,
    /// The client paused longer than the idle timeout, or did not finish by the deadline.
    Stalled,
    /// The client's stream broke (disconnect, protocol error).
    Aborted,
}

impl BodyFailure {
    /// The `reason` label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            BodyFailure::TooLarge => "body_too_large",
            BodyFailure::Stalled => "body_timeout",
            BodyFailure::Aborted => "client_aborted",
        }
    }
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

/// Told once when a request body has been read to its end, or dropped before it. The plain
/// HTTP/1 transport uses it to know when a connection is at a message boundary.
pub(crate) trait BodyEnd: Send + Sync {
    /// The body ended: `whole` when it was read to its end, `false` when it was dropped early.
    fn ended(&self, whole: bool);
}

/// Held by a [`ClientBody`] until its end; tells its [`BodyEnd`] exactly once.
pub(crate) struct EndSignal(Option<Arc<dyn BodyEnd>>);

impl EndSignal {
    /// A signal to `to`.
    pub(crate) fn new(to: Arc<dyn BodyEnd>) -> EndSignal {
        EndSignal(Some(to))
    }

    fn finished(mut self) {
        if let Some(to) = self.0.take() {
            to.ended(true);
        }
    }
}

impl Drop for EndSignal {
    fn drop(&mut self) {
        if let Some(to) = self.0.take() {
            to.ended(false);
        }
    }
}

impl std::fmt::Debug for EndSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndSignal")
    }
}

/// A client's request body: as hyper delivers it from a connection, or fixed bytes (tests,
/// benches, anything that drives the pipeline without a socket). A body with an
/// `EndSignal` tells the connection when it has been read to its end.
#[derive(Debug)]
pub struct ClientBody {
    source: Source,
    end: Option<EndSignal>,
}

#[derive(Debug)]
enum Source {
    Client(Incoming),
    Fixed(Option<Bytes>),
}

impl ClientBody {
    /// A body nobody waits for (HTTP/2, TLS, or no body at all).
    pub(crate) fn new(inner: Incoming) -> ClientBody {
        ClientBody {
            source: Source::Client(inner),
            end: None,
        }
    }

    /// A body whose end `end` reports.
    pub(crate) fn watched(inner: Incoming, end: EndSignal) -> ClientBody {
        ClientBody {
            source: Source::Client(inner),
            end: Some(end),
        }
    }

    /// A body of fixed bytes, sent as one frame (none when empty).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> ClientBody {
        let bytes: Bytes = bytes.into();
        ClientBody {
            source: Source::Fixed((!bytes.is_empty()).then_some(bytes)),
            end: None,
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
        let this = self.get_mut();
        let (polled, ended) = match &mut this.source {
            Source::Client(inner) => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
                    _ => false,
                };
                (polled, ended)
            }
            Source::Fixed(bytes) => (Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))), true),
        };
        if ended && let Some(end) = this.end.take() {
            end.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Client(inner) => inner.is_end_stream(),
            Source::Fixed(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Client(inner) => inner.size_hint(),
            Source::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
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
    /// cleaned like the request head (`crate::headers::sanitize_trailers`).
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

impl ReqBody {
    /// Reads the whole body, refusing more than `limit` bytes or taking longer than `deadline`.
    pub async fn collect(self, limit: usize, deadline: Duration) -> Result<Bytes, BodyFailure> {
        use http_body_util::BodyExt;
        match self {
            ReqBody::Buffered(b) if b.len() > limit => Err(BodyFailure::TooLarge),
            ReqBody::Buffered(b) => Ok(b),
            ReqBody::Streaming(inc) => {
                let collected = tokio::time::timeout(
                    deadline,
                    http_body_util::Limited::new(inc, limit).collect(),
                )
                .await
                .map_err(|_| BodyFailure::Stalled)?;
                match collected {
                    Ok(c) => Ok(c.to_bytes()),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        Err(BodyFailure::TooLarge)
                    }
                    Err(_) => Err(BodyFailure::Aborted),
                }
            }
        }
    }
}
