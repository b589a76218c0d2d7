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

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};

use crate::outbound::{ClientSpec, Trust, Versions};

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
/// Idle connections to the authorizer are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept to the authorizer: enough for a busy gateway's concurrent calls.
const POOL_MAX_IDLE_PER_HOST: usize = 64;
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

type HttpClient = Client<crate::outbound::Connector, Full<Bytes>>;

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
        let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        Ok(ExternalAuthorizer {
            hits: metrics.authorizer_cache.with_label_values(&[name, "hit"]),
            misses: metrics.authorizer_cache.with_label_values(&[name, "miss"]),
            name: name.into(),
            uri,
            sources,
            timeout,
            cache,
            salt,
            client: crate::outbound::client(&ClientSpec {
                trust: Trust::System,
                // The whole call has `timeout`; connecting cannot need longer.
                connect_timeout: timeout,
                versions: Versions::Any,
                tls,
                pool_idle_timeout: POOL_IDLE_TIMEOUT,
                pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
            }),
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
        let raw = self
            .identity_raw(parts, route_key)
            .ok_or(ExternalError::MissingIdentity)?;
        let values: Vec<String> = raw.iter().map(|v| shown(v)).collect();
        let call = || self.call(parts, route_key, client_ip, request_id, &values);
        let Some(cache) = &self.cache else {
            return call().await;
        };
        let key = cache_key(&self.salt, &raw);
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

    /// The identity values in source order, as the authorizer is shown them (each source's
    /// occurrences joined with `,`, bytes that are not UTF-8 as U+FFFD); `None` when one is
    /// missing or empty.
    #[cfg(test)]
    fn identity_values(
        &self,
        parts: &http::request::Parts,
        route_key: &str,
    ) -> Option<Vec<String>> {
        self.identity_raw(parts, route_key)
            .map(|raw| raw.iter().map(|v| shown(v)).collect())
    }

    /// Each identity source's occurrences in source order, as the request carries them: every
    /// line of a header as sent, every value of a query parameter percent-decoded to bytes (not
    /// to text), the route key. The cache is keyed on these bytes, so values that differ only
    /// in bytes that are not UTF-8, or only in where one header line ends, never share an
    /// answer. `None` when a source is missing or its shown value is blank.
    fn identity_raw<'a>(
        &self,
        parts: &'a http::request::Parts,
        route_key: &'a str,
    ) -> Option<Vec<RawValue<'a>>> {
        self.sources
            .iter()
            .map(|s| {
                let v: RawValue<'a> = match s {
                    IdentitySource::Header(h) => parts
                        .headers
                        .get_all(h)
                        .iter()
                        .map(|v| Cow::Borrowed(v.as_bytes()))
                        .collect(),
                    IdentitySource::Query(q) => raw_query_values(parts.uri.query(), q),
                    IdentitySource::RouteKey => vec![Cow::Borrowed(route_key.as_bytes())],
                };
                (!shown(&v).trim().is_empty()).then_some(v)
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
        let mut req = match req {
            Ok(r) => r,
            Err(e) => return Err(self.failed(&format!("request: {e}"))),
        };
        let mut span = crate::telemetry::child(opentelemetry::trace::SpanKind::Client, || {
            format!("authorizer {}", self.name)
        });
        if let Some(span) = &mut span {
            // The authorizer continues the request's trace.
            req.headers_mut()
                .insert(crate::telemetry::context::TRACEPARENT, span.traceparent());
            span.attr("tollgate.authorizer", self.name.to_string());
            span.attr("http.request.method", "POST");
            if let Some(host) = self.uri.host() {
                span.attr("server.address", host.to_owned());
            }
            // Host and port only: userinfo in the URL is a credential.
            let scheme = self.uri.scheme_str().unwrap_or("http");
            let port = self
                .uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            span.attr(
                "url.full",
                format!(
                    "{scheme}://{}:{port}{}",
                    self.uri.host().unwrap_or(""),
                    self.uri.path()
                ),
            );
        }
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
        let verdict = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(Some(decision))) => Ok(Arc::new(decision)),
            Ok(Ok(None)) => Err(ExternalError::Denied),
            Ok(Err(why)) => Err(self.failed(&why)),
            Err(_) => Err(self.failed(&format!("no answer within {:?}", self.timeout))),
        };
        if let Some(span) = &mut span {
            match &verdict {
                Ok(_) => span.attr("tollgate.authorizer.decision", "allow"),
                Err(ExternalError::Denied) => span.attr("tollgate.authorizer.decision", "deny"),
                Err(_) => span.fail("the authorizer gave no answer"),
            }
        }
        verdict
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

/// One identity source's value: its occurrences (header lines, query values), raw bytes.
type RawValue<'a> = Vec<Cow<'a, [u8]>>;

/// What the authorizer is shown of one identity source: its occurrences joined with `,`,
/// bytes that are not UTF-8 replaced by U+FFFD (JSON strings are text).
fn shown(v: &[Cow<'_, [u8]>]) -> String {
    v.iter()
        .map(|b| String::from_utf8_lossy(b))
        .collect::<Vec<_>>()
        .join(",")
}

/// The decoded bytes of every value of query parameter `name`, in order. Pairs are split
/// like `application/x-www-form-urlencoded` (on `&`, then the first `=`), names and values
/// decoded (`+` is a space, `%XX` a byte) without turning bytes into text, so `%FE` and `%FF`
/// stay apart.
fn raw_query_values<'a>(query: Option<&'a str>, name: &str) -> RawValue<'a> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (*form_decode(k.as_bytes()) == *name.as_bytes()).then(|| form_decode(v.as_bytes()))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding to bytes: `+` is a space, `%XX` the byte XX,
/// a `%` not followed by two hex digits itself (as `form_urlencoded` does). Borrowed when
/// there is nothing to decode.
fn form_decode(b: &[u8]) -> Cow<'_, [u8]> {
    if !b.iter().any(|&c| c == b'+' || c == b'%') {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// The cache key: SHA-256 over the authorizer's salt and, for each identity source, its
/// number of occurrences and each occurrence's length and raw bytes. Every length is
/// written before what it measures, so no two different requests give the same input:
/// `("ab", "c")` and `("a", "bc")` differ, as do the header lines `a,b` + `c` and `a` + `b,c`,
/// and `tok\xfe` and `tok\xff` (which the authorizer is shown alike).
fn cache_key(salt: &[u8; 32], values: &[RawValue<'_>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(salt);
    for v in values {
        ctx.update(&(v.len() as u64).to_be_bytes());
        for occurrence in v {
            ctx.update(&(occurrence.len() as u64).to_be_bytes());
            ctx.update(occurrence);
        }
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
#[path = "external_tests.rs"]
mod tests;
