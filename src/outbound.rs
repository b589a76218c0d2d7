//! The one constructor of outbound HTTP(S) clients: upstream pools ([`crate::proxy`]), JWKS and
//! discovery fetches ([`crate::fetch`]) and the external authorizer. Every client gets the same
//! rules: rustls on aws-lc-rs (named explicitly: with another provider compiled in through a
//! dependency rustls has no process default), the system's root certificates (loaded once per
//! process; the Mozilla roots built into tollgate when the system has none) or a configured CA
//! bundle, a TCP connect timeout, TCP keep-alive, no Nagle delay, and the HTTP versions its
//! caller speaks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::{ClientConfig, RootCertStore};

/// TCP keep-alive probes on outbound connections, so dead peers are noticed on idle ones.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The connector of every outbound client: TCP, and TLS for `https://` URLs.
pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// The certificates `https://` peers must chain to.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's root certificates (loaded once per process; the Mozilla roots built into
    /// tollgate when the system has none).
    System,
    /// Only these: a configured CA bundle.
    Roots(Arc<RootCertStore>),
}

/// The HTTP versions a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: ALPN `h2` over TLS (a peer that cannot speak it fails the handshake).
    Http2,
    /// HTTP/2 with prior knowledge over plain TCP (h2c).
    H2c,
    /// HTTP/1.1 or HTTP/2, as ALPN decides.
    Any,
}

/// What a client is for.
#[derive(Debug, Clone)]
pub(crate) struct ClientSpec {
    /// Which certificates `https://` peers must present.
    pub(crate) trust: Trust,
    /// Time to establish a TCP connection.
    pub(crate) connect_timeout: Duration,
    /// The HTTP versions spoken.
    pub(crate) versions: Versions,
    /// Whether any `https://` URL will be asked for (if not, the system store is not read).
    pub(crate) tls: bool,
    /// Idle pooled connections are closed after this.
    pub(crate) pool_idle_timeout: Duration,
    /// Most idle connections kept per host.
    pub(crate) pool_max_idle_per_host: usize,
}

/// A pooled client for `spec`, sending bodies of type `B`.
pub(crate) fn client<B>(spec: &ClientSpec) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(spec.pool_idle_timeout)
        .pool_max_idle_per_host(spec.pool_max_idle_per_host)
        .http2_only(matches!(spec.versions, Versions::Http2 | Versions::H2c))
        .build(connector(spec))
}

/// TCP with the spec's timeouts, and TLS verified against its trust (the URL's host as SNI and
/// verified name) for `https://` URLs.
fn connector(spec: &ClientSpec) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(spec.connect_timeout));
    http.set_keepalive(Some(TCP_KEEPALIVE));
    let tls = match (&spec.trust, spec.tls) {
        // No TLS is ever made: skip reading the system's store.
        (_, false) => tls_builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
        (Trust::System, true) => system_tls(),
        (Trust::Roots(roots), true) => tls_builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    };
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    match spec.versions {
        Versions::Http2 => builder.enable_http2().wrap_connector(http),
        Versions::Http1 | Versions::H2c => builder.enable_http1().wrap_connector(http),
        Versions::Any => builder.enable_http1().enable_http2().wrap_connector(http),
    }
}

/// A TLS client config builder on aws-lc-rs.
fn tls_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
}

/// A TLS client config trusting the system's root certificates, loaded once per process (a
/// changed system store is seen after a restart). When the system has none, the Mozilla roots
/// built into tollgate are trusted instead, with a warning.
fn system_tls() -> ClientConfig {
    static SYSTEM: OnceLock<ClientConfig> = OnceLock::new();
    SYSTEM
        .get_or_init(|| match tls_builder().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            Err(e) => {
                tracing::warn!(error = %e,
                    "no system root certificates; https peers are verified against the Mozilla roots built into tollgate");
                tls_builder().with_webpki_roots().with_no_client_auth()
            }
        })
        .clone()
}
