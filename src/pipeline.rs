//! The request pipeline: every request runs these phases in the contract's order, and the first
//! that refuses answers. Each phase is a plain function whose output the next one needs, so the
//! order cannot be broken without the compiler noticing:
//!
//! ```text
//! client ip ─▶ route ─▶ (CORS preflight) ─▶ authenticate ─▶ scopes ─▶ api key ─▶ admit ─▶ forward
//!   IpAddr    &Route                        Principal                  &ApiKey    Permit   Response
//!
//! `admit` runs the throttles (plan, route) and then the quota, so only requests that passed
//! every check count.
//! ```
//!
//! [`handle`] wraps the pipeline with what every answer gets: `x-request-id`, CORS headers for
//! allowed origins, one access-log line and the request metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::apikeys::{ApiKey, KeyError};
use crate::auth::Identity;
use crate::auth::external::{Decision, ExternalError};
use crate::auth::sigv4::{SigV4Error, SigV4Identity};
use crate::body::{ClientBody, CollectError, FailureCell, GuardedBody, ReqBody};
use crate::error::{Refusal, ResponseBody};
use crate::gateway::Gateway;
use crate::limits::{LimitError, LimitState, Period, QuotaSpec};
use crate::proxy::Protocol;
use crate::service::{ConnInfo, Handler};
use crate::snapshot::{Integration, Route, RouteAuth, Snapshot};
use crate::upgrade::Upgrades;

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_TOLLGATE_API_KEY_ID: HeaderName = HeaderName::from_static("x-tollgate-api-key-id");

/// Who is calling, as established by the route's authorizer.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The route is open.
    Anonymous,
    /// A verified JWT.
    Jwt(Arc<Identity>),
    /// Allowed by an external authorizer, with the context it returned.
    External(Arc<Decision>),
    /// A request signed (SigV4) with a configured access key.
    SigV4(Arc<SigV4Identity>),
}

/// Permission to forward: the route and principal that passed every check.
#[derive(Debug)]
pub struct Permit<'s> {
    route: &'s Route,
    principal: Principal,
    key: Option<&'s ApiKey>,
}

/// What every phase may consult about the request in hand.
struct Ctx<'s> {
    snap: &'s Snapshot,
    limits: &'s LimitState,
    upgrades: &'s Arc<Upgrades>,
    conn: &'s ConnInfo,
    client_ip: IpAddr,
    request_id: HeaderValue,
}

/// What the access log and metrics record about one request.
struct Outcome<'s> {
    route: Option<&'s Route>,
    principal: Option<Principal>,
    key: Option<&'s ApiKey>,
    /// `ratelimit-*` values for an admitted keyed request.
    rate: Option<(u64, u64, u64)>,
    upstream: Option<Duration>,
    reason: Option<&'static str>,
}

/// The pipeline as the transport drives it: every request of every public connection.
#[derive(Clone)]
pub struct Pipeline(Arc<Gateway>);

impl Pipeline {
    /// The pipeline of `gateway` (its snapshot is loaded once per request).
    pub fn new(gateway: Arc<Gateway>) -> Pipeline {
        Pipeline(gateway)
    }
}

impl Handler for Pipeline {
    type Body = ResponseBody;

    fn handle(
        &self,
        conn: &Arc<ConnInfo>,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + use<> {
        handle(self.0.clone(), conn.clone(), req)
    }
}

/// Serves one request. Never fails: refusals become responses.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<ClientBody>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let snap = gw.snapshot();
    let ctx = Ctx {
        snap: &snap,
        limits: gw.limits(),
        upgrades: gw.upgrades(),
        conn: &conn,
        client_ip: crate::clientip::client_ip(conn.peer.ip(), req.headers(), &snap.trusted_proxies),
        request_id: request_id(req.headers()),
    };
    let method = req.method().clone();
    // A reference-counted clone (hyper's URI shares the read buffer), for the access log.
    let uri = req.uri().clone();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut out = Outcome {
        route: None,
        principal: None,
        key: None,
        rate: None,
        upstream: None,
        reason: None,
    };
    let mut resp = match pipeline(&ctx, req, &mut out).await {
        Ok(r) => r,
        Err(refusal) => {
            out.reason = Some(refusal.reason());
            refusal.into_response()
        }
    };
    resp.headers_mut()
        .insert(REQUEST_ID, ctx.request_id.clone());
    if let Some((limit, remaining, reset)) = out.rate
        && out.reason.is_none()
    {
        let h = resp.headers_mut();
        h.insert(crate::error::RATELIMIT_LIMIT, HeaderValue::from(limit));
        h.insert(
            crate::error::RATELIMIT_REMAINING,
            HeaderValue::from(remaining),
        );
        h.insert(crate::error::RATELIMIT_RESET, HeaderValue::from(reset));
    }
    if let (Some(cors), Some(origin)) = (&snap.cors, &origin) {
        add_cors_headers(cors, origin, resp.headers_mut());
    }
    record(
        &gw,
        &ctx,
        &out,
        &method,
        uri.path(),
        resp.status(),
        started.elapsed(),
    );
    resp
}

/// The phases, in order.
async fn pipeline<'s>(
    ctx: &Ctx<'s>,
    req: Request<ClientBody>,
    out: &mut Outcome<'s>,
) -> Result<Response<ResponseBody>, Refusal> {
    let snap = ctx.snap;
    let (mut parts, body) = req.into_parts();
    let mut body = ReqBody::Streaming(body);
    check_request(snap, &parts)?;
    // The URI as the client sent it: a SigV4 signature covers exactly that spelling.
    let sent = parts.uri.clone();
    let routed = route(snap, &parts, &sent)?;
    out.route = Some(routed.route);
    if let Some(uri) = routed.canonical_uri {
        parts.uri = uri;
    }
    let route = routed.route;
    if let Some(preflight) = cors_preflight(snap, &parts) {
        return Ok(preflight);
    }
    check_policy(route, ctx)?;
    let principal = authenticate(ctx, route, &parts, &sent, &mut body).await?;
    out.principal = Some(principal.clone());
    check_scopes(route, &principal)?;
    let key = api_key(snap, route, &parts.headers)?;
    out.key = key;
    let permit = admit(ctx, route, principal, key, &parts.headers, out).await?;
    forward(ctx, permit, parts, body, out).await
}

/// The methods of RFC 9110 and RFC 5789; a method spelled like one of them in another case is
/// refused, since servers that fold method case would serve what the route table never saw.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// Phase 1: refuses requests that cannot be decided safely, before anything looks at them: no
/// host (HTTP/1.1 requires one), a standard method in another case (`get`, `Delete`), and a
/// credential header sent twice (one copy would be checked and another one could be read by
/// the upstream).
fn check_request(snap: &Snapshot, req: &Parts) -> Result<(), Refusal> {
    if req.uri.authority().is_none() && !req.headers.contains_key(header::HOST) {
        return Err(Refusal::BadRequest("no_host"));
    }
    let m = req.method.as_str();
    if !STANDARD_METHODS.contains(&req.method)
        && STANDARD_METHODS
            .iter()
            .any(|s| s.as_str().eq_ignore_ascii_case(m))
    {
        return Err(Refusal::BadRequest("method_case"));
    }
    for name in &snap.credential_headers {
        let mut values = req.headers.get_all(name).iter();
        if values.next().is_some() && values.next().is_some() {
            return Err(Refusal::BadRequest("duplicate_credential"));
        }
    }
    Ok(())
}

/// A request matched to its route, with its path in canonical form.
struct Routed<'s> {
    route: &'s Route,
    /// The URI with the canonical path, when that differs from the one the client sent.
    canonical_uri: Option<http::Uri>,
}

/// Phase 2: the route, decided on the canonical path ([`crate::canonical`]): refuses (400) a
/// path that cannot be made canonical, and one holding a spelling (`%2F`, `//`, `;`) its route
/// does not allow; 404 without a route. A CORS preflight is routed by the method it asks about.
fn route<'s>(snap: &'s Snapshot, req: &Parts, sent: &http::Uri) -> Result<Routed<'s>, Refusal> {
    let method = match preflight_method(snap, req) {
        Some(m) => m,
        None => req.method.clone(),
    };
    let canonical =
        crate::canonical::canonicalize(sent.path()).map_err(|e| Refusal::BadRequest(e.reason()))?;
    let route = snap
        .table
        .find(&method, &canonical.match_form)
        .map(|i| &snap.routes[i])
        .ok_or(Refusal::NotFound)?;
    if let Some(reason) = canonical.exceptions.not_in(route.allow_in_path) {
        return Err(Refusal::BadRequest(reason));
    }
    let canonical_uri = if canonical.changed() {
        let pq = match sent.query() {
            Some(q) => format!("{}?{q}", canonical.path),
            None => canonical.path.into_owned(),
        };
        let mut uri = http::uri::Parts::from(sent.clone());
        uri.path_and_query = Some(
            http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq))
                .map_err(|_| Refusal::BadRequest("bad_uri"))?,
        );
        Some(http::Uri::from_parts(uri).map_err(|_| Refusal::BadRequest("bad_uri"))?)
    } else {
        None
    };
    Ok(Routed {
        route,
        canonical_uri,
    })
}

fn preflight_method(snap: &Snapshot, req: &Parts) -> Option<Method> {
    if snap.cors.is_none()
        || req.method != Method::OPTIONS
        || !req.headers.contains_key(header::ORIGIN)
    {
        return None;
    }
    let m = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(m.as_bytes()).ok()
}

/// Phase 3: a CORS preflight is answered here, before any authorization (browsers send no
/// credentials on preflights). Origins not allowed get no `access-control-*` headers.
fn cors_preflight(snap: &Snapshot, req: &Parts) -> Option<Response<ResponseBody>> {
    preflight_method(snap, req)?;
    let cors = snap.cors.as_ref()?;
    let mut resp = Response::new(Either::Left(Full::default()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let origin = req.headers.get(header::ORIGIN)?;
    if origin.to_str().is_ok_and(|o| cors.allows(o)) {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            cors.allow_methods.clone(),
        );
        if let Some(v) = &cors.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &cors.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
    }
    Some(resp)
}

/// CORS headers on an actual (non-preflight) answer, for allowed origins.
fn add_cors_headers(cors: &crate::snapshot::Cors, origin: &HeaderValue, h: &mut HeaderMap) {
    if !origin.to_str().is_ok_and(|o| cors.allows(o)) {
        return;
    }
    let wildcard = !cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*");
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        if wildcard {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        },
    );
    if !wildcard {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &cors.expose_headers {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}

/// Phase 4: the route's resource policy: a verified client certificate where the route
/// requires one, and the client IP inside the policy (403 otherwise).
fn check_policy(route: &Route, ctx: &Ctx<'_>) -> Result<(), Refusal> {
    if route.require_client_cert && ctx.conn.client_cert.is_none() {
        return Err(Refusal::Forbidden("client_cert_required"));
    }
    match &route.policy {
        Some(p) if !p.permits(ctx.client_ip) => Err(Refusal::PolicyDenied),
        _ => Ok(()),
    }
}

/// Phase 5: the route's authorizer. Refuses 401 without a token or with a bad one.
async fn authenticate(
    ctx: &Ctx<'_>,
    route: &Route,
    parts: &Parts,
    sent: &http::Uri,
    body: &mut ReqBody,
) -> Result<Principal, Refusal> {
    match &route.auth {
        RouteAuth::None => Ok(Principal::Anonymous),
        RouteAuth::SigV4 { verifier, .. } => {
            if !crate::auth::sigv4::is_signed(parts) {
                return Err(Refusal::Unauthorized(SigV4Error::Unsigned.reason()));
            }
            // The signature covers the body's hash: read it whole (bounded), then forward it.
            let limits = &ctx.snap.limits;
            let taken = std::mem::replace(body, ReqBody::Buffered(bytes::Bytes::new()));
            let bytes = taken
                .collect(limits.max_body as usize, limits.body_idle_timeout)
                .await
                .map_err(|e| match e {
                    CollectError::TooLarge => Refusal::PayloadTooLarge,
                    CollectError::Timeout => Refusal::RequestTimeout,
                    CollectError::Aborted => Refusal::BadRequest("client_aborted"),
                })?;
            *body = ReqBody::Buffered(bytes.clone());
            let identity = verifier
                .verify_path(parts, sent.path(), &bytes, std::time::SystemTime::now())
                .map_err(|e| match e {
                    SigV4Error::Unsigned => Refusal::Unauthorized(e.reason()),
                    _ => Refusal::Forbidden(e.reason()),
                })?;
            Ok(Principal::SigV4(Arc::new(identity)))
        }
        RouteAuth::External { authorizer, .. } => {
            let request_id = ctx.request_id.to_str().unwrap_or("");
            let decision = authorizer
                .authorize(parts, &route.key, ctx.client_ip, request_id)
                .await
                .map_err(|e| match e {
                    ExternalError::MissingIdentity => Refusal::Unauthorized(e.reason()),
                    ExternalError::Denied => Refusal::Forbidden(e.reason()),
                    ExternalError::Failed => Refusal::AuthorizerFailed,
                })?;
            Ok(Principal::External(decision))
        }
        RouteAuth::Jwt { authorizer, .. } => {
            let token = authorizer
                .token(&parts.headers)
                .ok_or(Refusal::NoCredentials)?;
            let identity = authorizer
                .verify(token)
                .await
                .map_err(Refusal::InvalidToken)?;
            Ok(Principal::Jwt(identity))
        }
    }
}

/// Phase 5, second half: the verified caller must hold at least one of the route's scopes.
/// Kept apart from [`authenticate`] so that a refused caller is still named in the access log.
fn check_scopes(route: &Route, principal: &Principal) -> Result<(), Refusal> {
    match (&route.auth, principal) {
        (
            RouteAuth::Jwt {
                scopes,
                insufficient_scope,
                ..
            },
            Principal::Jwt(identity),
        ) if !identity.has_any_scope(scopes) => {
            Err(Refusal::InsufficientScope(insufficient_scope.clone()))
        }
        (RouteAuth::SigV4 { scopes, .. }, Principal::SigV4(identity))
            if !identity.has_any_scope(scopes) =>
        {
            Err(Refusal::Forbidden("insufficient_scope"))
        }
        _ => Ok(()),
    }
}

/// Phase 6: the API key, on routes that require one. Refuses (403) a missing, unknown or
/// disabled key. Routes that do not require a key ignore one.
fn api_key<'s>(
    snap: &'s Snapshot,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Option<&'s ApiKey>, Refusal> {
    if !route.api_key_required {
        return Ok(None);
    }
    let table = snap
        .keys
        .as_ref()
        .ok_or(Refusal::ApiKey(KeyError::Unknown))?;
    table.lookup(headers).map(Some).map_err(Refusal::ApiKey)
}

/// Phase 7: admission, in the contract's order: the key's plan throttle (or its per-route
/// throttle), the route's throttle, then the quota, which counts only requests that passed
/// everything else (a declared body over the limit is refused, 413, before it counts).
/// Bodies without a declared length are measured while they stream.
async fn admit<'s>(
    ctx: &Ctx<'s>,
    route: &'s Route,
    principal: Principal,
    key: Option<&'s ApiKey>,
    headers: &HeaderMap,
    out: &mut Outcome<'s>,
) -> Result<Permit<'s>, Refusal> {
    let store = &ctx.limits.store;
    let keyed = key.and_then(|k| Some((k, &ctx.snap.plans[k.plan?])));
    if let Some((k, plan)) = keyed
        && let Some(t) = plan
            .route_throttles
            .get(&route.index)
            .or(plan.throttle.as_ref())
    {
        match store.take(t, Some(&k.id)).await {
            Ok(s) => out.rate = Some((s.limit, s.remaining, s.reset)),
            Err(e) => {
                if matches!(e, LimitError::Throttled { .. }) {
                    plan.outcomes[1].inc();
                }
                return Err(limit_refusal(e, u64::from(t.spec.burst)));
            }
        }
    }
    if let Some(t) = &route.throttle {
        store
            .take(t, None)
            .await
            .map_err(|e| limit_refusal(e, u64::from(t.spec.burst)))?;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.snap.limits.max_body) {
        return Err(Refusal::PayloadTooLarge);
    }
    if let Some((k, plan)) = keyed {
        let now = time::OffsetDateTime::now_utc();
        match plan.quota {
            Some(q) => match store.count(&plan.name, &k.id, q, now).await {
                Ok(s) => out.rate = Some((s.limit, s.remaining, s.reset)),
                Err(e) => {
                    if matches!(e, LimitError::QuotaExceeded { .. }) {
                        plan.outcomes[2].inc();
                    }
                    return Err(limit_refusal(e, q.limit));
                }
            },
            // No quota: still counted (without a limit) so `/usage` reports the key's traffic.
            None => {
                let unlimited = QuotaSpec {
                    limit: u64::MAX,
                    period: Period::Day,
                };
                store
                    .count(&plan.name, &k.id, unlimited, now)
                    .await
                    .map_err(|e| limit_refusal(e, 0))?;
            }
        }
        plan.outcomes[0].inc();
    }
    Ok(Permit {
        route,
        principal,
        key,
    })
}

fn limit_refusal(e: LimitError, limit: u64) -> Refusal {
    match e {
        LimitError::Throttled { retry_after } => Refusal::Throttled { retry_after, limit },
        LimitError::QuotaExceeded { retry_after } => Refusal::QuotaExceeded { retry_after, limit },
        LimitError::Unavailable => Refusal::LimitsUnavailable,
    }
}

/// Phase 8: forward to the upstream, or answer with the route's fixed response. A request
/// asking to switch protocols (WebSocket) is forwarded with its `Upgrade` header; when the
/// upstream answers `101`, the client gets that `101` and the two connections are spliced
/// ([`crate::upgrade`]). Any other answer to it is passed on as usual.
async fn forward<'s>(
    ctx: &Ctx<'_>,
    permit: Permit<'s>,
    mut parts: Parts,
    body: ReqBody,
    out: &mut Outcome<'s>,
) -> Result<Response<ResponseBody>, Refusal> {
    let upstream = match &permit.route.integration {
        Integration::Respond(fixed) => {
            let mut resp = Response::new(Either::Left(Full::new(fixed.body.clone())));
            *resp.status_mut() = fixed.status;
            for (k, v) in &fixed.headers {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
            return Ok(resp);
        }
        Integration::Issuer(issuer, endpoint) => {
            return issuer
                .serve(*endpoint, Request::from_parts(parts, body), ctx.client_ip)
                .await
                .map_err(Refusal::OAuth);
        }
        Integration::Proxy(u) => u,
    };
    let upgrade = crate::upgrade::take_requested(&mut parts, &permit.route.upgrades);
    if upgrade.is_some() && upstream.protocol() != Protocol::Http1 {
        return Err(Refusal::UpgradeUnsupported);
    }
    let h = &mut parts.headers;
    crate::proxy::strip_hop_by_hop(h, upgrade.is_some());
    let trusted_peer = ctx
        .snap
        .trusted_proxies
        .contains(crate::clientip::canonical(ctx.conn.peer.ip()));
    let had_forwarded = crate::headers::sanitize_request(h, ctx.snap.allow_underscores);
    if had_forwarded && trusted_peer {
        h.insert(header::FORWARDED, forwarded_value(ctx));
    }
    let host = parts
        .uri
        .authority()
        .map(|a| HeaderValue::from_str(a.as_str()))
        .or_else(|| h.get(header::HOST).cloned().map(Ok));
    if let Some(Ok(host)) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
    forwarded_for(h, ctx);
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if ctx.conn.tls { "https" } else { "http" }),
    );
    h.insert(REQUEST_ID, ctx.request_id.clone());
    match (&permit.principal, &permit.route.auth) {
        (Principal::Jwt(id), _) => {
            for (k, v) in &id.upstream_headers {
                h.insert(k.clone(), v.clone());
            }
        }
        (Principal::SigV4(identity), RouteAuth::SigV4 { name, .. }) => {
            if let Ok(v) = HeaderValue::from_str(&identity.access_key_id) {
                h.insert(crate::auth::headers::PRINCIPAL, v);
            }
            if !identity.scopes.is_empty()
                && let Ok(v) = HeaderValue::from_str(&identity.scopes.join(" "))
            {
                h.insert(crate::auth::headers::SCOPES, v);
            }
            h.insert(crate::auth::headers::AUTHORIZER, name.clone());
        }
        (Principal::External(decision), RouteAuth::External { name, .. }) => {
            for (k, v) in &decision.context_headers {
                h.insert(k.clone(), v.clone());
            }
            h.insert(crate::auth::headers::AUTHORIZER, name.clone());
        }
        _ => {}
    }
    if let Some(key) = permit.key {
        h.insert(X_TOLLGATE_API_KEY_ID, key.id_header.clone());
    }
    if let Some(cert) = &ctx.conn.client_cert {
        h.insert(crate::tls::CLIENT_CERT_SUBJECT, cert.subject.clone());
        h.insert(crate::tls::CLIENT_CERT_SHA256, cert.sha256.clone());
    }
    let failure = FailureCell::default();
    let body = match body {
        ReqBody::Streaming(incoming) => Either::Left(
            GuardedBody::new(
                incoming,
                ctx.snap.limits.max_body,
                ctx.snap.limits.body_idle_timeout,
                failure.clone(),
            )
            .allowing_underscores(ctx.snap.allow_underscores),
        ),
        ReqBody::Buffered(bytes) => Either::Right(Full::new(bytes)),
    };
    let (mut resp, took) = upstream
        .forward(Request::from_parts(parts, body), &failure)
        .await?;
    out.upstream = Some(took);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = upgrade else {
            // Switching protocols unasked would hand the client's connection to the upstream.
            return Err(Refusal::BadGateway("upstream_unasked_101"));
        };
        if !client.granted_by(resp.headers()) {
            // Another protocol than the one asked for (and allowed) is not passed on.
            return Err(Refusal::BadGateway("upstream_other_protocol"));
        }
        let info = crate::upgrade::SpliceInfo {
            request_id: ctx.request_id.clone(),
            route: permit.route.key.clone(),
            idle_timeout: ctx.snap.limits.upgrade_idle_timeout,
        };
        ctx.upgrades
            .splice(client, hyper::upgrade::on(&mut resp), info);
        let (head, _) = resp.into_parts();
        return Ok(Response::from_parts(head, Either::Left(Full::default())));
    }
    Ok(resp.map(Either::Right))
}

/// Sets `x-forwarded-for` so that it ends with the client IP the gateway determined. From an
/// untrusted peer the peer is appended (anything the client wrote stays to its left, where an
/// upstream must not trust it); from a trusted proxy the entries the proxies added after the
/// client are dropped, so the list ends with the client. Entries are read as raw bytes: one
/// that is not text is dropped alone, never the line it is on.
fn forwarded_for(h: &mut HeaderMap, ctx: &Ctx<'_>) {
    let client = ctx.client_ip;
    let peer = crate::clientip::canonical(ctx.conn.peer.ip());
    let mut value = String::new();
    {
        // Entries borrow the request's header values; without one, nothing is allocated here.
        let mut entries: Vec<&str> = crate::clientip::forwarded_entries(h)
            .filter_map(|e| std::str::from_utf8(e).ok())
            .collect();
        if client != peer {
            // Drop what the trusted proxies added after the client, then the client's own
            // entry (written again below in canonical form: no port, IPv4-mapped as IPv4).
            while entries
                .last()
                .and_then(|e| crate::clientip::parse_forwarded_entry(e.as_bytes()))
                .is_some_and(|ip| ip != client && ctx.snap.trusted_proxies.contains(ip))
            {
                entries.pop();
            }
            if entries
                .last()
                .and_then(|e| crate::clientip::parse_forwarded_entry(e.as_bytes()))
                == Some(client)
            {
                entries.pop();
            }
        }
        for e in entries {
            value.push_str(e);
            value.push_str(", ");
        }
    }
    crate::clientip::push_ip(&mut value, client);
    if let Ok(v) = HeaderValue::try_from(value) {
        h.insert(X_FORWARDED_FOR, v);
    }
}

/// `Forwarded` (RFC 7239) as the gateway rewrites it for a trusted proxy's request: one element
/// naming the client the gateway determined, as `x-forwarded-for` ends with it.
fn forwarded_value(ctx: &Ctx<'_>) -> HeaderValue {
    let proto = if ctx.conn.tls { "https" } else { "http" };
    let v = match ctx.client_ip {
        IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
    };
    HeaderValue::try_from(v).expect("an address and a scheme are a valid header value")
}

/// The client's `x-request-id` when it is sane (1-128 of `[A-Za-z0-9._:-]`), else a new UUID.
fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= MAX_REQUEST_ID_LEN
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
        {
            return v.clone();
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("uuid is a valid header value")
}

/// One access-log line and the request metrics.
fn record(
    gw: &Gateway,
    ctx: &Ctx<'_>,
    out: &Outcome<'_>,
    method: &Method,
    path: &str,
    status: StatusCode,
    latency: Duration,
) {
    let route = out.route.map_or("$unmatched", |r| &*r.key);
    let m = gw.metrics();
    m.requests
        .with_label_values(&[route, crate::metrics::method_label(method), status.as_str()])
        .inc();
    let series = || m.request_duration.with_label_values(&[route]);
    match out.route {
        Some(r) => r
            .duration
            .get_or_init(series)
            .observe(latency.as_secs_f64()),
        None => series().observe(latency.as_secs_f64()),
    }
    if let Some(reason) = out.reason {
        m.denied.with_label_values(&[route, reason]).inc();
    }
    let authorizer = out.route.and_then(|r| match &r.auth {
        RouteAuth::Jwt { authorizer, .. } => Some(&**authorizer.name()),
        RouteAuth::External { authorizer, .. } => Some(&**authorizer.name()),
        RouteAuth::SigV4 { name, .. } => name.to_str().ok(),
        RouteAuth::None => None,
    });
    let principal = match &out.principal {
        Some(Principal::Jwt(id)) => id.subject.as_deref(),
        Some(Principal::SigV4(id)) => Some(id.access_key_id.as_str()),
        _ => None,
    };
    tracing::info!(
        target: "tollgate::access",
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        client_ip = %ctx.client_ip,
        method = %method,
        path,
        route,
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        upstream_ms = out.upstream.map(|d| d.as_secs_f64() * 1000.0),
        authorizer,
        principal,
        api_key_id = out.key.map(|k| &*k.id),
        reason = out.reason,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        assert_eq!(request_id(&h).len(), 36);
        h.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(request_id(&h).len(), 36);
    }
}
