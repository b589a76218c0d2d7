//! Listeners and lifecycle: binding the public and admin listeners, accepting connections
//! (each then served by [`crate::transport`], driving the [`Pipeline`]), applying `listeners:` changes on reload without a restart, counting connections,
//! and shutting down gracefully: readiness off, stop accepting, let in-flight requests finish
//! within the grace period.
//!
//! What bounds the connections clients can hold, so that idle clients cannot use up the
//! process's file descriptors and stop all service:
//! - `limits.max_connections` per listener: a connection beyond it is accepted and closed at
//!   once (counted in `tollgate_connections_refused_total`). Closing rather than leaving it in
//!   the kernel's backlog keeps the process serving the connections it has and tells the
//!   client (or its load balancer) at once to go elsewhere, instead of letting it wait on a
//!   connection nobody reads. The default is half the descriptor limit (the soft limit is
//!   raised to the hard one at start), shared among the listeners: the other half is for
//!   upstream connections, one per request in flight.
//! - `limits.h2_idle_timeout`: an HTTP/2 connection with no request in flight for that long
//!   gets a GOAWAY (PINGs do not count: hyper's keep-alive only finds dead peers). Requests
//!   are counted per connection in the service (`Streams`); a timer reads the count only
//!   when it fires, so a request costs two atomic updates and no timer work.
//! - `limits.max_connection_age`: after it (less up to a tenth, so clients that connected
//!   together do not all reconnect together), HTTP/1 closes after the current response and
//!   HTTP/2 gets a GOAWAY and finishes its streams.
//! - A connection sent a GOAWAY for either reason that then stays without a request in flight
//!   for `GOAWAY_CLOSE_GRACE` is dropped (a peer that never answers the GOAWAY's PING).
//! - `accept` failing (out of descriptors: EMFILE, ENFILE) pauses the loop and retries; it is
//!   logged once when the failures begin and once when accepting works again.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ConfigError;
use crate::drain::{Slots, Tracker};
use crate::gateway::{BindFailure, Gateway, ListenerCommit, ListenerControl};
use crate::pipeline::Pipeline;
use crate::snapshot::{Bounds, ListenerSpec, Snapshot};
use crate::transport::{ConnLimits, Counters, Endpoint, Settings};

/// At shutdown, spans still queued are sent for at most this long (a dead collector must not
/// hold up the exit).
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin; short,
/// so that connections waiting in the backlog are served soon after descriptors free up.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// How long after its last failure a spell of accept failures or refused connections ends
/// ([`Spell`]): long enough that flapping at a limit is logged once, short enough that the
/// "again" line follows the recovery closely.
const SPELL_QUIET: Duration = Duration::from_secs(1);
/// Descriptors left out of the default `limits.max_connections` for everything else the
/// process holds: listeners, the admin listener and its clients, epoll, the file watcher, log,
/// state and key files, Redis, JWKS and authorizer fetches.
const FD_RESERVE: u64 = 64;
/// Default `limits.max_connections` of each listener when the descriptor limit cannot be read
/// (other platforms) or is unlimited: the number of idle connections the load benchmark holds.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;

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
    raise_descriptor_limit();
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
    crate::config_watch::spawn(gateway.clone(), stop_admin_rx.clone());
    tokio::spawn(crate::transport::give_back_memory(stop_admin_rx.clone()));
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
        // The spans of the last requests go to the collector while it answers in time.
        if let Some(tracing) = &self.gateway.snapshot().tracing {
            tracing.flush(TRACE_FLUSH_TIMEOUT).await;
        }
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
    endpoint: Endpoint,
    /// `limits.max_connections` for this listener (the default worked out).
    max_connections: usize,
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

/// What an accept loop counts and refuses with, kept across reloads with its socket.
struct Gate {
    /// Its open connections against `limits.max_connections`.
    slots: Arc<Slots>,
    /// `tollgate_connections_refused_total{listener=<this>,reason="max_connections"}`.
    refused: prometheus::IntCounter,
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

/// The transport's connection settings from the snapshot's limits.
fn conn_settings(limits: &Bounds) -> Settings {
    Settings::new(&ConnLimits {
        header_timeout: limits.header_timeout,
        max_header_bytes: limits.max_header_bytes,
        max_headers: limits.max_headers,
        h2_idle_timeout: limits.h2_idle_timeout,
        max_connection_age: limits.max_connection_age,
    })
}

/// On Linux with glibc, raises the soft descriptor limit (`ulimit -n`) to the hard one, as Go
/// programs do at start: the soft limit (often 1024) exists for programs that use `select`,
/// and a proxy needs a descriptor per client and per upstream connection. Elsewhere it leaves
/// the limit as it is.
fn raise_descriptor_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
                return;
            }
            let was = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = was, to = lim.rlim_max, "raised the descriptor limit");
            }
        }
    }
}

/// The process's soft descriptor limit, `None` when it cannot be read or is unlimited.
fn descriptor_limit() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The default `limits.max_connections` of each of `listeners` listeners when the descriptor
/// limit is `nofile`: half of what [`FD_RESERVE`] leaves (the other half is for the upstream
/// connection each client may be waiting on, as HAProxy derives its `maxconn`), shared
/// equally, at least 1.
fn default_max_connections(nofile: Option<u64>, listeners: usize) -> usize {
    let listeners = listeners.max(1);
    match nofile {
        Some(n) => {
            let each = n.saturating_sub(FD_RESERVE) / 2 / listeners as u64;
            usize::try_from(each).unwrap_or(usize::MAX).max(1)
        }
        None => FALLBACK_MAX_CONNECTIONS,
    }
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
        let max_connections = serving.max_connections;
        let serving = Arc::new(ArcSwap::from_pointee(serving));
        let (stop, stop_rx) = watch::channel(false);
        let me = self
            .me
            .upgrade()
            .expect("listeners outlive their accept loops");
        let gate = Gate {
            slots: Arc::new(Slots::default()),
            refused: self
                .gateway
                .metrics()
                .connections_refused
                .with_label_values(&[&local.to_string(), "max_connections"]),
        };
        let task = tokio::spawn(accept_public(listener, serving.clone(), gate, me, stop_rx));
        tracing::info!(addr = %local, max_connections, "listening");
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
        let settings = Arc::new(conn_settings(&snap.limits));
        let metrics = self.gateway.metrics();
        let counters = Counters {
            idle: metrics.connections_idle.clone(),
            tls_handshake_failures: metrics.tls_handshake_failures.clone(),
        };
        let max_connections = snap
            .limits
            .max_connections
            .unwrap_or_else(|| default_max_connections(descriptor_limit(), snap.listeners.len()));
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
                endpoint: Endpoint {
                    proxy_protocol: spec.proxy_protocol,
                    tls: spec.tls.clone(),
                    settings: settings.clone(),
                    counters: counters.clone(),
                },
                max_connections,
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

/// Failures of one kind close together ("a spell"), logged when they begin and when they end
/// rather than each time. A spell ends with the first success [`SPELL_QUIET`] after its last
/// failure, so a limit that is touched again and again (a few descriptors freeing and filling
/// up) is one spell, not one warning per freed descriptor.
#[derive(Debug, Default)]
struct Spell {
    /// When the current spell began, its last failure, and its failures so far.
    current: Option<(Instant, Instant, u64)>,
}

impl Spell {
    /// One more failure at `now`; `true` when it begins a spell.
    fn fail(&mut self, now: Instant) -> bool {
        match &mut self.current {
            Some((_, last, n)) => {
                *last = now;
                *n += 1;
                false
            }
            None => {
                self.current = Some((now, now, 1));
                true
            }
        }
    }

    /// A success at `now`: how long the spell it ends lasted (to its last failure) and how many
    /// failures it had, if it ends one.
    fn end(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let (began, last, n) = self.current?;
        (now >= last + SPELL_QUIET).then(|| {
            self.current = None;
            (last - began, n)
        })
    }
}

/// Whether an accept error concerns only the connection being accepted (reset or aborted by
/// its client while in the backlog): the next accept may follow at once.
fn only_that_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    )
}

/// The next connection, or `None` once `stop` fires. Other accept errors (out of file
/// descriptors, EMFILE or ENFILE; out of memory) pause the loop for [`ACCEPT_ERROR_BACKOFF`]
/// before it tries again, for as long as they last: the connections already open keep being
/// served, and those waiting in the backlog are taken once descriptors free up. `failing`
/// holds the spell across calls: it is logged once when it begins (`warn`) and once when
/// accepting works again (`info`).
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    failing: &mut Spell,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(x) => {
                if let Some((lasted, failures)) = failing.end(Instant::now()) {
                    tracing::info!(addr = %local(listener), ?lasted, failures, "accepting connections again");
                }
                return Some(x);
            }
            Err(e) if only_that_connection(&e) => {
                tracing::debug!(error = %e, "a connection ended before it was accepted");
            }
            Err(e) => {
                if failing.fail(Instant::now()) {
                    tracing::warn!(
                        addr = %local(listener),
                        error = %e,
                        retry = ?ACCEPT_ERROR_BACKOFF,
                        "accept failed; retrying until it works (out of file descriptors? see limits.max_connections)"
                    );
                }
                tokio::select! {
                    _ = stop.changed() => return None,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

/// A listener's bound address for logs.
fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string())
}

/// Accepts connections and serves each in its own task, with the listener's settings at the
/// moment of accepting. A connection beyond the listener's `limits.max_connections` is closed
/// as soon as it is accepted and counted in `tollgate_connections_refused_total`; the limit
/// being reached is logged once, and once more when connections are admitted again.
async fn accept_public(
    listener: TcpListener,
    serving: Arc<ArcSwap<Serving>>,
    gate: Gate,
    listeners: Arc<Listeners>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = Spell::default();
    let mut refusing = Spell::default();
    while let Some((stream, tcp_peer)) = accept(&listener, &mut stop, &mut failing).await {
        if listeners.closed.load(Ordering::SeqCst) {
            return; // shutting down
        }
        let serving = serving.load_full();
        let Some(slot) = gate.slots.take(serving.max_connections) else {
            gate.refused.inc();
            if refusing.fail(Instant::now()) {
                tracing::warn!(
                    addr = %local(&listener),
                    max_connections = serving.max_connections,
                    "connection limit reached; closing new connections until some end (limits.max_connections)"
                );
            }
            drop(stream);
            continue;
        };
        if let Some((lasted, refused)) = refusing.end(Instant::now()) {
            tracing::info!(addr = %local(&listener), ?lasted, refused, "below the connection limit again");
        }
        let _ = stream.set_nodelay(true);
        let admitted = listeners.conns.admit();
        let handler = Pipeline::new(listeners.gateway.clone());
        let closing = listeners.conns.closing();
        tokio::spawn(async move {
            let _counted = (admitted, slot);
            crate::transport::serve(stream, tcp_peer, &serving.endpoint, handler, closing).await;
        });
    }
}

async fn accept_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = Spell::default();
    while let Some((stream, _)) = accept(&listener, &mut stop, &mut failing).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_is_half_the_descriptors_left_shared_by_listeners() {
        assert_eq!(default_max_connections(Some(256), 1), 96);
        assert_eq!(default_max_connections(Some(1024), 2), 240);
        assert_eq!(default_max_connections(Some(20_000), 1), 9_968);
        // Never 0, whatever the limit.
        assert_eq!(default_max_connections(Some(10), 1), 1);
        assert_eq!(default_max_connections(Some(100), 0), 18);
        assert_eq!(default_max_connections(None, 3), FALLBACK_MAX_CONNECTIONS);
    }

    #[test]
    fn a_spell_is_reported_once_at_its_start_and_once_at_its_end() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut s = Spell::default();
        assert!(s.end(t).is_none(), "no spell, nothing ended");
        assert!(s.fail(t), "the first failure begins a spell");
        assert!(!s.fail(ms(10)));
        // A success soon after a failure does not end the spell: the next failure continues it.
        assert!(s.end(ms(60)).is_none());
        assert!(!s.fail(ms(110)));
        let (lasted, failures) = s
            .end(ms(110) + SPELL_QUIET)
            .expect("a quiet success ends it");
        assert_eq!((lasted, failures), (Duration::from_millis(110), 3));
        assert!(s.end(ms(5000)).is_none());
        assert!(s.fail(ms(6000)), "a later failure begins a new spell");
    }
}
