//! Listeners and lifecycle: binding the public and admin listeners, accepting connections
//! (plain or TLS, HTTP/1.1 and HTTP/2 through hyper-util's auto builder, with header timeouts
//! and size limits), applying `listeners:` changes on reload without a restart, counting
//! connections, and shutting down gracefully: readiness off, stop accepting, let in-flight
//! requests finish within the grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
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
        let graceful = self.listeners.close().await;
        let requests = async move {
            tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_ok()
        };
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
    http: Arc<auto::Builder<TokioExecutor>>,
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
    /// Watches every connection; taken at shutdown.
    graceful: Mutex<Option<GracefulShutdown>>,
    /// Set at shutdown: later reloads change no listener.
    closed: std::sync::atomic::AtomicBool,
}

/// hyper's connection settings from the snapshot's limits.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
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
            gateway,
            live: Mutex::new(Vec::new()),
            graceful: Mutex::new(Some(GracefulShutdown::new())),
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

    fn watcher(&self) -> Option<Watcher> {
        self.graceful
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(GracefulShutdown::watcher)
    }

    /// Stops every accept loop and hands back the watch over open connections.
    async fn close(&self) -> GracefulShutdown {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let live = std::mem::take(&mut *self.live.lock().expect("not poisoned"));
        for l in &live {
            let _ = l.stop.send(true);
        }
        for l in live {
            let _ = l.task.await;
        }
        self.graceful
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default()
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
        let http = Arc::new(http_builder(&snap.limits));
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

/// Decrements the active-connection gauge when a connection ends.
struct ConnGuard(prometheus::IntGauge);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.dec();
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
        let Some(watcher) = listeners.watcher() else {
            return; // shutting down
        };
        let gauge = listeners.gateway.metrics().connections_active.clone();
        gauge.inc();
        let guard = ConnGuard(gauge);
        tokio::spawn(connection(
            stream,
            tcp_peer,
            serving.load_full(),
            listeners.gateway.clone(),
            watcher,
            guard,
        ));
    }
}

/// One connection: the PROXY header when the listener expects one (its source address becomes
/// the peer; a connection without a valid one is closed), the TLS handshake on a TLS listener
/// (abandoned after [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP.
async fn connection(
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    serving: Arc<Serving>,
    gateway: Arc<Gateway>,
    watcher: Watcher,
    _guard: ConnGuard,
) {
    let peer = if serving.proxy_protocol {
        match crate::proxy_protocol::read_header(&mut stream).await {
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
    let Some(tls) = &serving.tls else {
        let info = ConnInfo {
            peer,
            tls: false,
            client_cert: None,
        };
        return serve(stream, info, &serving.http, gateway, watcher).await;
    };
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
    serve(tls_stream, info, &serving.http, gateway, watcher).await;
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io` until the connection ends.
async fn serve<IO>(
    io: IO,
    info: ConnInfo,
    http: &auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let info = Arc::new(info);
    let svc = service_fn(move |req| pipeline::handle(gateway.clone(), info.clone(), req));
    let conn = http
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
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
