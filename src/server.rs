//! Listeners and lifecycle: binding the public and admin listeners, accepting connections
//! (plain HTTP/1.1 through [`crate::http1`], which releases hyper's buffers while a connection
//! is idle; TLS and HTTP/2 through hyper-util's auto builder; header timeouts and size limits
//! on both), applying `listeners:` changes on reload without a restart, counting connections,
//! and shutting down gracefully: readiness off, stop accepting, let in-flight requests finish
//! within the grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::drain::{Admitted, Tracker};
use crate::gateway::{BindFailure, Gateway, ListenerCommit, ListenerControl};
use crate::pipeline::{self, ConnInfo};
use crate::snapshot::{Limits, ListenerSpec, Snapshot};
use crate::tls::TlsSettings;

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
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

/// Why the gateway could not start.
#[derive(Debug)]
pub enum StartError {
    /// The config has errors.
    Config(Vec<ConfigError>),
    /// A listener could not be bound.
    Bind(SocketAddr, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(errs) => {
                for e in errs {
                    writeln!(f, "{e}")?;
                }
                Ok(())
            }
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A started gateway.
pub struct Running {
    /// Shared state (snapshot, metrics).
    pub gateway: Arc<Gateway>,
    /// Public addresses bound at start, in config order (real ports when the config said 0).
    /// [`Running::listener_addrs`] follows reloads.
    pub public_addrs: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    listeners: Arc<Listeners>,
    stop_admin: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    maintenance: JoinHandle<()>,
}

/// Loads the config, binds every listener and starts serving. Refuses a config with errors
/// and an address that cannot be bound.
pub async fn start(config: &Path) -> Result<Running, StartError> {
    let gateway = Arc::new(Gateway::load(config, true).map_err(StartError::Config)?);
    let snap = gateway.snapshot();
    let admin = TcpListener::bind(snap.admin.bind)
        .await
        .map_err(|e| StartError::Bind(snap.admin.bind, e))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| StartError::Bind(snap.admin.bind, e))?;
    // Every public address is bound before any accept loop starts: a failure leaves nothing
    // running.
    let listeners = Listeners::new(gateway.clone());
    let commit = listeners
        .prepare(&snap)
        .map_err(|f| StartError::Bind(f.addr, f.error))?;
    commit(&snap);
    let control: Weak<dyn ListenerControl> = Arc::downgrade(&listeners) as _;
    gateway.attach_listeners(control);
    let public_addrs = listeners.local_addrs();
    // The admin listener has its own stop signal: it keeps answering (`/readyz` 503) while
    // in-flight requests drain.
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let admin_task = tokio::spawn(accept_admin(admin, gateway.clone(), stop_admin_rx.clone()));
    crate::watch::spawn(gateway.clone(), stop_admin_rx.clone());
    tokio::spawn(crate::http1::give_back_memory(stop_admin_rx.clone()));
    let maintenance = tokio::spawn(crate::limits::maintain(
        gateway.limits().clone(),
        stop_admin_rx,
    ));
    gateway.set_ready(true);
    tracing::info!(public = ?public_addrs, admin = %admin_addr, generation = snap.generation, "tollgate serving");
    Ok(Running {
        gateway,
        public_addrs,
        admin_addr,
        listeners,
        stop_admin,
        admin_task,
        maintenance,
    })
}

impl Running {
    /// The public addresses being served now, in config order (changes with reloads).
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    /// Graceful shutdown: readiness off, `limits.shutdown_delay` of still accepting (so load
    /// balancers notice), listeners closed, in-flight requests given `grace`
    /// (default: the config's `limits.shutdown_grace`) to finish. Returns whether all finished.
    pub async fn shutdown(self, grace: Option<Duration>) -> bool {
        self.gateway.set_ready(false);
        let limits = self.gateway.snapshot().limits.clone();
        let grace = grace.unwrap_or(limits.shutdown_grace);
        if !limits.shutdown_delay.is_zero() {
            tracing::info!(delay = ?limits.shutdown_delay, "not ready; still accepting while load balancers notice");
            tokio::time::sleep(limits.shutdown_delay).await;
        }
        self.listeners.close().await;
        // Idle connections close at once, busy ones after their current response.
        self.listeners.conns.close();
        let requests = self.listeners.conns.wait_empty(grace);
        // Upgraded (WebSocket) connections get the same grace period, then are closed.
        let (requests, upgrades) = tokio::join!(requests, self.gateway.upgrades().drain(grace));
        let clean = requests && upgrades;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        // The last quota snapshot is written after the last request was counted.
        let _ = self.maintenance.await;
        if clean {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
        }
        clean
    }
}

/// What an accept loop serves its next connection with; replaced when a reload changes the
/// listener's settings (certificates, PROXY protocol, limits).
struct Serving {
    proxy_protocol: bool,
    tls: Option<Arc<TlsSettings>>,
    http: Arc<HttpSettings>,
}

/// hyper's settings for one snapshot's limits.
struct HttpSettings {
    /// TLS and HTTP/2 connections.
    auto: auto::Builder<TokioExecutor>,
    /// Plain HTTP/1 connections (see [`crate::http1`]).
    http1: http1::Builder,
    /// How long a connection may sit idle between requests (`limits.header_timeout`).
    idle: Duration,
}

/// One running accept loop.
struct Live {
    /// Its identity across reloads (see [`ListenerKey`]).
    key: ListenerKey,
    local: SocketAddr,
    serving: Arc<ArcSwap<Serving>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The public listeners of a running gateway. A reload keeps the sockets of addresses that
/// stay, binds new ones before the swap (a failure refuses the reload), and closes removed ones
/// (their open connections finish under the graceful-shutdown watch).
struct Listeners {
    me: Weak<Listeners>,
    gateway: Arc<Gateway>,
    live: Mutex<Vec<Live>>,
    /// Every open public connection (`tollgate_connections_active`), and the signal that ends
    /// them at shutdown.
    conns: Arc<Tracker>,
    /// Set at shutdown: later reloads change no listener, and no connection is admitted.
    closed: std::sync::atomic::AtomicBool,
}

/// hyper's connection settings from the snapshot's limits.
fn http_settings(limits: &Limits) -> HttpSettings {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // `max_header_size` bounds the parsed head; `max_buf_size` alone only bounds reads
        // that leave the head incomplete, so a head read in few large reads could pass it.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    HttpSettings {
        auto: auto_builder(limits),
        http1,
        idle: limits.header_timeout,
    }
}

/// The auto builder (HTTP/1.1 or HTTP/2, by ALPN or the HTTP/2 preface).
fn auto_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    b
}

/// A listener's identity across reloads: the address as configured (port 0 stays 0) and how
/// many listeners before it share that address (several `:0` listeners in tests).
type ListenerKey = (SocketAddr, usize);

/// Each listener of `snap` with its identity across reloads.
fn keyed(snap: &Snapshot) -> Vec<(ListenerKey, &ListenerSpec)> {
    let mut out: Vec<(ListenerKey, &ListenerSpec)> = Vec::new();
    for spec in &snap.listeners {
        let n = out.iter().filter(|((a, _), _)| *a == spec.addr).count();
        out.push(((spec.addr, n), spec));
    }
    out
}

impl Listeners {
    fn new(gateway: Arc<Gateway>) -> Arc<Listeners> {
        Arc::new_cyclic(|me| Listeners {
            me: me.clone(),
            conns: Arc::new(Tracker::new(gateway.metrics().connections_active.clone())),
            gateway,
            live: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.live
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|l| l.local)
            .collect()
    }

    /// Stops every accept loop; open connections are left to `conns`.
    async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let live = std::mem::take(&mut *self.live.lock().expect("not poisoned"));
        for l in &live {
            let _ = l.stop.send(true);
        }
        for l in live {
            let _ = l.task.await;
        }
    }

    /// Starts the accept loop of a newly bound listener.
    fn spawn(&self, key: ListenerKey, listener: TcpListener, serving: Serving) -> Live {
        let local = listener.local_addr().unwrap_or(key.0);
        let serving = Arc::new(ArcSwap::from_pointee(serving));
        let (stop, stop_rx) = watch::channel(false);
        let me = self
            .me
            .upgrade()
            .expect("listeners outlive their accept loops");
        let task = tokio::spawn(accept_public(listener, serving.clone(), me, stop_rx));
        tracing::info!(addr = %local, "listening");
        Live {
            key,
            local,
            serving,
            stop,
            task,
        }
    }
}

impl ListenerControl for Listeners {
    fn prepare(&self, next: &Snapshot) -> Result<ListenerCommit, BindFailure> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Box::new(|_| {}));
        }
        let mut bound = Vec::new();
        {
            let live = self.live.lock().expect("not poisoned");
            for (index, (key, spec)) in keyed(next).into_iter().enumerate() {
                if live.iter().any(|l| l.key == key) {
                    continue;
                }
                let l = std::net::TcpListener::bind(spec.addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|error| BindFailure {
                        index,
                        addr: spec.addr,
                        error,
                    })?;
                bound.push((key, l));
            }
        }
        let me = self.me.clone();
        Ok(Box::new(move |snap: &Arc<Snapshot>| {
            if let Some(me) = me.upgrade() {
                me.commit(snap, bound);
            }
        }))
    }
}

impl Listeners {
    /// Makes the running listeners those of `snap`: settings updated in place, new sockets
    /// (bound by `prepare`) started, removed ones stopped.
    fn commit(&self, snap: &Snapshot, mut bound: Vec<(ListenerKey, TcpListener)>) {
        let http = Arc::new(http_settings(&snap.limits));
        let expiry = &self.gateway.metrics().tls_certificate_expiry;
        expiry.reset();
        for spec in &snap.listeners {
            for (file, not_after) in spec.tls.iter().flat_map(|t| &t.certificates) {
                expiry
                    .with_label_values(&[&spec.addr.to_string(), file])
                    .set(*not_after);
            }
        }
        let mut live = self.live.lock().expect("not poisoned");
        let mut old: Vec<Live> = live.drain(..).collect();
        for (key, spec) in keyed(snap) {
            let serving = Serving {
                proxy_protocol: spec.proxy_protocol,
                tls: spec.tls.clone(),
                http: http.clone(),
            };
            if let Some(i) = old.iter().position(|l| l.key == key) {
                let l = old.swap_remove(i);
                l.serving.store(Arc::new(serving));
                live.push(l);
            } else if let Some(i) = bound.iter().position(|(k, _)| *k == key) {
                let (_, listener) = bound.swap_remove(i);
                live.push(self.spawn(key, listener, serving));
            }
        }
        for l in old {
            tracing::info!(addr = %l.local, "listener removed; open connections finish");
            let _ = l.stop.send(true);
        }
    }
}

/// The next connection, or `None` once `stop` fires. Accept errors (such as running out of file
/// descriptors) are logged and retried after a pause.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
}

/// Accepts connections and serves each in its own task, with the listener's settings at the
/// moment of accepting.
async fn accept_public(
    listener: TcpListener,
    serving: Arc<ArcSwap<Serving>>,
    listeners: Arc<Listeners>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, tcp_peer)) = accept(&listener, &mut stop).await {
        let _ = stream.set_nodelay(true);
        if listeners.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return; // shutting down
        }
        let guard = listeners.conns.admit();
        tokio::spawn(connection(
            stream,
            tcp_peer,
            serving.load_full(),
            listeners.gateway.clone(),
            listeners.conns.closing(),
            guard,
        ));
    }
}

/// One connection: the PROXY header when the listener expects one (its source address becomes
/// the peer; a connection without a valid one is closed), then plain HTTP/1 through
/// [`crate::http1`], or the HTTP/2 preface through the auto builder, or TLS.
///
/// The task of every connection is sized for this future's largest state, so the states only
/// some connections reach (PROXY header, TLS, HTTP/2) are boxed: an idle plain HTTP/1
/// connection then costs a small task, not room for rustls and hyper-util's state.
async fn connection(
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    serving: Arc<Serving>,
    gateway: Arc<Gateway>,
    mut closing: watch::Receiver<bool>,
    _guard: Admitted,
) {
    let peer = if serving.proxy_protocol {
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
    if let Some(tls) = &serving.tls {
        return Box::pin(tls_connection(
            stream,
            peer,
            tls,
            &serving.http,
            gateway,
            closing,
        ))
        .await;
    }
    let info = ConnInfo {
        peer,
        tls: false,
        client_cert: None,
    };
    let http = &serving.http;
    match crate::http1::opening(&stream, http.idle, &mut closing).await {
        crate::http1::Opening::Http1 => {
            crate::http1::serve(stream, info, &http.http1, gateway, closing, http.idle).await;
        }
        crate::http1::Opening::Other => {
            Box::pin(serve(stream, info, &http.auto, gateway, closing)).await;
        }
        crate::http1::Opening::Gone => {}
    }
}

/// A TLS connection: the handshake (abandoned after [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP/2 when
/// ALPN chose it, else HTTP/1.1.
async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &TlsSettings,
    http: &HttpSettings,
    gateway: Arc<Gateway>,
    closing: watch::Receiver<bool>,
) {
    let tls_stream =
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                gateway.metrics().tls_handshake_failures.inc();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                gateway.metrics().tls_handshake_failures.inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
    let info = ConnInfo {
        peer,
        tls: true,
        client_cert: crate::tls::client_cert(tls_stream.get_ref().1),
    };
    if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve(tls_stream, info, &http.auto, gateway, closing).await;
    } else {
        serve_http1(tls_stream, info, &http.http1, gateway, closing).await;
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io` until the connection ends; when shutdown
/// begins, idle connections close and busy ones finish their current requests.
async fn serve<IO>(
    io: IO,
    info: ConnInfo,
    http: &auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    closing: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let conn = http.serve_connection_with_upgrades(TokioIo::new(io), service(gateway, info));
    finish(conn, |c| c.graceful_shutdown(), closing, peer).await;
}

/// Serves HTTP/1.1 (with upgrades) on a TLS connection until it ends. rustls keeps its own
/// buffers for the connection's life, so hyper's are kept too (unlike [`crate::http1::serve`]).
async fn serve_http1<IO>(
    io: IO,
    info: ConnInfo,
    http: &http1::Builder,
    gateway: Arc<Gateway>,
    closing: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let conn = http
        .serve_connection(TokioIo::new(io), service(gateway, info))
        .with_upgrades();
    finish(conn, |c| c.graceful_shutdown(), closing, peer).await;
}

/// The pipeline as a hyper service for one connection.
fn service(
    gateway: Arc<Gateway>,
    info: ConnInfo,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::error::ResponseBody>,
    Error = std::convert::Infallible,
    Future = impl Future<
        Output = Result<hyper::Response<crate::error::ResponseBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    let info = Arc::new(info);
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        pipeline::handle(
            gateway.clone(),
            info.clone(),
            req.map(crate::body::ClientBody::new),
        )
    })
}

/// Drives `conn` to its end; once shutdown begins, asks it to finish with `graceful` (idle, it
/// closes; busy, it closes after the current response).
async fn finish<C, E>(
    conn: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    mut closing: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = crate::http1::shutdown_begun(&mut closing) => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn accept_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((stream, _)) = accept(&listener, &mut stop).await {
        let gw = gateway.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| crate::admin::handle(gw.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
