//! Forwarding to upstreams: target choice (round robin, a target that refused a connection set
//! aside for a while), the pooled keep-alive client, hop-by-hop header hygiene, and the mapping
//! of upstream failures to 502 / 504 (or to 413 / 408 when the client's body was at fault).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BodyFailure, FailureCell, GuardedBody};
use crate::error::Refusal;

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

/// What goes to the upstream: the client's body streaming through its guard, or a body the
/// gateway already read whole.
pub type UpstreamBody = http_body_util::Either<GuardedBody, http_body_util::Full<bytes::Bytes>>;

/// Headers that describe one connection, not the message (RFC 9110 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

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
    client: Client<HttpConnector, UpstreamBody>,
    duration: prometheus::Histogram,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

/// Parses a target URL. Refuses anything but `http://host[:port][/prefix]` without query.
pub fn parse_target(s: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("bad target URL {s:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("target {s:?} needs a scheme"))?;
    if scheme != Scheme::HTTP {
        return Err(format!(
            "target {s:?}: only http:// upstreams are supported"
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

impl Upstream {
    /// Builds a pool and its connection pool. Refuses an empty or unparsable target list.
    pub fn new(
        name: &str,
        targets: &[String],
        timeout: Duration,
        connect_timeout: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Upstream, String> {
        if targets.is_empty() {
            return Err("an upstream needs at least one target".into());
        }
        let mut ts = Vec::new();
        for t in targets {
            let (scheme, authority, prefix) = parse_target(t)?;
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector);
        Ok(Upstream {
            duration: metrics.upstream_duration.with_label_values(&[name]),
            name: name.into(),
            targets: ts,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            timeout,
            client,
        })
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
    /// response head with its body still streaming. Refuses with 504 when no head arrives in
    /// time, 502 when the target cannot be reached or breaks the exchange, and 413 / 408 when
    /// the client's body was cut off.
    pub async fn forward(
        &self,
        mut req: Request<UpstreamBody>,
        body_failure: &FailureCell,
    ) -> Result<(Response<Incoming>, Duration), Refusal> {
        let i = self.pick();
        let t = &self.targets[i];
        let pq = req
            .uri()
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let path = if t.prefix.is_empty() {
            PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(pq.as_bytes()))
        } else {
            PathAndQuery::from_maybe_shared(bytes::Bytes::from(format!("{}{pq}", t.prefix)))
        }
        .map_err(|_| Refusal::BadRequest("bad_uri"))?;
        *req.uri_mut() = Uri::builder()
            .scheme(t.scheme.clone())
            .authority(t.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| Refusal::BadRequest("bad_uri"))?;
        req.headers_mut()
            .insert(header::HOST, t.host_header.clone());
        *req.version_mut() = http::Version::HTTP_11;

        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let took = started.elapsed();
        self.duration.observe(took.as_secs_f64());
        match result {
            Err(_) => Err(match body_failure.get() {
                Some(f) => body_refusal(f),
                None => Refusal::GatewayTimeout,
            }),
            Ok(Err(e)) => {
                if let Some(f) = body_failure.get() {
                    return Err(body_refusal(f));
                }
                if e.is_connect() {
                    let until = self.now_ms() + TARGET_COOLDOWN.as_millis() as u64;
                    t.down_until.store(until, Ordering::Relaxed);
                    tracing::warn!(upstream = %self.name, upstream_target = %t.authority, error = %e,
                        "upstream target refused or failed to connect; set aside");
                    Err(Refusal::BadGateway("upstream_connect"))
                } else {
                    tracing::warn!(upstream = %self.name, upstream_target = %t.authority, error = %e,
                        "upstream exchange failed");
                    Err(Refusal::BadGateway("upstream_error"))
                }
            }
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok((resp, took))
            }
        }
    }
}

fn body_refusal(f: BodyFailure) -> Refusal {
    match f {
        BodyFailure::TooLarge => Refusal::PayloadTooLarge,
        BodyFailure::Stalled => Refusal::RequestTimeout,
        BodyFailure::Aborted => Refusal::BadRequest("client_aborted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
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
        assert!(parse_target("http://x/?q=1").is_err());
    }
}
