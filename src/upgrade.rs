//! HTTP/1.1 upgrades (WebSocket and any other `Upgrade` protocol) through the gateway. The
//! handshake is an ordinary request: it passes every phase of the pipeline, and only when the
//! upstream answers `101 Switching Protocols` are the client's and the upstream's connections
//! spliced, byte for byte, until either side closes. The gateway does not read the protocol
//! spoken afterwards.
//!
//! Spliced connections outlive the HTTP connection they started on, so [`Upgrades`] counts them
//! (the `tollgate_upgraded_connections_active` gauge) and closes them at shutdown once the
//! grace period is over.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, Method, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::drain::Tracker;

/// How long [`Upgrades::drain`] waits for spliced connections to let go once told to close;
/// closing is immediate, so this only bounds a task that is slow to be scheduled.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Takes the client's pending upgrade from a request that asks for one: HTTP/1.1, an `Upgrade`
/// header with `upgrade` among the `Connection` options (RFC 9110 7.8), not `CONNECT`. `None`
/// for every other request, which is then forwarded without its `Upgrade` header. HTTP/2
/// clients cannot upgrade (RFC 8441's extended CONNECT is not supported).
pub fn take_requested(parts: &mut Parts) -> Option<OnUpgrade> {
    if !asks_for_upgrade(parts) {
        return None;
    }
    parts.extensions.remove::<OnUpgrade>()
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
    /// ends when either side closes or shutdown closes it. Counted from this call on.
    pub fn splice(&self, client: OnUpgrade, upstream: OnUpgrade) {
        let counted = self.spliced.admit();
        let mut closing = self.spliced.closing();
        tokio::spawn(async move {
            let _counted = counted;
            let tunnel = async {
                let (client, upstream) = tokio::try_join!(client, upstream)
                    .map_err(|e| std::io::Error::other(format!("upgrade failed: {e}")))?;
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            };
            tokio::select! {
                r = tunnel => match r {
                    Ok((up, down)) => tracing::debug!(bytes_to_upstream = up, bytes_to_client = down, "upgraded connection closed"),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
                },
                _ = closing.wait_for(|c| *c) => {
                    tracing::debug!("upgraded connection closed at shutdown");
                }
            }
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
