//! The external HTTP authorizer (`type: http`): a service of the operator's that decides, per
//! request, whether the caller may pass.
//!
//! For each request the configured [identity sources](IdentitySource) are gathered; a missing
//! one refuses the request without calling out. Otherwise a JSON description of the request,
//! shaped like the managed gateway's HTTP-API Lambda authorizer payload (format 2.0), is POSTed
//! to the authorizer, which answers in the simple format `{"isAuthorized": bool, "context":
//! {...}}`. An allow becomes a [`Decision`] carrying `x-tollgate-ctx-<name>` headers for the
//! upstream; a deny becomes [`ExternalError::Denied`]; anything else (timeout, connection error,
//! non-200, malformed answer) becomes [`ExternalError::Failed`].
//!
//! Answers, allow and deny, are cached by the identity values for `cache_ttl`; concurrent
//! identical requests share one call. Failures are never cached.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};

/// How long to wait for an answer when the config does not say: an authorizer sits on every
/// request's path, so a slow one must not hold clients for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest allowed `timeout`: beyond it a client would rather get an error than keep waiting.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// How long answers are cached when the config does not say (the managed gateway's default).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// Longest allowed `cache_ttl`: a revoked caller must lose access within the hour.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Entries in one authorizer's answer cache; each is at most about [`MAX_ANSWER_BYTES`], so
/// this bounds the cache's memory.
pub const CACHE_CAPACITY: u64 = 10_000;
/// Largest authorizer answer body read: a verdict and a small context fit easily, and the
/// cap bounds both the read and what one cache entry can hold.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;
/// Most context entries turned into upstream headers; the rest are dropped, so an authorizer
/// cannot flood the upstream with headers.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Most bytes of request header names and values copied into the payload's `headers`; the rest
/// are left out, so the call's size stays bounded whatever the client sends.
pub const MAX_PAYLOAD_HEADER_BYTES: usize = 64 * 1024;
/// Prefix of the upstream headers made from the authorizer's context.
pub const CONTEXT_HEADER_PREFIX: &str = "x-tollgate-ctx-";

/// Where one identity value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A request header (`header:Authorization`); several values are joined with `,`.
    Header(HeaderName),
    /// A query-string parameter (`query:token`); several values are joined with `,`.
    Query(String),
    /// The matched route key (`route`), e.g. `GET /orders/{id}`.
    RouteKey,
}

impl IdentitySource {
    /// Parses `header:NAME`, `query:NAME` or `route`.
    pub fn parse(s: &str) -> Result<IdentitySource, String> {
        let s = s.trim();
        if s == "route" {
            return Ok(IdentitySource::RouteKey);
        }
        if let Some(name) = s.strip_prefix("header:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("identity source {s:?} names no header"));
            }
            return HeaderName::from_bytes(name.as_bytes())
                .map(IdentitySource::Header)
                .map_err(|_| format!("identity source {s:?}: {name:?} is not a header name"));
        }
        if let Some(name) = s.strip_prefix("query:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("identity source {s:?} names no query parameter"));
            }
            return Ok(IdentitySource::Query(name.to_string()));
        }
        Err(format!(
            "identity source {s:?} is not `header:NAME`, `query:NAME` or `route`"
        ))
    }
}

/// An allow answer, as the upstream will be told about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Ready-made `x-tollgate-ctx-<name>` headers from the answer's `context` (at most
    /// [`MAX_CONTEXT_ENTRIES`]; entries whose value cannot be a header value are dropped).
    pub context_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why the external authorizer did not let a request pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalError {
    /// An identity source is missing or empty (401; the authorizer was not called).
    MissingIdentity,
    /// The authorizer answered `isAuthorized: false` (403).
    Denied,
    /// No usable answer: timeout, connection error, non-200 or malformed answer (500).
    Failed,
}

impl ExternalError {
    /// The `reason` label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ExternalError::MissingIdentity => "authorizer_no_identity",
            ExternalError::Denied => "authorizer_denied",
            ExternalError::Failed => "authorizer_failed",
        }
    }
}

impl std::fmt::Display for ExternalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ExternalError {}

/// A cached answer: allowed, or [`ExternalError::Denied`] (failures are never cached).
type Verdict = Result<Arc<Decision>, ExternalError>;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A compiled external HTTP authorizer with its answer cache.
pub struct ExternalAuthorizer {
    name: Arc<str>,
    uri: http::Uri,
    sources: Vec<IdentitySource>,
    timeout: Duration,
    /// `None` when `cache_ttl` is 0.
    cache: Option<moka::future::Cache<[u8; 32], Verdict>>,
    /// Digest of this authorizer's name, URL and sources; salts every cache key.
    salt: [u8; 32],
    client: HttpClient,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

impl std::fmt::Debug for ExternalAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuthorizer")
            .field("name", &self.name)
            .field("sources", &self.sources)
            .finish()
    }
}

impl ExternalAuthorizer {
    /// Builds an authorizer. `cache_ttl` and `timeout` are the config's values with
    /// [`DEFAULT_CACHE_TTL`] and [`DEFAULT_TIMEOUT`] applied by the caller.
    ///
    /// Refuses a URL that is not absolute `http(s)`, an unparsable identity source, a
    /// `cache_ttl` above [`MAX_CACHE_TTL`], a `timeout` of zero or above [`MAX_TIMEOUT`], and
    /// caching without identity sources (every caller would share one answer).
    pub fn new(
        name: &str,
        url: &str,
        identity: &[String],
        cache_ttl: Duration,
        timeout: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Result<ExternalAuthorizer, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("url {url:?} is not a valid URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "url {url:?} must be an absolute http(s) URL, e.g. http://authz:8080/check"
            ));
        }
        let sources = identity
            .iter()
            .map(|s| IdentitySource::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        if cache_ttl > MAX_CACHE_TTL {
            return Err(format!(
                "cache_ttl {cache_ttl:?} is above the maximum of {MAX_CACHE_TTL:?}"
            ));
        }
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(format!(
                "timeout {timeout:?} must be above 0 and at most {MAX_TIMEOUT:?}"
            ));
        }
        if sources.is_empty() && !cache_ttl.is_zero() {
            return Err(
                "caching answers needs at least one identity source (or set cache_ttl: 0s)".into(),
            );
        }
        let cache = (!cache_ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(cache_ttl)
                .build()
        });
        let salt = crate::util::sha256(format!("{name}|{url}|{sources:?}").as_bytes());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(ExternalAuthorizer {
            hits: metrics.authorizer_cache.with_label_values(&[name, "hit"]),
            misses: metrics.authorizer_cache.with_label_values(&[name, "miss"]),
            name: name.into(),
            uri,
            sources,
            timeout,
            cache,
            salt,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The authorizer's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Decides a request. `Ok` only when the authorizer allowed it.
    ///
    /// With caching on, the answer for these identity values comes from the cache when present;
    /// otherwise one call is made, and concurrent requests with the same identity values wait for
    /// that call instead of making their own. `tollgate_authorizer_cache_total` counts a `miss`
    /// for the request that made the call and a `hit` for every other (cached or coalesced onto
    /// a call in flight). With `cache_ttl` 0 every request calls out and nothing is counted.
    pub async fn authorize(
        &self,
        parts: &http::request::Parts,
        route_key: &str,
        client_ip: IpAddr,
        request_id: &str,
    ) -> Result<Arc<Decision>, ExternalError> {
        let values = self
            .identity_values(parts, route_key)
            .ok_or(ExternalError::MissingIdentity)?;
        let call = || self.call(parts, route_key, client_ip, request_id, &values);
        let Some(cache) = &self.cache else {
            return call().await;
        };
        let key = cache_key(&self.salt, &values);
        let called = AtomicBool::new(false);
        let answer = cache
            .try_get_with(key, async {
                called.store(true, Ordering::Relaxed);
                match call().await {
                    Err(ExternalError::Failed) => Err(ExternalError::Failed),
                    verdict => Ok(verdict),
                }
            })
            .await;
        if called.load(Ordering::Relaxed) {
            self.misses.inc();
        } else {
            self.hits.inc();
        }
        answer.unwrap_or_else(|e| Err(*e))
    }

    /// The identity values in source order; `None` when one is missing or empty.
    fn identity_values(
        &self,
        parts: &http::request::Parts,
        route_key: &str,
    ) -> Option<Vec<String>> {
        self.sources
            .iter()
            .map(|s| {
                let v = match s {
                    IdentitySource::Header(h) => join_header(&parts.headers, h),
                    IdentitySource::Query(q) => query_pairs(parts.uri.query())
                        .filter(|(k, _)| k == q)
                        .map(|(_, v)| v)
                        .collect::<Vec<_>>()
                        .join(","),
                    IdentitySource::RouteKey => route_key.to_string(),
                };
                (!v.trim().is_empty()).then_some(v)
            })
            .collect()
    }

    /// One call to the authorizer: allowed, denied, or failed (logged here).
    async fn call(
        &self,
        parts: &http::request::Parts,
        route_key: &str,
        client_ip: IpAddr,
        request_id: &str,
        values: &[String],
    ) -> Verdict {
        let body = payload(parts, route_key, client_ip, request_id, values);
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Err(self.failed(&format!("payload: {e}"))),
        };
        let req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("tollgate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Err(self.failed(&format!("request: {e}"))),
        };
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("answered {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("answer body: {e}"))?
                .to_bytes();
            parse_answer(&body)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Some(decision))) => Ok(Arc::new(decision)),
            Ok(Ok(None)) => Err(ExternalError::Denied),
            Ok(Err(why)) => Err(self.failed(&why)),
            Err(_) => Err(self.failed(&format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Logs a failed call (never header or identity values) and returns `Failed`.
    fn failed(&self, why: &str) -> ExternalError {
        tracing::warn!(authorizer = %self.name, error = why, "external authorizer failed");
        ExternalError::Failed
    }
}

/// An error and its sources, for logs (`client error (Connect): tcp connect error: ...`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Every value of header `h`, joined with `,` (empty when absent).
fn join_header(headers: &http::HeaderMap, h: &HeaderName) -> String {
    headers
        .get_all(h)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

/// Decoded `name=value` pairs of a query string.
fn query_pairs(q: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// SHA-256 over the authorizer's salt and each identity value, length-prefixed so that value
/// boundaries count (`("ab", "c")` and `("a", "bc")` differ).
fn cache_key(salt: &[u8; 32], values: &[String]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(salt);
    for v in values {
        ctx.update(&(v.len() as u64).to_be_bytes());
        ctx.update(v.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The request description POSTed to the authorizer (HTTP-API authorizer payload format 2.0).
fn payload(
    parts: &http::request::Parts,
    route_key: &str,
    client_ip: IpAddr,
    request_id: &str,
    values: &[String],
) -> Value {
    let mut headers = Map::new();
    let mut budget = MAX_PAYLOAD_HEADER_BYTES;
    for name in parts.headers.keys() {
        let value = join_header(&parts.headers, name);
        let size = name.as_str().len() + value.len();
        if size > budget {
            continue;
        }
        budget -= size;
        headers.insert(name.as_str().to_string(), Value::String(value));
    }
    let mut query: Map<String, Value> = Map::new();
    for (k, v) in query_pairs(parts.uri.query()) {
        match query.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let time_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    serde_json::json!({
        "version": "2.0",
        "type": "REQUEST",
        "routeKey": route_key,
        "rawPath": parts.uri.path(),
        "rawQueryString": parts.uri.query().unwrap_or(""),
        "identitySource": values,
        "headers": headers,
        "queryStringParameters": query,
        "requestContext": {
            "http": {
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "protocol": protocol(parts.version),
                "sourceIp": client_ip.to_string(),
                "userAgent": user_agent,
            },
            "requestId": request_id,
            "routeKey": route_key,
            "timeEpoch": time_epoch,
        },
    })
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Parses a simple-format answer: `Some(decision)` when allowed, `None` when denied, `Err` when
/// it is not a JSON object with a boolean `isAuthorized` and an optional object `context`.
fn parse_answer(body: &[u8]) -> Result<Option<Decision>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("answer is not a JSON object".into());
    };
    let allowed = match obj.get("isAuthorized") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("answer's isAuthorized is not a boolean".into()),
        None => return Err("answer has no isAuthorized".into()),
    };
    let context = match obj.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c),
        Some(_) => return Err("answer's context is not an object".into()),
    };
    if !allowed {
        return Ok(None);
    }
    Ok(Some(Decision {
        context_headers: context.map(context_headers).unwrap_or_default(),
    }))
}

/// `x-tollgate-ctx-<name>` headers for a context: at most [`MAX_CONTEXT_ENTRIES`], skipping
/// entries whose name sanitises to nothing or repeats an earlier one, null values, and values
/// that cannot be header values.
fn context_headers(context: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (k, v) in context {
        if out.len() == MAX_CONTEXT_ENTRIES {
            break;
        }
        let (Some(name), Some(value)) = (context_header_name(k), context_value(v)) else {
            continue;
        };
        if seen.insert(name.clone()) {
            out.push((name, value));
        }
    }
    out
}

/// `x-tollgate-ctx-` and the key lowercased, with every character outside `[a-z0-9-]` turned
/// into `-`; `None` for an empty key.
fn context_header_name(key: &str) -> Option<HeaderName> {
    if key.is_empty() {
        return None;
    }
    let mut name = String::with_capacity(CONTEXT_HEADER_PREFIX.len() + key.len());
    name.push_str(CONTEXT_HEADER_PREFIX);
    name.extend(key.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            c
        } else {
            '-'
        }
    }));
    HeaderName::from_bytes(name.as_bytes()).ok()
}

/// A context value as a header value: strings as they are, numbers and booleans in their JSON
/// spelling, objects and arrays as compact JSON; `None` for null and for anything that cannot be
/// a header value (control characters).
fn context_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) | Value::Object(_) => serde_json::to_string(v).ok()?,
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn authorizer(identity: &[&str], ttl: Duration) -> ExternalAuthorizer {
        let identity: Vec<String> = identity.iter().map(|s| s.to_string()).collect();
        ExternalAuthorizer::new(
            "ext",
            "http://127.0.0.1:9/authorize",
            &identity,
            ttl,
            DEFAULT_TIMEOUT,
            &crate::metrics::Metrics::new(),
        )
        .unwrap()
    }

    #[test]
    fn identity_sources_parse() {
        assert_eq!(
            IdentitySource::parse("header:Authorization"),
            Ok(IdentitySource::Header(http::header::AUTHORIZATION))
        );
        assert_eq!(
            IdentitySource::parse(" header: X-Api-Token "),
            Ok(IdentitySource::Header(HeaderName::from_static(
                "x-api-token"
            )))
        );
        assert_eq!(
            IdentitySource::parse("query:token"),
            Ok(IdentitySource::Query("token".into()))
        );
        assert_eq!(IdentitySource::parse("route"), Ok(IdentitySource::RouteKey));
        for bad in [
            "",
            "header:",
            "header:bad name",
            "query:",
            "cookie:session",
            "Authorization",
            "routes",
        ] {
            assert!(IdentitySource::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn new_validates_its_settings() {
        let m = crate::metrics::Metrics::new();
        let id = vec!["header:Authorization".to_string()];
        let new = |url: &str, id: &[String], ttl: u64, timeout_ms: u64| {
            ExternalAuthorizer::new(
                "ext",
                url,
                id,
                Duration::from_secs(ttl),
                Duration::from_millis(timeout_ms),
                &m,
            )
        };
        assert!(new("http://authz:8080/check", &id, 300, 5000).is_ok());
        assert!(new("https://authz.example/check", &id, 3600, 10_000).is_ok());
        assert!(new("ftp://authz/check", &id, 300, 5000).is_err());
        assert!(new("/check", &id, 300, 5000).is_err());
        assert!(new("not a url", &id, 300, 5000).is_err());
        assert!(new("http://authz/", &["nope".to_string()], 300, 5000).is_err());
        assert!(new("http://authz/", &id, 3601, 5000).is_err());
        assert!(new("http://authz/", &id, 300, 0).is_err());
        assert!(new("http://authz/", &id, 300, 10_001).is_err());
        assert!(
            new("http://authz/", &[], 300, 5000).is_err(),
            "caching with no identity would share one answer among all callers"
        );
        assert!(new("http://authz/", &[], 0, 5000).is_ok());
    }

    #[test]
    fn identity_values_in_order_and_missing_ones() {
        let az = authorizer(
            &["header:Authorization", "query:token", "route"],
            DEFAULT_CACHE_TTL,
        );
        let p = parts("/x?token=t%201&token=t2", &[("authorization", "abc")]);
        assert_eq!(
            az.identity_values(&p, "GET /x"),
            Some(vec!["abc".into(), "t 1,t2".into(), "GET /x".into()])
        );
        let p = parts("/x?token=t", &[]);
        assert_eq!(az.identity_values(&p, "GET /x"), None, "header missing");
        let p = parts("/x?token=t", &[("authorization", "  ")]);
        assert_eq!(az.identity_values(&p, "GET /x"), None, "header blank");
        let p = parts("/x?other=1", &[("authorization", "abc")]);
        assert_eq!(az.identity_values(&p, "GET /x"), None, "query missing");
        let p = parts("/x?token=", &[("authorization", "abc")]);
        assert_eq!(az.identity_values(&p, "GET /x"), None, "query empty");
        let p = parts("/x?token=t", &[("authorization", "abc")]);
        assert_eq!(az.identity_values(&p, ""), None, "route key empty");
    }

    #[test]
    fn header_names_are_sanitised() {
        let name = |k: &str| context_header_name(k).map(|h| h.as_str().to_string());
        assert_eq!(name("user").as_deref(), Some("x-tollgate-ctx-user"));
        assert_eq!(name("UserId").as_deref(), Some("x-tollgate-ctx-userid"));
        assert_eq!(
            name("tenant_id.v2").as_deref(),
            Some("x-tollgate-ctx-tenant-id-v2")
        );
        assert_eq!(name("a b:c").as_deref(), Some("x-tollgate-ctx-a-b-c"));
        assert_eq!(name("ümlaut").as_deref(), Some("x-tollgate-ctx--mlaut"));
        assert_eq!(name("x-Key-9").as_deref(), Some("x-tollgate-ctx-x-key-9"));
        assert_eq!(name(""), None);
    }

    #[test]
    fn context_values_convert() {
        let v = |j: Value| context_value(&j).map(|h| h.to_str().unwrap().to_string());
        assert_eq!(v(json!("alice")).as_deref(), Some("alice"));
        assert_eq!(v(json!(3)).as_deref(), Some("3"));
        assert_eq!(v(json!(-2.5)).as_deref(), Some("-2.5"));
        assert_eq!(v(json!(true)).as_deref(), Some("true"));
        assert_eq!(v(json!(false)).as_deref(), Some("false"));
        assert_eq!(
            v(json!({"a": [1, "b"]})).as_deref(),
            Some(r#"{"a":[1,"b"]}"#)
        );
        assert_eq!(v(json!(["x", 2])).as_deref(), Some(r#"["x",2]"#));
        assert_eq!(v(json!(null)), None);
        assert_eq!(v(json!("line\nbreak")), None, "not a header value");
    }

    #[test]
    fn context_headers_skip_bad_entries_and_are_capped() {
        let mut c = Map::new();
        c.insert("user".into(), json!("alice"));
        c.insert("USER".into(), json!("again"));
        c.insert("bad".into(), json!("a\u{0}b"));
        c.insert("none".into(), json!(null));
        c.insert("".into(), json!("empty name"));
        let h = context_headers(&c);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].0.as_str(), "x-tollgate-ctx-user");

        let many: Map<String, Value> = (0..100).map(|i| (format!("k{i:03}"), json!(i))).collect();
        assert_eq!(context_headers(&many).len(), MAX_CONTEXT_ENTRIES);
    }

    #[test]
    fn answers_parse() {
        let allowed =
            parse_answer(br#"{"isAuthorized": true, "context": {"user": "a", "tier": 3}}"#)
                .unwrap()
                .unwrap();
        assert_eq!(allowed.context_headers.len(), 2);
        assert_eq!(
            parse_answer(br#"{"isAuthorized": true}"#).unwrap(),
            Some(Decision::default())
        );
        assert_eq!(
            parse_answer(br#"{"isAuthorized": true, "context": null}"#).unwrap(),
            Some(Decision::default())
        );
        assert_eq!(parse_answer(br#"{"isAuthorized": false}"#).unwrap(), None);
        for bad in [
            &b"not json"[..],
            b"[]",
            b"true",
            b"{}",
            br#"{"isAuthorized": "true"}"#,
            br#"{"isAuthorized": 1}"#,
            br#"{"isAuthorized": true, "context": "x"}"#,
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cache_key_changes_with_each_identity_value() {
        let salt = [7u8; 32];
        let k = |v: &[&str]| cache_key(&salt, &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let base = k(&["a", "b", "GET /x"]);
        assert_eq!(base, k(&["a", "b", "GET /x"]));
        assert_ne!(base, k(&["A", "b", "GET /x"]));
        assert_ne!(base, k(&["a", "c", "GET /x"]));
        assert_ne!(base, k(&["a", "b", "GET /y"]));
        assert_ne!(k(&["ab", "c"]), k(&["a", "bc"]), "value boundaries count");
        assert_ne!(
            base,
            cache_key(&[8u8; 32], &["a".into(), "b".into(), "GET /x".into()])
        );
        let a = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
        let b = ExternalAuthorizer::new(
            "other",
            "http://127.0.0.1:9/authorize",
            &["header:Authorization".to_string()],
            DEFAULT_CACHE_TTL,
            DEFAULT_TIMEOUT,
            &crate::metrics::Metrics::new(),
        )
        .unwrap();
        assert_ne!(a.salt, b.salt, "authorizers never share keys");
    }

    #[test]
    fn payload_has_the_format_2_shape() {
        let p = parts(
            "/orders/7?a=1&a=2&b=x%20y",
            &[
                ("authorization", "allow-me"),
                ("x-multi", "1"),
                ("x-multi", "2"),
                ("user-agent", "test/1"),
            ],
        );
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let v = payload(&p, "GET /orders/{id}", ip, "req-1", &["allow-me".into()]);
        assert_eq!(v["version"], "2.0");
        assert_eq!(v["type"], "REQUEST");
        assert_eq!(v["routeKey"], "GET /orders/{id}");
        assert_eq!(v["rawPath"], "/orders/7");
        assert_eq!(v["rawQueryString"], "a=1&a=2&b=x%20y");
        assert_eq!(v["identitySource"], json!(["allow-me"]));
        assert_eq!(v["headers"]["authorization"], "allow-me");
        assert_eq!(v["headers"]["x-multi"], "1,2");
        assert_eq!(v["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
        let rc = &v["requestContext"];
        assert_eq!(rc["http"]["method"], "GET");
        assert_eq!(rc["http"]["path"], "/orders/7");
        assert_eq!(rc["http"]["protocol"], "HTTP/1.1");
        assert_eq!(rc["http"]["sourceIp"], "10.1.2.3");
        assert_eq!(rc["http"]["userAgent"], "test/1");
        assert_eq!(rc["requestId"], "req-1");
        assert_eq!(rc["routeKey"], "GET /orders/{id}");
        assert!(rc["timeEpoch"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn payload_headers_are_capped() {
        let big = "v".repeat(40 * 1024);
        let p = parts(
            "/",
            &[
                ("x-a", big.as_str()),
                ("x-b", big.as_str()),
                ("x-c", "small"),
            ],
        );
        let v = payload(&p, "GET /", "127.0.0.1".parse().unwrap(), "r", &[]);
        let h = v["headers"].as_object().unwrap();
        assert!(h.contains_key("x-a"));
        assert!(!h.contains_key("x-b"), "over the budget");
        assert!(h.contains_key("x-c"));
    }

    #[test]
    fn authorize_is_send() {
        fn send<T: Send>(_: &T) {}
        let az = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
        let p = parts("/", &[]);
        send(&az.authorize(&p, "GET /", "127.0.0.1".parse().unwrap(), "r"));
    }

    #[tokio::test]
    async fn missing_identity_is_refused_without_a_call() {
        // The URL points at the discard port; a call would fail, not refuse.
        let az = authorizer(&["header:Authorization"], DEFAULT_CACHE_TTL);
        let p = parts("/", &[]);
        let r = az
            .authorize(&p, "GET /", "127.0.0.1".parse().unwrap(), "r")
            .await;
        assert_eq!(r, Err(ExternalError::MissingIdentity));
    }
}
