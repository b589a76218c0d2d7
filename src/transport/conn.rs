//! One connection from accept to close: the PROXY header, TLS, HTTP/1.1 or HTTP/2, and the
//! bounds of its life (maximum age, HTTP/2 idle timeout, shutdown).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::prefixed::Prefixed;
use crate::body::ClientBody;
use crate::drain::shutdown_begun;
use crate::service::{ConnInfo, Handler};
use crate::tls::TlsSettings;

/// A connection retires up to 1/this of `limits.max_connection_age` early (gRPC jitters its
/// `MAX_CONNECTION_AGE` by ±10% for the same reason: no synchronised reconnect storms).
const AGE_JITTER_DIVISOR: u32 = 10;
/// Longest a connection sent a GOAWAY for idleness or age may stay open with no request in
/// flight: hyper closes it once the client answers the GOAWAY's PING (one round trip), so this
/// only ends peers that never answer.
const GOAWAY_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A TLS handshake not finished by then is abandoned, so a stalled client holds no task long.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 concurrent streams per connection; bounds per-connection work.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 per-stream receive window: room for a fast upload without unbounded buffering.
const H2_STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 per-connection receive window: a few streams' worth.
const H2_CONNECTION_WINDOW: u32 = 4 << 20;
/// HTTP/2 pings on an idle connection find peers that vanished without closing.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A ping unanswered this long closes the connection.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 connection preface (RFC 9113 3.4): a plain connection that opens with it speaks
/// HTTP/2 by prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counters the transport keeps for every connection, whatever its listener.
#[derive(Clone)]
pub(crate) struct Counters {
    /// `tollgate_connections_idle`: plain HTTP/1 connections waiting without hyper's buffers.
    pub(crate) idle: prometheus::IntGauge,
    /// `tollgate_tls_handshake_failures_total`.
    pub(crate) tls_handshake_failures: prometheus::IntCounter,
}

/// The bounds of a connection, from the configuration's `limits:`.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    /// `limits.header_timeout`: the longest wait for a request head, and the idle keep-alive
    /// bound of HTTP/1.
    pub(crate) header_timeout: Duration,
    /// `limits.max_header_bytes`: the largest request head (HTTP/2: header list).
    pub(crate) max_header_bytes: usize,
    /// `limits.max_headers`: the most header fields in an HTTP/1 head.
    pub(crate) max_headers: usize,
    /// `limits.h2_idle_timeout`: how long an HTTP/2 connection may have no request in flight.
    pub(crate) h2_idle_timeout: Duration,
    /// `limits.max_connection_age`.
    pub(crate) max_connection_age: Duration,
}

/// The one HTTP/1.1 and the one HTTP/2 configuration every connection is served with, for one
/// set of [`ConnLimits`].
pub(crate) struct Settings {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a connection may sit idle between requests (`limits.header_timeout`).
    idle: Duration,
    /// How long an HTTP/2 connection may have no request in flight (`limits.h2_idle_timeout`).
    h2_idle: Duration,
    /// `limits.max_connection_age`.
    max_age: Duration,
}

impl Settings {
    /// hyper's settings for `limits`.
    pub(crate) fn new(limits: &ConnLimits) -> Settings {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // `max_header_size` bounds the parsed head; `max_buf_size` alone only bounds reads
            // that leave the head incomplete, so a head read in few large reads could pass it.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        Settings {
            http1: h1,
            http2: h2,
            idle: limits.header_timeout,
            h2_idle: limits.h2_idle_timeout,
            max_age: limits.max_connection_age,
        }
    }
}

/// How the connections of one listener are served.
pub(crate) struct Endpoint {
    /// Whether each connection starts with a PROXY protocol header (v1 or v2).
    pub(crate) proxy_protocol: bool,
    /// TLS, when the listener terminates it.
    pub(crate) tls: Option<Arc<TlsSettings>>,
    /// hyper's settings.
    pub(crate) settings: Arc<Settings>,
    /// Counters shared by every listener.
    pub(crate) counters: Counters,
}

/// When a connection accepted now stops taking requests: `max_age` from now, less a random
/// part of up to a tenth of it ([`AGE_JITTER_DIVISOR`]); far in the future when that does not
/// fit in an `Instant`.
fn retire_at(max_age: Duration, peer: SocketAddr) -> Instant {
    use std::hash::BuildHasher;
    // A fresh `RandomState` has fresh keys: a cheap random number, without a dependency.
    let r = std::collections::hash_map::RandomState::new().hash_one(peer) % 1024;
    let early = max_age / AGE_JITTER_DIVISOR / 1024 * r as u32;
    let now = Instant::now();
    now.checked_add(max_age.saturating_sub(early))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// How a plain connection is to be served, decided from its first bytes.
enum Opening {
    /// HTTP/1.1; the bytes read to decide come first.
    Http1(Bytes),
    /// The whole HTTP/2 preface, read (and to be read again by hyper).
    Http2(Bytes),
    /// Closed, silent for `idle`, or shutting down before it could be told.
    Gone,
}

/// Tells HTTP/1.1 from the HTTP/2 preface by a new connection's first bytes, waiting at most
/// `idle` in all. Almost always one `peek` decides and nothing is consumed: hyper then reads the
/// request whole into its own buffer (handing it a few bytes first would make it grow that
/// buffer, 8 KiB more per connection). Only when the bytes so far are a strict prefix of the
/// preface (a client that sent `P` alone) are they read, and reading goes on until they differ
/// (HTTP/1.1) or are the whole preface (HTTP/2); those bytes are handed on. A client that
/// sends part of the preface and stops is closed with the header timeout, like any slow head.
async fn opening(
    stream: &mut TcpStream,
    idle: Duration,
    closing: &mut watch::Receiver<bool>,
) -> Opening {
    let deadline = Instant::now() + idle;
    let mut head = [0u8; H2_PREFACE.len()];
    let peeked = tokio::select! {
        r = tokio::time::timeout_at(deadline, stream.peek(&mut head)) => r,
        () = shutdown_begun(closing) => return Opening::Gone,
    };
    let mut n = match peeked {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Opening::Gone,
        Ok(Ok(n)) => n,
    };
    if head[..n] != H2_PREFACE[..n] {
        return Opening::Http1(Bytes::new());
    }
    if n == H2_PREFACE.len() {
        return Opening::Http2(Bytes::new());
    }
    // A strict prefix of the preface: take what was peeked, then read until it is decided.
    if stream.read_exact(&mut head[..n]).await.is_err() {
        return Opening::Gone;
    }
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read(&mut head[n..])) => r,
            () = shutdown_begun(closing) => return Opening::Gone,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Opening::Gone,
            Ok(Ok(r)) => n += r,
        }
        let seen = Bytes::copy_from_slice(&head[..n]);
        if head[..n] != H2_PREFACE[..n] {
            return Opening::Http1(seen);
        }
        if n == H2_PREFACE.len() {
            return Opening::Http2(seen);
        }
    }
}

/// Serves one accepted connection until it ends: the PROXY header when the listener expects one
/// (its source address becomes the peer; a connection without a valid one is closed), then TLS
/// or plain HTTP/1.1 ([`super::http1`]) or HTTP/2. It stops taking requests at its maximum age
/// ([`retire_at`]) and when `closing` says shutdown began.
///
/// The task of every connection is sized for this future's largest state, so the states only
/// some connections reach (PROXY header, TLS, HTTP/2) are boxed: an idle plain HTTP/1
/// connection then costs a small task, not room for rustls and hyper's HTTP/2 state.
pub(crate) async fn serve<H: Handler>(
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    endpoint: &Endpoint,
    handler: H,
    mut closing: watch::Receiver<bool>,
) {
    let settings = &endpoint.settings;
    let retire = retire_at(settings.max_age, tcp_peer);
    let peer = if endpoint.proxy_protocol {
        match Box::pin(crate::proxy_protocol::read_header(&mut stream)).await {
            Ok(Some(source)) => source,
            Ok(None) => tcp_peer,
            Err(e) => {
                tracing::debug!(%tcp_peer, error = %e, "connection without a valid PROXY header closed");
                return;
            }
        }
    } else {
        tcp_peer
    };
    if let Some(tls) = &endpoint.tls {
        return Box::pin(tls_connection(
            stream, peer, tls, endpoint, handler, closing, retire,
        ))
        .await;
    }
    let info = ConnInfo {
        peer,
        tls: false,
        client_cert: None,
        sni: None,
    };
    match opening(&mut stream, settings.idle, &mut closing).await {
        Opening::Http1(prefix) => {
            let counters = &endpoint.counters;
            super::http1::serve(
                stream,
                prefix,
                info,
                &settings.http1,
                settings.idle,
                handler,
                &counters.idle,
                closing,
                retire,
            )
            .await;
        }
        Opening::Http2(prefix) => {
            let io = Prefixed { prefix, io: stream };
            Box::pin(serve_h2(io, info, settings, handler, closing, retire)).await;
        }
        Opening::Gone => {}
    }
}

/// A TLS connection: the handshake (abandoned after [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP/2 when
/// ALPN chose it, else HTTP/1.1.
async fn tls_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &TlsSettings,
    endpoint: &Endpoint,
    handler: H,
    closing: watch::Receiver<bool>,
    retire: Instant,
) {
    let failures = &endpoint.counters.tls_handshake_failures;
    let tls_stream =
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                failures.inc();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                failures.inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
    let info = ConnInfo {
        peer,
        tls: true,
        client_cert: crate::tls::client_cert(tls_stream.get_ref().1),
        sni: tls_stream.get_ref().1.server_name().map(|n| {
            n.trim_end_matches('.')
                .to_ascii_lowercase()
                .into_boxed_str()
        }),
    };
    let settings = &endpoint.settings;
    if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(tls_stream, info, settings, handler, closing, retire).await;
    } else {
        serve_tls_http1(tls_stream, info, settings, handler, closing, retire).await;
    }
}

/// Serves HTTP/2 on `io` until the connection ends; it gets a GOAWAY once it has had no
/// request in flight for `limits.h2_idle_timeout`, at its maximum age, and when shutdown begins
/// (idle connections close, busy ones finish their streams).
async fn serve_h2<IO, H: Handler>(
    io: IO,
    info: ConnInfo,
    settings: &Settings,
    handler: H,
    closing: watch::Receiver<bool>,
    retire_at: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let streams = Arc::new(Streams::new());
    let conn = settings.http2.serve_connection(
        TokioIo::new(io),
        service(handler, info, Some(streams.clone())),
    );
    let life = Lifetime {
        retire_at,
        idle: Some((streams, settings.h2_idle)),
    };
    finish(conn, |c| c.graceful_shutdown(), closing, peer, life).await;
}

/// Serves HTTP/1.1 (with upgrades) on a TLS connection until it ends. rustls keeps its own
/// buffers for the connection's life, so hyper's are kept too (unlike [`super::http1::serve`]).
/// Its idle keep-alive bound is hyper's header timeout; at its maximum age it closes (idle) or
/// answers its current request with `Connection: close`.
async fn serve_tls_http1<IO, H: Handler>(
    io: IO,
    info: ConnInfo,
    settings: &Settings,
    handler: H,
    closing: watch::Receiver<bool>,
    retire_at: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let conn = settings
        .http1
        .serve_connection(TokioIo::new(io), service(handler, info, None))
        .with_upgrades();
    let life = Lifetime {
        retire_at,
        idle: None,
    };
    finish(conn, |c| c.graceful_shutdown(), closing, peer, life).await;
}

/// A response as hyper writes it: the handler's, counted in flight until it has been sent.
type Answer<H> = hyper::Response<Counted<<H as Handler>::Body>>;

/// The handler as a hyper service for one connection; with `streams`, each request is counted
/// in flight there until its response has been sent.
fn service<H: Handler>(
    handler: H,
    info: ConnInfo,
    streams: Option<Arc<Streams>>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = Answer<H>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Answer<H>, std::convert::Infallible>> + Send,
> + Clone {
    let info = Arc::new(info);
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = streams.as_ref().map(|s| s.start());
        let handled = handler.handle(&info, req.map(ClientBody::new));
        async move {
            let resp = handled.await;
            Ok(resp.map(|inner| Counted { inner, in_flight }))
        }
    })
}

/// The requests in flight on one connection, and when the last one ended: what
/// `limits.h2_idle_timeout` measures. Updated by the service on every request (two atomic
/// operations at its start and end); read only when the connection's idle timer fires.
#[derive(Debug)]
struct Streams {
    /// Requests whose response hyper has not dropped yet.
    open: AtomicUsize,
    /// When the last request ended, in milliseconds after `since`.
    last_end: AtomicU64,
    /// When the connection began.
    since: Instant,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            open: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    /// A request began: in flight until the returned guard (kept with its response) drops.
    fn start(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Since when the connection has had no request in flight; `None` while one is.
    fn quiet_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0)
            .then(|| self.since + Duration::from_millis(self.last_end.load(Ordering::Acquire)))
    }
}

/// One request in flight on a connection ([`Streams`]).
#[derive(Debug)]
struct InFlight(Arc<Streams>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let at = u64::try_from(s.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Before the count drops, so a reader that sees none in flight sees this end too.
        s.last_end.fetch_max(at, Ordering::AcqRel);
        s.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until hyper drops it (sent
    /// whole, or its stream reset).
    struct Counted<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What ends a connection besides its client and shutdown.
struct Lifetime {
    /// When it stops taking requests (`limits.max_connection_age`, see [`retire_at`]).
    retire_at: Instant,
    /// For HTTP/2: its requests in flight, and how long it may have none
    /// (`limits.h2_idle_timeout`).
    idle: Option<(Arc<Streams>, Duration)>,
}

/// Drives `conn` to its end. It is asked to finish with `graceful` (idle, it closes; busy,
/// HTTP/1 closes after the current response and HTTP/2 sends GOAWAY and finishes its streams)
/// when shutdown begins, when it reaches `life.retire_at`, and, with `life.idle`, once it has
/// had no request in flight for the idle timeout. After a GOAWAY for age or idleness, a
/// connection with no request in flight for [`GOAWAY_CLOSE_GRACE`] is dropped.
async fn finish<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    mut closing: watch::Receiver<bool>,
    peer: SocketAddr,
    life: Lifetime,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let retire = tokio::time::sleep_until(life.retire_at);
    let first_look = life
        .idle
        .as_ref()
        .map_or(life.retire_at, |(_, after)| Instant::now() + *after);
    let idle = tokio::time::sleep_until(first_look);
    let mut retire = std::pin::pin!(retire);
    let mut idle = std::pin::pin!(idle);
    // When the connection was asked to finish for its age or idleness.
    let mut retired: Option<Instant> = None;
    let ended = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = shutdown_begun(&mut closing) => {
                graceful(conn.as_mut());
                break conn.await;
            }
            () = retire.as_mut(), if retired.is_none() => {
                tracing::debug!(%peer, "connection reached limits.max_connection_age; it takes no new requests");
                graceful(conn.as_mut());
                let now = Instant::now();
                retired = Some(now);
                idle.as_mut().reset(now + GOAWAY_CLOSE_GRACE);
            }
            () = idle.as_mut(), if life.idle.is_some() => {
                let Some((streams, timeout)) = &life.idle else { continue };
                let now = Instant::now();
                let (after, quiet) = match (retired, streams.quiet_since()) {
                    (_, None) => {
                        // A request in flight: look again in a while.
                        idle.as_mut().reset(now + *timeout);
                        continue;
                    }
                    (None, Some(q)) => (*timeout, q),
                    (Some(at), Some(q)) => (GOAWAY_CLOSE_GRACE, q.max(at)),
                };
                if now < quiet + after {
                    idle.as_mut().reset(quiet + after);
                } else if retired.is_some() {
                    tracing::debug!(%peer, "connection sent a GOAWAY did not close; dropping it");
                    return;
                } else {
                    tracing::debug!(%peer, "HTTP/2 connection idle for limits.h2_idle_timeout; GOAWAY");
                    graceful(conn.as_mut());
                    retired = Some(now);
                    idle.as_mut().reset(now + GOAWAY_CLOSE_GRACE);
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_retires_within_a_tenth_before_its_maximum_age() {
        let age = Duration::from_secs(100);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..100 {
            let before = Instant::now();
            let at = retire_at(age, peer);
            assert!(at <= Instant::now() + age, "later than the maximum age");
            assert!(
                at >= before + age - age / AGE_JITTER_DIVISOR,
                "more than a tenth early"
            );
        }
        // An age that does not fit in an Instant is far away, not a panic.
        assert!(retire_at(Duration::MAX, peer) > Instant::now() + Duration::from_secs(86_400));
    }

    #[test]
    fn streams_are_quiet_only_with_none_in_flight() {
        let s = Arc::new(Streams::new());
        assert!(
            s.quiet_since().is_some(),
            "a new connection is quiet from its start"
        );
        let a = s.start();
        let b = s.start();
        assert!(s.quiet_since().is_none());
        drop(a);
        assert!(s.quiet_since().is_none(), "one still in flight");
        drop(b);
        let q = s.quiet_since().expect("none in flight");
        assert!(q >= s.since);
    }
}
