//! Listeners and lifecycle: binding the public and admin listeners, accepting connections
//! (HTTP/1.1 and h2c through hyper-util's auto builder, with header timeouts and size limits),
//! counting them, and shutting down gracefully: readiness off, stop accepting, let in-flight
//! requests finish within the grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::ConfigError;
use crate::gateway::Gateway;
use crate::pipeline::{self, ConnInfo};

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// HTTP/2 concurrent streams per connection; bounds per-connection work.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

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
    /// Bound public addresses, in config order (real ports when the config said 0).
    pub public_addrs: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    tasks: JoinSet<()>,
    admin_task: tokio::task::JoinHandle<()>,
    maintenance: tokio::task::JoinHandle<()>,
    graceful: Arc<GracefulShutdown>,
}

/// Loads the config, binds every listener and starts serving. Refuses a config with errors
/// and an address that cannot be bound.
pub async fn start(config: &Path) -> Result<Running, StartError> {
    let gateway = Arc::new(Gateway::load(config, true).map_err(StartError::Config)?);
    let snap = gateway.snapshot();
    let (stop, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = JoinSet::new();

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(snap.limits.header_timeout)
        .max_buf_size(snap.limits.max_header_bytes)
        .max_headers(snap.limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(snap.limits.max_header_bytes as u32)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    let builder = Arc::new(builder);

    let mut public_addrs = Vec::new();
    for spec in &snap.listeners {
        let addr = spec.addr;
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind(addr, e))?;
        public_addrs.push(l.local_addr().map_err(|e| StartError::Bind(addr, e))?);
        tasks.spawn(accept_public(
            l,
            spec.proxy_protocol,
            gateway.clone(),
            builder.clone(),
            graceful.clone(),
            stop_rx.clone(),
        ));
    }
    let admin = TcpListener::bind(snap.admin.bind)
        .await
        .map_err(|e| StartError::Bind(snap.admin.bind, e))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| StartError::Bind(snap.admin.bind, e))?;
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
        stop,
        stop_admin,
        tasks,
        admin_task,
        maintenance,
        graceful,
    })
}

impl Running {
    /// Graceful shutdown: readiness off, `limits.shutdown_delay` of still accepting (so load
    /// balancers notice), listeners closed, in-flight requests given `grace`
    /// (default: the config's `limits.shutdown_grace`) to finish. Returns whether all finished.
    pub async fn shutdown(mut self, grace: Option<Duration>) -> bool {
        self.gateway.set_ready(false);
        let limits = self.gateway.snapshot().limits.clone();
        let grace = grace.unwrap_or(limits.shutdown_grace);
        if !limits.shutdown_delay.is_zero() {
            tracing::info!(delay = ?limits.shutdown_delay, "not ready; still accepting while load balancers notice");
            tokio::time::sleep(limits.shutdown_delay).await;
        }
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Every accept loop has ended, so this is the last owner.
        let graceful = self.graceful;
        let requests = async move {
            match Arc::try_unwrap(graceful) {
                Ok(g) => tokio::time::timeout(grace, g.shutdown()).await.is_ok(),
                Err(_) => false,
            }
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
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
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

/// Accepts connections and serves each in its own task. With `proxy_protocol`, each connection
/// must open with a valid PROXY v1/v2 header (read in the connection's task, with its own
/// timeout, so a slow sender never holds up accepting); its source address becomes the peer,
/// and a connection without one is closed.
async fn accept_public(
    listener: TcpListener,
    proxy_protocol: bool,
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((mut stream, tcp_peer)) = accept(&listener, &mut stop).await {
        let _ = stream.set_nodelay(true);
        let gauge = gateway.metrics().connections_active.clone();
        gauge.inc();
        let guard = ConnGuard(gauge);
        let gw = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _guard = guard;
            let peer = if proxy_protocol {
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
            let info = Arc::new(ConnInfo { peer, tls: false });
            let svc = service_fn(move |req| pipeline::handle(gw.clone(), info.clone(), req));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
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
