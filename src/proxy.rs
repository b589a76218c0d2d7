//! Forwarding to upstreams: target choice (round robin, a target that refused a connection set
//! aside for a while), the pooled keep-alive client (HTTP/1.1, or HTTP/2 over TLS or in clear
//! text, to `http://` and `https://` targets), hop-by-hop header hygiene, and the mapping of
//! upstream failures to 502 / 504 (or to 413 / 408 when the client's body was at fault).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;

use crate::body::{BodyFailure, FailureCell, GuardedBody};
use crate::headers::strip_hop_by_hop;
pub use crate::outbound::Trust;
use crate::outbound::{ClientSpec, Connector, Versions};

/// Default time until the upstream's response head arrives (the managed gateway's 29 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(29);
/// Default time to establish a connection to an upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a target that refused a connection is skipped while others are available.
pub const TARGET_COOLDOWN: Duration = Duration::from_secs(10);
/// Idle upstream connections are closed after this; below common upstream keep-alive limits.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per upstream target.
pub const POOL_MAX_IDLE_PER_HOST: usize = 512;

/// The HTTP version spoken to an upstream's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, to `http://` and `https://` targets (no ALPN offered over TLS: HTTP/1.1 is what
    /// a server speaks without it).
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN `h2`; `https://` targets only.
    H2,
    /// HTTP/2 with prior knowledge, without TLS; `http://` targets only.
    H2c,
}

impl Protocol {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::H2c => "h2c",
        }
    }
}

/// How an upstream is spoken to.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Time until the upstream's response head arrives.
    pub timeout: Duration,
    /// Time to establish a TCP connection.
    pub connect_timeout: Duration,
    /// The HTTP version.
    pub protocol: Protocol,
    /// Which certificates `https://` targets must present.
    pub trust: Trust,
}

/// What goes to the upstream: the client's body streaming through its guard, or a body the
/// gateway already read whole.
pub type UpstreamBody = http_body_util::Either<GuardedBody, http_body_util::Full<bytes::Bytes>>;

/// One target of a pool.
struct Target {
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    /// Path prefix prepended to the request path ("" for none).
    prefix: String,
    /// Milliseconds (since the pool's epoch) until which the target is set aside.
    down_until: AtomicU64,
}

/// A named upstream pool.
pub struct Upstream {
    name: std::sync::Arc<str>,
    targets: Vec<Target>,
    next: AtomicUsize,
    epoch: Instant,
    timeout: Duration,
    protocol: Protocol,
    client: Client<Connector, UpstreamBody>,
    duration: prometheus::Histogram,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

/// Parses a target URL. Refuses anything but `http(s)://host[:port][/prefix]` without query.
pub fn parse_target(s: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("bad target URL {s:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("target {s:?} needs a scheme"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(format!(
            "target {s:?}: only http:// and https:// targets are supported"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("target {s:?} needs a host"))?;
    if uri.query().is_some() {
        return Err(format!("target {s:?} must not have a query"));
    }
    let prefix = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, prefix))
}

/// Refuses a target whose scheme the protocol cannot speak over.
fn check_scheme(protocol: Protocol, target: &str, scheme: &Scheme) -> Result<(), String> {
    match protocol {
        Protocol::H2 if *scheme != Scheme::HTTPS => Err(format!(
            "protocol h2 needs https:// targets, and {target:?} is not one (use protocol: h2c for HTTP/2 without TLS)"
        )),
        Protocol::H2c if *scheme != Scheme::HTTP => Err(format!(
            "protocol h2c is HTTP/2 without TLS and needs http:// targets, and {target:?} is not one (use protocol: h2 for HTTP/2 over TLS)"
        )),
        Protocol::Http1 | Protocol::H2 | Protocol::H2c => Ok(()),
    }
}

impl Upstream {
    /// Builds a pool and its connection pool. Refuses an empty or unparsable target list, and
    /// targets whose scheme the protocol cannot be spoken over.
    pub fn new(
        name: &str,
        targets: &[String],
        settings: &UpstreamSettings,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Upstream, String> {
        if targets.is_empty() {
            return Err("an upstream needs at least one target".into());
        }
        let mut ts = Vec::new();
        for t in targets {
            let (scheme, authority, prefix) = parse_target(t)?;
            check_scheme(settings.protocol, t, &scheme)?;
            let host_header =
                HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
            ts.push(Target {
                scheme,
                authority,
                host_header,
                prefix,
                down_until: AtomicU64::new(0),
            });
        }
        let any_https = ts.iter().any(|t| t.scheme == Scheme::HTTPS);
        let client = crate::outbound::client(&ClientSpec {
            trust: settings.trust.clone(),
            connect_timeout: settings.connect_timeout,
            versions: match settings.protocol {
                Protocol::Http1 => Versions::Http1,
                Protocol::H2 => Versions::Http2,
                Protocol::H2c => Versions::H2c,
            },
            tls: any_https,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
        });
        Ok(Upstream {
            duration: metrics.upstream_duration.with_label_values(&[name]),
            name: name.into(),
            targets: ts,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            timeout: settings.timeout,
            protocol: settings.protocol,
            client,
        })
    }

    /// The HTTP version spoken to the targets.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Round robin over targets that are not set aside; when all are, over all of them.
    fn pick(&self) -> usize {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.targets[i].down_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n)
    }

    /// Sends `req` (whose headers the pipeline has prepared) to a target and returns the
    /// response head with its body still streaming. Fails when no head arrives in time, when
    /// the target cannot be reached or breaks the exchange, and when the client's body was
    /// cut off (which the caller answers as the client's fault, not the upstream's).
    pub(crate) async fn forward(
        &self,
        mut req: Request<UpstreamBody>,
        body_failure: &FailureCell,
        mut span: Option<&mut crate::telemetry::ChildSpan>,
    ) -> Result<(Response<Incoming>, Duration), ForwardError> {
        let i = self.pick();
        let t = &self.targets[i];
        let pq = req.uri().path_and_query();
        let path = if t.prefix.is_empty() {
            // Shares the client's bytes: no copy and no second validation.
            Ok(pq
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")))
        } else {
            let pq = pq.map_or("/", PathAndQuery::as_str);
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(format!("{}{pq}", t.prefix)))
        }
        .map_err(|_| UpstreamError::TargetUri)?;
        *req.uri_mut() = Uri::builder()
            .scheme(t.scheme.clone())
            .authority(t.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| UpstreamError::TargetUri)?;
        req.headers_mut()
            .insert(header::HOST, t.host_header.clone());
        *req.version_mut() = match self.protocol {
            Protocol::Http1 => http::Version::HTTP_11,
            Protocol::H2 | Protocol::H2c => http::Version::HTTP_2,
        };

        if let Some(span) = span.as_deref_mut() {
            span.attr("http.request.method", req.method().as_str().to_owned());
            span.attr("server.address", t.authority.host().to_owned());
            let port = t.authority.port_u16().unwrap_or(match t.scheme.as_str() {
                "https" => 443,
                _ => 80,
            });
            span.attr("server.port", i64::from(port));
            // The query is left out: it may carry what the upstream treats as a secret.
            span.attr(
                "url.full",
                // Host and port only: userinfo in a target URL is a credential.
                format!(
                    "{}://{}:{port}{}",
                    t.scheme,
                    t.authority.host(),
                    req.uri().path()
                ),
            );
            span.attr("tollgate.upstream", self.name().to_owned());
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let took = started.elapsed();
        self.duration.observe(took.as_secs_f64());
        if let Some(span) = span {
            match &result {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    span.attr("http.response.status_code", i64::from(status.as_u16()));
                    if status.is_server_error() {
                        span.fail(status.as_str().to_owned());
                    }
                }
                Ok(Err(e)) => span.fail(if e.is_connect() {
                    "connect"
                } else {
                    "exchange"
                }),
                Err(_) => span.fail("timeout"),
            }
        }
        match result {
            Err(_) => Err(match body_failure.get() {
                Some(f) => ForwardError::Body(f),
                None => UpstreamError::Timeout.into(),
            }),
            Ok(Err(e)) => {
                if let Some(f) = body_failure.get() {
                    return Err(ForwardError::Body(f));
                }
                if e.is_connect() {
                    let until = self.now_ms() + TARGET_COOLDOWN.as_millis() as u64;
                    t.down_until.store(until, Ordering::Relaxed);
                    tracing::warn!(upstream = %self.name, upstream_target = %t.authority, error = %e,
                        "upstream target refused or failed to connect; set aside");
                    Err(UpstreamError::Connect.into())
                } else {
                    tracing::warn!(upstream = %self.name, upstream_target = %t.authority, error = %e,
                        "upstream exchange failed");
                    Err(UpstreamError::Exchange.into())
                }
            }
            Ok(Ok(mut resp)) => {
                let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(resp.headers_mut(), switching);
                Ok((resp, took))
            }
        }
    }
}

/// Why an upstream gave no usable answer (502, or 504 for [`UpstreamError::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No response head within the upstream's timeout.
    Timeout,
    /// The target refused or failed the connection (it is set aside for a while).
    Connect,
    /// The exchange broke after connecting.
    Exchange,
    /// The target's prefix and the request path do not make a URI.
    TargetUri,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    UnaskedSwitch,
    /// `101` for another protocol than the one asked for (and allowed).
    OtherProtocol,
}

impl UpstreamError {
    /// The `reason` label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Connect => "upstream_connect",
            UpstreamError::Exchange => "upstream_error",
            UpstreamError::TargetUri => "upstream_uri",
            UpstreamError::UnaskedSwitch => "upstream_unasked_101",
            UpstreamError::OtherProtocol => "upstream_other_protocol",
        }
    }
}

/// Why [`Upstream::forward`] failed: the upstream's fault, or the client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// The upstream gave no usable answer.
    Upstream(UpstreamError),
    /// The client's body was cut off (too large, stalled, broken) while it was sent on.
    Body(BodyFailure),
}

impl From<UpstreamError> for ForwardError {
    fn from(e: UpstreamError) -> ForwardError {
        ForwardError::Upstream(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_need_their_schemes() {
        assert!(check_scheme(Protocol::H2, "http://a", &Scheme::HTTP).is_err());
        assert!(check_scheme(Protocol::H2, "https://a", &Scheme::HTTPS).is_ok());
        assert!(check_scheme(Protocol::H2c, "https://a", &Scheme::HTTPS).is_err());
        assert!(check_scheme(Protocol::H2c, "http://a", &Scheme::HTTP).is_ok());
        assert!(check_scheme(Protocol::Http1, "https://a", &Scheme::HTTPS).is_ok());
        assert!(check_scheme(Protocol::Http1, "http://a", &Scheme::HTTP).is_ok());
    }

    #[test]
    fn targets() {
        let (s, a, p) = parse_target("http://127.0.0.1:9001/base/").unwrap();
        assert_eq!(
            (s.as_str(), a.as_str(), p.as_str()),
            ("http", "127.0.0.1:9001", "/base")
        );
        assert!(parse_target("127.0.0.1:9001").is_err());
        assert!(parse_target("ftp://x").is_err());
        assert!(parse_target("https://x:8443/p").is_ok());
        assert!(parse_target("http://x/?q=1").is_err());
    }
}
