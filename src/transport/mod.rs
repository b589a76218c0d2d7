//! Transport: accepted TCP connections turned into requests for a [`crate::service::Handler`],
//! and its answers
//! written back. It owns the PROXY header, TLS, the choice between HTTP/1.1 and HTTP/2 and the
//! bounds of a connection's life; it knows nothing of what the handler does with a request.
//!
//! Exactly two hyper configurations serve every connection ([`Settings`]): one HTTP/1.1 and
//! one HTTP/2. A plain connection whose first 24 bytes are the HTTP/2 preface (RFC 9113 3.4)
//! speaks HTTP/2 (prior knowledge); any other speaks HTTP/1.1, through [`http1`], which
//! releases hyper's buffers while the connection is idle. A TLS connection speaks HTTP/2 when
//! ALPN chose `h2`, else HTTP/1.1 (RFC 9113 3.2: HTTP/2 over TLS needs ALPN).

mod conn;
mod http1;

use tokio::sync::watch;

pub(crate) use conn::{ConnLimits, Endpoint, Settings, serve};
pub use http1::IDLE_RELEASE_AFTER;
pub(crate) use http1::give_back_memory;

/// Counters the transport keeps for every connection, whatever its listener.
#[derive(Clone)]
pub(crate) struct Counters {
    /// `tollgate_connections_idle`: plain HTTP/1 connections waiting without hyper's buffers.
    pub(crate) idle: prometheus::IntGauge,
    /// `tollgate_tls_handshake_failures_total`.
    pub(crate) tls_handshake_failures: prometheus::IntCounter,
}

/// Resolves once shutdown has begun (or the signal's sender is gone).
pub(crate) async fn shutdown_begun(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}
