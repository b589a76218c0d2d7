//! HTTP/1.1 upgrades (WebSocket, and other protocols a route allows) through the gateway. The
//! handshake is an ordinary request: it passes every phase of the pipeline, and only when the
//! upstream answers `101 Switching Protocols` naming the protocol the client asked for are the
//! client's and the upstream's connections spliced, byte for byte, until either side closes or
//! neither sends a byte for `limits.upgrade_idle_timeout`. The gateway does not read the protocol
//! spoken afterwards, which is why a route passes only the protocols it lists (`upgrades`,
//! default `[websocket]`) and `h2c` can never be listed: requests on an HTTP/2 connection
//! spliced to the upstream would reach it unchecked.
//!
//! Spliced connections outlive the HTTP connection they started on, so [`Upgrades`] counts them
//! (the `tollgate_upgraded_connections_active` gauge), logs each one's end (a `tollgate::access`
//! line with its duration and bytes) and closes them at shutdown once the grace period is over.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::drain::Tracker;

/// How long [`Upgrades::drain`] waits for spliced connections to let go once told to close;
/// closing is immediate, so this only bounds a task that is slow to be scheduled.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Default `limits.upgrade_idle_timeout`: the managed gateway closes idle WebSocket
/// connections after 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// A client's pending upgrade that the route allows.
pub struct Requested {
    on: OnUpgrade,
    /// The `Upgrade` header the client sent, which the upstream's `101` must answer.
    protocols: HeaderValue,
}

impl std::fmt::Debug for Requested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requested")
            .field("protocols", &self.protocols)
            .finish()
    }
}

impl Requested {
    /// Whether the upstream's `101` switches to a protocol the client asked for: its `Upgrade`
    /// header names exactly one protocol, and that one is in the client's list (names compared
    /// case-insensitively, versions exactly).
    pub fn granted_by(&self, response: &HeaderMap) -> bool {
        let mut values = response.get_all(header::UPGRADE).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        let Ok(granted) = v.to_str() else {
            return false;
        };
        let granted = granted.trim();
        !granted.is_empty()
            && !granted.contains(',')
            && protocols(&self.protocols).any(|p| same_protocol(p, granted))
    }
}

/// Takes the client's pending upgrade from a request that asks for one of `allowed` (the
/// route's `upgrades`): HTTP/1.1, an `Upgrade` header with `upgrade` among the `Connection`
/// options (RFC 9110 7.8), not `CONNECT`, and every protocol it lists allowed. `None` for every
/// other request, which is then forwarded as an ordinary one without its `Upgrade` header (a
/// server may ignore an upgrade request, RFC 9110 7.8), so the upstream never switches. HTTP/2
/// clients cannot upgrade (RFC 8441's extended CONNECT is not supported).
pub fn take_requested(parts: &mut Parts, allowed: &[Box<str>]) -> Option<Requested> {
    if !asks_for_upgrade(parts) {
        return None;
    }
    let mut values = parts.headers.get_all(header::UPGRADE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let all_allowed = protocols(v).all(|p| {
        let name = p.split('/').next().unwrap_or("");
        allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    });
    if !all_allowed || protocols(v).next().is_none() {
        return None;
    }
    let protocols = v.clone();
    let on = parts.extensions.remove::<OnUpgrade>()?;
    Some(Requested { on, protocols })
}

/// The protocols of an `Upgrade` value, trimmed, empty ones skipped; none when it is not text.
fn protocols(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// `name[/version]` equality: the name case-insensitively, the version exactly.
fn same_protocol(asked: &str, granted: &str) -> bool {
    let (an, av) = asked
        .split_once('/')
        .map_or((asked, None), |(n, v)| (n, Some(v)));
    let (gn, gv) = granted
        .split_once('/')
        .map_or((granted, None), |(n, v)| (n, Some(v)));
    an.eq_ignore_ascii_case(gn) && (av.is_none() || av == gv)
}

/// Whether a request asks to switch protocols in a way the gateway passes on.
fn asks_for_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.method != Method::CONNECT
        && parts.headers.contains_key(header::UPGRADE)
        && connection_has_upgrade(&parts.headers)
}

/// Whether the `Connection` header lists the `upgrade` option.
fn connection_has_upgrade(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case("upgrade"))
}

/// What the end-of-splice log line names.
#[derive(Debug, Clone)]
pub struct SpliceInfo {
    /// The handshake's `x-request-id`.
    pub request_id: HeaderValue,
    /// The route key.
    pub route: Arc<str>,
    /// Longest time without a byte either way.
    pub idle_timeout: Duration,
}

/// One side of a splice, counting the bytes read from it and noting when anything moved.
struct Metered<T> {
    io: T,
    read: u64,
    /// Milliseconds since the splice began at the last read or write, shared by both sides.
    last: Arc<AtomicU64>,
    began: Instant,
}

impl<T> Metered<T> {
    fn touch(&self) {
        self.last
            .store(self.began.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The upgraded (spliced) connections of a gateway: how many are open, and the signal that
/// closes them at shutdown.
#[derive(Debug)]
pub struct Upgrades {
    /// Connections spliced (or waiting for both sides' upgrade to complete); closed once the
    /// shutdown grace period is over.
    spliced: Arc<Tracker>,
}

impl Upgrades {
    /// No connections yet; `gauge` is `tollgate_upgraded_connections_active`.
    pub fn new(gauge: prometheus::IntGauge) -> Upgrades {
        Upgrades {
            spliced: Arc::new(Tracker::new(gauge)),
        }
    }

    /// Splices the client's connection to the upstream's once both upgrades complete (the
    /// client's completes when the `101` has been written to it), in a task of its own that
    /// ends when either side closes, when neither sends a byte for `info.idle_timeout`, or
    /// when shutdown closes it. Counted from this call on; its end is logged with its duration
    /// and the bytes each way.
    pub fn splice(&self, client: Requested, upstream: OnUpgrade, info: SpliceInfo) {
        let counted = self.spliced.admit();
        let mut closing = self.spliced.closing();
        tokio::spawn(async move {
            let _counted = counted;
            let began = Instant::now();
            let last = Arc::new(AtomicU64::new(0));
            let (client, upstream) = match tokio::try_join!(client.on, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let meter = |io| Metered {
                io: TokioIo::new(io),
                read: 0,
                last: last.clone(),
                began,
            };
            let mut client = meter(client);
            let mut upstream = meter(upstream);
            let idle = info.idle_timeout;
            let idle_watch = async {
                loop {
                    let quiet = began
                        .elapsed()
                        .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                    if quiet >= idle {
                        return;
                    }
                    tokio::time::sleep(idle - quiet).await;
                }
            };
            let ended = tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
                    Ok(_) => "closed",
                    Err(_) => "error",
                },
                () = idle_watch => "idle_timeout",
                _ = closing.wait_for(|c| *c) => "shutdown",
            };
            tracing::info!(
                target: "tollgate::access",
                event = "upgrade_closed",
                request_id = info.request_id.to_str().unwrap_or("-"),
                route = &*info.route,
                ended,
                duration_ms = began.elapsed().as_secs_f64() * 1000.0,
                bytes_to_upstream = client.read,
                bytes_to_client = upstream.read,
            );
        });
    }

    /// Shutdown: waits up to `grace` for every spliced connection to end by itself, then closes
    /// those still open. Returns whether all ended within `grace`. Connections spliced after
    /// this returns are closed at once.
    pub async fn drain(&self, grace: Duration) -> bool {
        let clean = self.spliced.wait_empty(grace).await;
        self.spliced.close();
        if !clean {
            tracing::warn!(
                open = self.spliced.open(),
                ?grace,
                "grace period over; closing upgraded connections"
            );
            self.spliced.wait_empty(CLOSE_WAIT).await;
        }
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_http11_requests_with_upgrade_and_the_connection_option_upgrade() {
        let ws = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        let allowed: [Box<str>; 1] = [Box::from("websocket")];
        let mut p = parts(Version::HTTP_11, Method::GET, &ws);
        p.extensions
            .insert(hyper::upgrade::on(http::Request::new(())));
        let requested = take_requested(&mut p, &allowed).expect("websocket is allowed");
        let mut granted = HeaderMap::new();
        granted.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(requested.granted_by(&granted));
        granted.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!requested.granted_by(&granted));
        granted.remove(header::UPGRADE);
        assert!(!requested.granted_by(&granted));
        for refused in ["h2c", "websocket, h2c", "anything", ""] {
            let mut p = parts(
                Version::HTTP_11,
                Method::GET,
                &[("upgrade", refused), ("connection", "upgrade")],
            );
            p.extensions
                .insert(hyper::upgrade::on(http::Request::new(())));
            assert!(take_requested(&mut p, &allowed).is_none(), "{refused:?}");
            assert!(take_requested(&mut p, &[]).is_none());
        }
        assert!(asks_for_upgrade(&parts(Version::HTTP_11, Method::GET, &ws)));
        assert!(!asks_for_upgrade(&parts(
            Version::HTTP_10,
            Method::GET,
            &ws
        )));
        assert!(!asks_for_upgrade(&parts(Version::HTTP_2, Method::GET, &ws)));
        assert!(!asks_for_upgrade(&parts(
            Version::HTTP_11,
            Method::CONNECT,
            &ws
        )));
        let no_option = [("upgrade", "websocket"), ("connection", "keep-alive")];
        assert!(!asks_for_upgrade(&parts(
            Version::HTTP_11,
            Method::GET,
            &no_option
        )));
        let no_upgrade = [("connection", "upgrade")];
        assert!(!asks_for_upgrade(&parts(
            Version::HTTP_11,
            Method::GET,
            &no_upgrade
        )));
    }

    #[tokio::test]
    async fn drain_without_connections_is_clean_and_immediate() {
        let u = Upgrades::new(prometheus::IntGauge::new("g", "g").unwrap());
        assert!(u.drain(Duration::from_secs(3600)).await);
        assert!(*u.spliced.closing().borrow());
    }
}
