//! Plain-TCP HTTP/1.1 connections that hold no buffers while they are idle.
//!
//! hyper allocates a read buffer (8–16 KiB) and a write buffer (8 KiB) for each connection and
//! keeps them for the connection's life, so 10,000 idle keep-alive clients cost ~300 MiB. Like
//! nginx, tollgate lets go of them between requests: hyper serves the connection until it has
//! answered every request it read, flushed every byte and waits for the next request; then the
//! loop here takes the socket back from hyper ([`hyper::server::conn::http1::Parts`], with any
//! bytes hyper read but did not parse), drops hyper's state, and waits for the socket to become
//! readable, holding only the socket. The next request gets a fresh hyper connection. This
//! happens once a connection has been idle for [`IDLE_RELEASE_AFTER`], so a client sending
//! request after request keeps its hyper connection.
//!
//! Taking the socket back is only safe at a message boundary, so the loop watches three things:
//! every response body handed to hyper has been dropped by it (written whole), every request body
//! has been read to its end (a body left unread may still be drained by hyper, so such a hyper
//! connection is never taken apart), and the last write was followed by a completed flush. A
//! hyper connection that has not served a request yet (a slow client's partial head) is not
//! taken apart either, so a partial head cannot make the loop spin.
//!
//! Freed buffers sit between live allocations, and glibc keeps such free chunks resident, so
//! [`give_back_memory`] asks it (`malloc_trim`) to return their pages once enough connections
//! have released theirs.
//!
//! Other connections keep hyper's buffers: HTTP/2 multiplexes and keeps its own state, and
//! HTTP/1.1 over TLS uses the same HTTP/1 settings without the release, as rustls keeps its own
//! buffers anyway ([`super::conn`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use hyper::server::conn::http1;

use super::prefixed::Prefixed;
use crate::body::{BodyEnd, ClientBody, EndSignal};
use crate::drain::shutdown_begun;
use crate::service::{ConnInfo, Handler};

/// How long a connection stays idle before hyper's buffers are released: longer than the gap
/// between a busy client's requests, so only connections that really wait pay for a new hyper
/// connection (two buffers and its state) at their next request.
pub const IDLE_RELEASE_AFTER: Duration = Duration::from_millis(250);
/// Released connections worth giving memory back for: 256 × ~24 KiB of buffers ≈ 6 MiB.
const TRIM_AFTER_RELEASES: usize = 256;
/// How often [`give_back_memory`] looks at the count: at most one trim (a few ms of allocator
/// locks on a large heap) per interval.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Connections that released their buffers since the allocator was last asked to return free
/// memory.
static RELEASED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);

/// What the loop knows about the hyper connection it drives. Shared with the response and
/// request bodies of that connection, which may be polled by other tasks (the upstream client
/// polls the request body), hence atomics.
#[derive(Debug, Default)]
struct Activity {
    /// Responses hyper has not dropped yet, plus request bodies not read to their end.
    busy: AtomicUsize,
    /// A flush completed after the last write and after the last response ended.
    flushed: AtomicBool,
    /// The current hyper connection has served a request.
    served: AtomicBool,
    /// A request body was dropped before its end: hyper may still be draining it.
    stuck: AtomicBool,
}

impl Activity {
    /// A request arrived: counted busy until the returned token (its response body) is dropped.
    fn start(self: &Arc<Self>) -> Busy {
        self.served.store(true, Ordering::Release);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// A request body that is not empty: busy until it has been read to its end.
    fn watch_body(self: &Arc<Self>) -> EndSignal {
        self.busy.fetch_add(1, Ordering::AcqRel);
        EndSignal::new(self.clone())
    }

    fn end(&self) {
        // Whatever ended may have left bytes in hyper's write buffer: a flush must follow.
        self.flushed.store(false, Ordering::Release);
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether hyper, having just returned `Pending`, may be taken apart without losing a byte.
    fn releasable(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
            && self.flushed.load(Ordering::Acquire)
            && self.served.load(Ordering::Acquire)
            && !self.stuck.load(Ordering::Acquire)
    }

    /// A fresh hyper connection is about to start.
    fn reset(&self) {
        self.served.store(false, Ordering::Release);
        self.stuck.store(false, Ordering::Release);
        self.flushed.store(false, Ordering::Release);
    }
}

/// Counts one response (or one request body) as busy while it lives.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl BodyEnd for Activity {
    /// A request body ended. Dropped before its end, hyper may still drain it: the connection
    /// is not to be taken apart.
    fn ended(&self, whole: bool) {
        if !whole {
            self.stuck.store(true, Ordering::Release);
        }
        self.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts as busy until hyper drops it (written whole, or abandoned
    /// with the connection).
    struct Tracked<B> {
        #[pin]
        inner: B,
        busy: Busy,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket as hyper sees it: bytes read earlier but not parsed come first, and writes and
/// flushes are noted in the [`Activity`].
struct Socket {
    io: Prefixed<TcpStream>,
    activity: Arc<Activity>,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.activity.flushed.store(false, Ordering::Release);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.activity.flushed.store(false, Ordering::Release);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            self.activity.flushed.store(true, Ordering::Release);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a connection in `tollgate_connections_idle` while it waits without hyper.
struct Idle<'g>(&'g prometheus::IntGauge);

impl Idle<'_> {
    fn count(gauge: &prometheus::IntGauge) -> Idle<'_> {
        gauge.inc();
        Idle(gauge)
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One hyper connection's last step, as the loop sees it.
enum Step {
    /// hyper finished (client closed, `Connection: close`, an upgrade, an error).
    Ended(Result<(), hyper::Error>),
    /// Waiting for the next request with nothing in flight: may be taken apart.
    Idle,
    /// Shutdown began, or the connection reached its maximum age (`retire_at`): no new request.
    Closing,
}

/// Serves HTTP/1.1 on a plain connection until it ends, releasing hyper's buffers whenever the
/// connection is idle. An idle connection is closed after `idle` (the header timeout: the same
/// bound hyper applies while it holds the connection), at shutdown and once `retire_at` (its
/// maximum age, `limits.max_connection_age`) has passed; a busy one is told to close after its
/// current response (`Connection: close`) when shutdown begins or `retire_at` passes.
/// `prefix` holds the bytes already read from `stream` to tell HTTP/1 from HTTP/2.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<H: Handler>(
    mut stream: TcpStream,
    mut prefix: Bytes,
    info: ConnInfo,
    builder: &http1::Builder,
    idle: Duration,
    handler: H,
    idle_gauge: &prometheus::IntGauge,
    mut closing: watch::Receiver<bool>,
    retire_at: Instant,
) {
    let peer = info.peer;
    let info = Arc::new(info);
    let activity = Arc::new(Activity::default());
    let watch = activity.clone();
    let mut svc = service_fn(move |req: Request<Incoming>| {
        let busy = watch.start();
        let req = req.map(|b| {
            if b.is_end_stream() {
                ClientBody::new(b)
            } else {
                ClientBody::watched(b, watch.watch_body())
            }
        });
        let handled = handler.handle(&info, req);
        async move {
            let resp = handled.await;
            Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, busy }))
        }
    });
    // One timer for the connection's life, re-armed each time the connection turns idle.
    let release = tokio::time::sleep(IDLE_RELEASE_AFTER);
    tokio::pin!(release);
    // When the current idle spell began: it may last `idle` in all, with or without hyper.
    let mut idle_since = Instant::now();
    // Fires once the connection is too old to take another request.
    let retire = tokio::time::sleep_until(retire_at);
    tokio::pin!(retire);
    loop {
        if prefix.is_empty() {
            let _counted = Idle::count(idle_gauge);
            let until = (idle_since + idle).min(retire_at);
            let ready = tokio::select! {
                r = tokio::time::timeout_at(until, stream.readable()) => matches!(r, Ok(Ok(()))),
                () = shutdown_begun(&mut closing) => false,
            };
            if !ready {
                return;
            }
        }
        activity.reset();
        let socket = Socket {
            io: Prefixed { prefix, io: stream },
            activity: activity.clone(),
        };
        // Boxed so an idle connection's task does not keep room for hyper's state.
        let mut conn = Box::new(
            builder
                .serve_connection(TokioIo::new(socket), svc)
                .with_upgrades(),
        );
        let mut shutting_down = false;
        let mut armed = None;
        loop {
            let step = tokio::select! {
                biased;
                () = shutdown_begun(&mut closing), if !shutting_down => Step::Closing,
                s = drive(&mut conn, &activity, release.as_mut(), &mut armed) => s,
                // After `drive`: a request that arrived with the deadline is read first and
                // answered with `Connection: close`.
                () = retire.as_mut(), if !shutting_down => Step::Closing,
            };
            match step {
                Step::Closing => {
                    shutting_down = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                Step::Ended(Ok(())) => return,
                Step::Ended(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    return;
                }
                Step::Idle if shutting_down => return,
                Step::Idle => {
                    idle_since = armed.unwrap_or_else(Instant::now);
                    RELEASED_SINCE_TRIM.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let Some(parts) = conn.into_parts() else {
            return; // not reached: an upgrade ends the hyper connection (`Step::Ended`)
        };
        let socket = parts.io.into_inner();
        stream = socket.io.io;
        svc = parts.service;
        // Bytes hyper read but did not parse come first, then any it never read.
        prefix = if socket.io.prefix.is_empty() {
            parts.read_buf
        } else {
            let mut both = BytesMut::from(&parts.read_buf[..]);
            both.extend_from_slice(&socket.io.prefix);
            both.freeze()
        };
    }
}

/// Polls the hyper connection until it ends, or until it has been releasable (idle) for
/// [`IDLE_RELEASE_AFTER`] on end. `armed` is when the idle spell that `release` times began.
async fn drive<C>(
    conn: &mut Box<C>,
    activity: &Activity,
    mut release: Pin<&mut tokio::time::Sleep>,
    armed: &mut Option<Instant>,
) -> Step
where
    C: Future<Output = Result<(), hyper::Error>> + Unpin,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut **conn).poll(cx) {
            return Poll::Ready(Step::Ended(r));
        }
        if !activity.releasable() {
            // Busy again: the idle spell being timed (if any) is over. A timer still pending
            // may wake the task once for nothing.
            *armed = None;
            return Poll::Pending;
        }
        if armed.is_none() {
            let now = Instant::now();
            *armed = Some(now);
            release.as_mut().reset(now + IDLE_RELEASE_AFTER);
        }
        match release.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Step::Idle),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Runs until `stop`: once a second, when at least `TRIM_AFTER_RELEASES` (256) connections have
/// released their buffers since the last time, asks glibc to return free heap pages to the
/// system (off the async workers). Without it, the buffers of connections that went idle stay
/// resident as free chunks between live allocations. Does nothing with other allocators.
pub(crate) async fn give_back_memory(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown_begun(&mut stop) => return,
            _ = tick.tick() => {}
        }
        if RELEASED_SINCE_TRIM.load(Ordering::Relaxed) < TRIM_AFTER_RELEASES {
            continue;
        }
        RELEASED_SINCE_TRIM.store(0, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
