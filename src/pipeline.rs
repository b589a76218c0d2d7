//! The request pipeline: every request runs these phases in the contract's order, and the first
//! that refuses answers. Each phase is a plain function that takes the previous phase's output
//! by value and returns the value the next one needs, so no phase can be skipped or reordered
//! without the compiler noticing:
//!
//! ```text
//! check_request ─▶ route ─▶ (CORS preflight) ─▶ check_policy ─▶ authenticate ─▶ authorize
//!    Request       Routed                        InPolicy        Principal      Authorized
//!
//!   ─▶ api_key ─▶ admit ─▶ forward
//!      Keyed      Permit   Response
//! ```
//!
//! `admit` runs the throttles (plan, route) and then the quota, so only requests that passed
//! every check count. The client IP is worked out once, before the phases, from the peer and
//! the trusted proxies.
//!
//! [`handle`] wraps the pipeline with what every answer gets: `x-request-id`, CORS headers for
//! allowed origins, one access-log line and the request metrics (`crate::logs::access`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};

use crate::answer::ResponseBody;
use crate::apikeys::{ApiKey, KeyError};
use crate::auth::Principal;
use crate::body::{ClientBody, FailureCell, GuardedBody, ReqBody};
use crate::error::{BadRequest, RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET, Refusal};
use crate::forwarding::{Admitted, Origin, REQUEST_ID};
use crate::gateway::Gateway;
use crate::limits::{LimitError, LimitState, Period, QuotaSpec};
use crate::logs::access::{Access, Outcome};
use crate::proxy::{Protocol, UpstreamError};
use crate::service::{ConnInfo, Handler};
use crate::snapshot::{Api, Integration, Plan, Route, RouteAuth, Snapshot};
use crate::telemetry::{RequestTrace, ServerSpan};
use crate::upgrade::Upgrades;

/// Longest client-supplied request id kept; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

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

/// What every phase may consult about the request in hand.
struct Ctx<'s> {
    snap: &'s Snapshot,
    limits: &'s LimitState,
    upgrades: &'s Arc<Upgrades>,
    conn: &'s ConnInfo,
    client_ip: IpAddr,
    request_id: HeaderValue,
    /// The request's trace, when tracing is on.
    trace: Option<&'s RequestTrace>,
}

/// Serves one request: the phases, then what every answer gets. Never fails: a refusal is an
/// answer. Needs no socket: `conn` may describe any client.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<ClientBody>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let snap = gw.snapshot();
    let trace = snap.tracing.as_ref().map(|t| {
        t.start(req.method(), req.headers(), || {
            snap.trusted_proxies.contains(conn.peer.ip())
        })
    });
    // What only a sampled request's server span reports, taken before the pipeline owns it.
    let seen = trace.as_ref().filter(|t| t.sampled).map(|_| Seen::of(&req));
    let ctx = Ctx {
        snap: &snap,
        limits: gw.limits(),
        upgrades: gw.upgrades(),
        conn: &conn,
        client_ip: crate::clientip::client_ip(conn.peer.ip(), req.headers(), &snap.trusted_proxies),
        request_id: request_id(req.headers(), trace.as_ref()),
        trace: trace.as_ref(),
    };
    let method = req.method().clone();
    // A reference-counted clone (hyper's URI shares the read buffer), for the access log.
    let uri = req.uri().clone();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut out = Outcome::default();
    // Boxed: the phases' state (the upstream call, an external authorizer's, Redis's) is many
    // KiB, and the transport moves the request's future into place before polling it; a box
    // is cheaper than copying that on every request (BENCHMARKS.md, "Issue 20").
    let phases = Box::pin(pipeline(&ctx, req, &mut out));
    let result = match &trace {
        Some(t) => t.scope(phases).await,
        None => phases.await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(refusal) => {
            out.reason = Some(refusal.reason());
            let mut resp = refusal.into_response();
            if let Some(t) = &trace {
                // The trace of a refusal, for a client whose own request id was kept.
                resp.headers_mut().insert(TRACERESPONSE, t.traceparent());
            }
            resp
        }
    };
    resp.headers_mut()
        .insert(REQUEST_ID, ctx.request_id.clone());
    if let Some((limit, remaining, reset)) = out.rate
        && out.reason.is_none()
    {
        let h = resp.headers_mut();
        h.insert(RATELIMIT_LIMIT, HeaderValue::from(limit));
        h.insert(RATELIMIT_REMAINING, HeaderValue::from(remaining));
        h.insert(RATELIMIT_RESET, HeaderValue::from(reset));
    }
    // A request refused before its API was chosen gets the default API's CORS headers.
    let api = out.api.unwrap_or(&snap.apis[0]);
    if let (Some(cors), Some(origin)) = (&api.cors, &origin) {
        cors.add_headers(origin, resp.headers_mut());
    }
    let access = Access {
        request_id: &ctx.request_id,
        client_ip: ctx.client_ip,
        method: &method,
        path: uri.path(),
        status: resp.status(),
        latency: started.elapsed(),
        trace_id: trace.as_ref().map(RequestTrace::trace_id_hex),
    };
    crate::logs::access::record(gw.metrics(), &access, &out);
    if let (Some(t), Some(tracing), Some(seen)) = (&trace, &snap.tracing, seen) {
        let span = server_span(&ctx, &method, &seen, &access, &out);
        t.finish(tracing, span);
    }
    resp
}

/// `traceresponse` (W3C Trace Context level 2): the gateway's span of a refused request.
const TRACERESPONSE: http::HeaderName = http::HeaderName::from_static("traceresponse");

/// What a sampled request's server span needs from the request head.
struct Seen {
    host: Option<String>,
    user_agent: Option<HeaderValue>,
    version: http::Version,
}

impl Seen {
    fn of(req: &Request<ClientBody>) -> Seen {
        let host = req.uri().host().map(str::to_owned).or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = h.parse().ok()?;
            Some(authority.host().to_owned())
        });
        Seen {
            host,
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            version: req.version(),
        }
    }
}

/// The server span of an answered request: named by its route key (the method alone when no
/// route matched), with the HTTP semantic-convention attributes and tollgate's own. Never a
/// credential: the caller is named by its client id and the API key by its id.
fn server_span(
    ctx: &Ctx<'_>,
    method: &Method,
    seen: &Seen,
    access: &Access<'_>,
    out: &Outcome<'_>,
) -> ServerSpan {
    use crate::telemetry::bounded;
    use opentelemetry::KeyValue;
    let mut a = Vec::with_capacity(20);
    // A method outside the standard ones is `_OTHER` (OpenTelemetry's rule), so that a client
    // cannot mint span names; what it sent is kept, shortened, beside.
    let known = STANDARD_METHODS.contains(method);
    if known {
        a.push(KeyValue::new(
            "http.request.method",
            method.as_str().to_owned(),
        ));
    } else {
        a.push(KeyValue::new("http.request.method", "_OTHER"));
        a.push(KeyValue::new(
            "http.request.method_original",
            bounded(method.as_str()),
        ));
    }
    a.push(KeyValue::new(
        "http.response.status_code",
        i64::from(access.status.as_u16()),
    ));
    a.push(KeyValue::new(
        "url.scheme",
        if ctx.conn.tls { "https" } else { "http" },
    ));
    a.push(KeyValue::new(
        "network.protocol.version",
        match seen.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    ));
    a.push(KeyValue::new("client.address", ctx.client_ip.to_string()));
    a.push(KeyValue::new(
        "network.peer.address",
        ctx.conn.peer.ip().to_string(),
    ));
    if let Some(host) = &seen.host {
        a.push(KeyValue::new("server.address", bounded(host)));
    }
    if let Some(ua) = seen.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
        a.push(KeyValue::new("user_agent.original", bounded(ua)));
    }
    if let Some(path) = &out.path {
        a.push(KeyValue::new("url.path", bounded(path.path())));
    }
    let name = match out.route {
        Some(r) => {
            if let Some((_, template)) = r.key.split_once(' ') {
                a.push(KeyValue::new("http.route", template.to_owned()));
            }
            a.push(KeyValue::new("tollgate.route", r.key.clone()));
            std::borrow::Cow::Owned(r.key.to_string())
        }
        None if known => std::borrow::Cow::Owned(method.as_str().to_owned()),
        None => std::borrow::Cow::Borrowed("HTTP"),
    };
    if let Some(api) = out.api {
        a.push(KeyValue::new("tollgate.api", api.name.to_string()));
        if let Some(stage) = &api.stage {
            a.push(KeyValue::new("tollgate.stage", stage.to_string()));
        }
    }
    if let Some(authorizer) = out.route.and_then(crate::logs::access::authorizer_name) {
        a.push(KeyValue::new("tollgate.authorizer", authorizer.to_owned()));
    }
    if let Some(id) = out.principal.as_ref().and_then(Principal::client_id) {
        a.push(KeyValue::new("tollgate.client_id", id.to_owned()));
    }
    if let Some(key) = out.key {
        a.push(KeyValue::new("tollgate.api_key_id", key.id.to_string()));
    }
    if let Ok(id) = ctx.request_id.to_str() {
        a.push(KeyValue::new("tollgate.request_id", id.to_owned()));
    }
    let reason = out.reason.map(crate::error::Reason::as_str);
    if let Some(reason) = reason {
        a.push(KeyValue::new("tollgate.deny_reason", reason));
    }
    let error = access.status.is_server_error().then(|| {
        a.push(KeyValue::new(
            "error.type",
            reason.unwrap_or(access.status.as_str()).to_owned(),
        ));
        std::borrow::Cow::Borrowed(reason.unwrap_or("upstream answered with a server error"))
    });
    ServerSpan {
        name,
        attributes: a,
        error,
        elapsed: access.latency,
    }
}

/// The phases, in order.
async fn pipeline<'s>(
    ctx: &Ctx<'s>,
    req: Request<ClientBody>,
    out: &mut Outcome<'s>,
) -> Result<Response<ResponseBody>, Refusal> {
    let snap = ctx.snap;
    let (parts, body) = req.into_parts();
    let mut body = ReqBody::Streaming(body);
    if snap.selector.is_trivial() {
        // One API serves every request: even a request refused before routing is its.
        out.api = Some(&snap.apis[0]);
    }
    let request = check_request(snap, parts)?;
    let routed = route(ctx, request, out)?;
    out.route = Some(routed.route);
    if let Some(cors) = &routed.api.cors
        && let Some(preflight) = cors.preflight(&routed.parts)
    {
        return Ok(preflight);
    }
    let in_policy = check_policy(ctx, routed)?;
    let principal = authenticate(ctx, &in_policy, &mut body).await?;
    out.principal = Some(principal.clone());
    let authorized = authorize(in_policy, principal)?;
    let keyed = api_key(snap, authorized)?;
    out.key = keyed.key;
    let permit = admit(ctx, keyed, out).await?;
    forward(ctx, permit, body, out).await
}

/// A request that may be looked at: it has a host, a method that is not a case variant of a
/// standard one, and each credential header at most once.
struct Checked(Parts);

/// A request matched to its API and route, its path in canonical form (without the API's base
/// path when the API strips it).
struct Routed<'s> {
    api: &'s Api,
    route: &'s Route,
    /// The request, its URI's path canonical.
    parts: Parts,
    /// The URI as the client sent it: a SigV4 signature covers exactly that spelling.
    sent: Uri,
}

/// A routed request whose client passed the route's resource policy.
struct InPolicy<'s>(Routed<'s>);

/// A request whose caller the route's authorizer verified and whose scopes it requires.
struct Authorized<'s> {
    api: &'s Api,
    route: &'s Route,
    parts: Parts,
    principal: Principal,
}

/// An authorized request with its API key (on routes that require one) and the key's plan
/// for the route's API (when the key has plans).
struct Keyed<'s> {
    authorized: Authorized<'s>,
    key: Option<&'s ApiKey>,
    plan: Option<&'s Plan>,
}

/// Permission to forward: a request that passed every check, throttles and quota included.
struct Permit<'s> {
    api: &'s Api,
    route: &'s Route,
    parts: Parts,
    principal: Principal,
    key: Option<&'s ApiKey>,
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

/// Phase 1: refuses (400) requests that cannot be decided safely, before anything looks at
/// them: no host (HTTP/1.1 requires one), two `Host` headers, a `Host` that names another host
/// than the target's authority (the API is chosen by one name only), a host that is not a name
/// or IP literal with a numeric port (`user@host`, escapes, spaces), a standard method in
/// another case (`get`, `Delete`), and a credential header sent twice (one copy would be
/// checked and another one could be read by the upstream).
fn check_request(snap: &Snapshot, req: Parts) -> Result<Checked, Refusal> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest(BadRequest::Host));
    }
    let named = match (req.uri.authority(), host) {
        (None, None) => return Err(Refusal::BadRequest(BadRequest::NoHost)),
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(Refusal::BadRequest(BadRequest::Host));
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
    };
    // With several APIs the route phase parses the host anyway (and refuses it the same way).
    if snap.selector.is_trivial() && crate::apis::request_host(named).is_err() {
        return Err(Refusal::BadRequest(BadRequest::Host));
    }
    let m = req.method.as_str();
    if !STANDARD_METHODS.contains(&req.method)
        && STANDARD_METHODS
            .iter()
            .any(|s| s.as_str().eq_ignore_ascii_case(m))
    {
        return Err(Refusal::BadRequest(BadRequest::MethodCase));
    }
    for name in &snap.credential_headers {
        let mut values = req.headers.get_all(name).iter();
        if values.next().is_some() && values.next().is_some() {
            return Err(Refusal::BadRequest(BadRequest::DuplicateCredential));
        }
    }
    Ok(Checked(req))
}

/// Phase 2: the API, then the route, decided on the canonical path ([`crate::canonical`]).
/// The API is the one the request's host and the longest matching base path select
/// ([`crate::apis`]); the route is looked up in its table with the base path removed. Refuses
/// (400) a path that cannot be made canonical, and one holding a spelling (`%2F`, `//`, `;`)
/// its route does not allow; 421 when the host selects other APIs than the TLS connection's
/// SNI name; 404 without an API or a route. A CORS preflight is routed by the method it asks
/// about. Records the API in `out` as soon as it is known.
fn route<'s>(
    ctx: &Ctx<'s>,
    Checked(mut parts): Checked,
    out: &mut Outcome<'s>,
) -> Result<Routed<'s>, Refusal> {
    let snap = ctx.snap;
    let sent = parts.uri.clone();
    let canonical = crate::canonical::canonicalize(sent.path())
        .map_err(|e| Refusal::BadRequest(BadRequest::Path(e)))?;
    let (api, base_len) = if snap.selector.is_trivial() {
        (&snap.apis[0], 0)
    } else {
        let raw = match parts.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => parts
                .headers
                .get(header::HOST)
                .map_or(&b""[..], |h| h.as_bytes()),
        };
        let selection = snap
            .selector
            .select_host(raw, &canonical.match_form)
            .map_err(|_| Refusal::BadRequest(BadRequest::Host))?;
        if let Some(sni) = &ctx.conn.sni
            && snap.selector.group(Some(sni.as_bytes())) != selection.group
        {
            return Err(Refusal::Misdirected);
        }
        let (index, base_len) = selection.api.ok_or(Refusal::NoApi)?;
        (&snap.apis[index], base_len)
    };
    out.api = Some(api);
    let preflight = api.cors.as_ref().and_then(|c| c.preflight_method(&parts));
    let method = preflight.as_ref().unwrap_or(&parts.method);
    let route = api
        .table
        .find(method, or_root(&canonical.match_form[base_len..]))
        .map(|i| &snap.routes[i])
        .ok_or(Refusal::NotFound)?;
    if let Some(spelling) = canonical.exceptions.not_in(route.allow_in_path) {
        return Err(Refusal::BadRequest(BadRequest::Spelling(spelling)));
    }
    let strip = if api.strip_base_path { base_len } else { 0 };
    if canonical.changed() || strip > 0 {
        let path = or_root(&canonical.path[strip..]);
        let pq = match sent.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let mut uri = http::uri::Parts::from(sent.clone());
        uri.path_and_query = Some(
            http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq))
                .map_err(|_| Refusal::BadRequest(BadRequest::Uri))?,
        );
        parts.uri = Uri::from_parts(uri).map_err(|_| Refusal::BadRequest(BadRequest::Uri))?;
    }
    if ctx.trace.is_some_and(|t| t.sampled) {
        out.path = Some(parts.uri.clone());
    }
    Ok(Routed {
        api,
        route,
        parts,
        sent,
    })
}

/// The path the rest of a base path leaves: itself, or `/` when nothing is left.
fn or_root(rest: &str) -> &str {
    if rest.is_empty() { "/" } else { rest }
}

/// Phase 3 (after a CORS preflight was answered): the route's resource policy: a verified
/// client certificate where the route requires one, and the client IP inside the policy (403
/// otherwise).
fn check_policy<'s>(ctx: &Ctx<'_>, routed: Routed<'s>) -> Result<InPolicy<'s>, Refusal> {
    let route = routed.route;
    if route.require_client_cert && ctx.conn.client_cert.is_none() {
        return Err(Refusal::ClientCertRequired);
    }
    match &route.policy {
        Some(p) if !p.permits(ctx.client_ip) => Err(Refusal::PolicyDenied),
        _ => Ok(InPolicy(routed)),
    }
}

/// Phase 4: the route's authorizer establishes who is calling. Refuses 401 without
/// credentials or with a bad token, 403 for a bad signature or an external deny, 500 when the
/// external authorizer gives no answer. A SigV4 route's body is read whole (bounded) first,
/// since the signature covers its hash.
async fn authenticate(
    ctx: &Ctx<'_>,
    InPolicy(routed): &InPolicy<'_>,
    body: &mut ReqBody,
) -> Result<Principal, Refusal> {
    let parts = &routed.parts;
    match &routed.route.auth {
        RouteAuth::None => Ok(Principal::Anonymous),
        RouteAuth::SigV4 { verifier, name, .. } => {
            if !crate::auth::sigv4::is_signed(parts) {
                return Err(Refusal::SigV4(crate::auth::sigv4::SigV4Error::Unsigned));
            }
            let limits = &ctx.snap.limits;
            let taken = std::mem::replace(body, ReqBody::Buffered(bytes::Bytes::new()));
            let bytes = taken
                .collect(limits.max_body as usize, limits.body_idle_timeout)
                .await
                .map_err(Refusal::Body)?;
            *body = ReqBody::Buffered(bytes.clone());
            let identity = verifier
                .verify_path(
                    parts,
                    routed.sent.path(),
                    &bytes,
                    std::time::SystemTime::now(),
                )
                .map_err(Refusal::SigV4)?;
            Ok(Principal::SigV4 {
                identity: Arc::new(identity),
                authorizer: name.clone(),
            })
        }
        RouteAuth::External { authorizer, name } => {
            let request_id = ctx.request_id.to_str().unwrap_or("");
            let decision = authorizer
                .authorize(parts, &routed.route.key, ctx.client_ip, request_id)
                .await
                .map_err(Refusal::External)?;
            Ok(Principal::External {
                decision,
                authorizer: name.clone(),
            })
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

/// Phase 5: the verified caller must hold at least one of the route's scopes (403). Kept apart
/// from [`authenticate`] so that a refused caller is still named in the access log.
fn authorize<'s>(
    InPolicy(routed): InPolicy<'s>,
    principal: Principal,
) -> Result<Authorized<'s>, Refusal> {
    let route = routed.route;
    match &route.auth {
        RouteAuth::Jwt {
            scopes,
            insufficient_scope,
            ..
        } if !principal.has_any_scope(scopes) => {
            Err(Refusal::InsufficientScope(Some(insufficient_scope.clone())))
        }
        RouteAuth::SigV4 { scopes, .. } if !principal.has_any_scope(scopes) => {
            Err(Refusal::InsufficientScope(None))
        }
        RouteAuth::None
        | RouteAuth::External { .. }
        | RouteAuth::Jwt { .. }
        | RouteAuth::SigV4 { .. } => Ok(Authorized {
            api: routed.api,
            route,
            parts: routed.parts,
            principal,
        }),
    }
}

/// Phase 6: the API key, on routes that require one, and the key's usage plan for the route's
/// API. Refuses (403) a missing, unknown or disabled key, and a key whose plans all cover
/// other APIs. Routes that do not require a key ignore one.
fn api_key<'s>(snap: &'s Snapshot, authorized: Authorized<'s>) -> Result<Keyed<'s>, Refusal> {
    if !authorized.route.api_key_required {
        return Ok(Keyed {
            authorized,
            key: None,
            plan: None,
        });
    }
    let table = snap
        .keys
        .as_ref()
        .ok_or(Refusal::ApiKey(KeyError::Unknown))?;
    let key = table
        .lookup(&authorized.parts.headers)
        .map_err(Refusal::ApiKey)?;
    // A key without a plan may call every API, as before plans were bound to APIs.
    let plan = match &*key.plans {
        [] => None,
        plans => Some(
            plans
                .iter()
                .map(|&i| &snap.plans[i])
                .find(|p| p.covers(authorized.route.api))
                .ok_or(Refusal::ApiKey(KeyError::NotForApi))?,
        ),
    };
    Ok(Keyed {
        authorized,
        key: Some(key),
        plan,
    })
}

/// Phase 7: admission, in the contract's order: the key's plan throttle (or its per-route
/// throttle), the route's throttle, then the quota, which counts only requests that passed
/// everything else (a declared body over the limit is refused, 413, before it counts).
/// Bodies without a declared length are measured while they stream.
async fn admit<'s>(
    ctx: &Ctx<'s>,
    Keyed {
        authorized,
        key,
        plan,
    }: Keyed<'s>,
    out: &mut Outcome<'s>,
) -> Result<Permit<'s>, Refusal> {
    let Authorized {
        api,
        route,
        parts,
        principal,
    } = authorized;
    let store = &ctx.limits.store;
    let keyed = key.zip(plan);
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
                    plan.outcomes.throttled.inc();
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
    // The gateway-wide bucket last among the throttles, and before the quota counts, so that a
    // request it refuses does not use up the key's quota.
    if let Some(t) = &ctx.snap.gateway_throttle {
        store.take(t, None).await.map_err(|e| match e {
            LimitError::Throttled { retry_after } => Refusal::GatewayThrottled {
                retry_after,
                limit: u64::from(t.spec.burst),
            },
            other => limit_refusal(other, u64::from(t.spec.burst)),
        })?;
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.snap.limits.max_body) {
        return Err(Refusal::Body(crate::body::BodyFailure::TooLarge));
    }
    if let Some((k, plan)) = keyed {
        let now = time::OffsetDateTime::now_utc();
        match plan.quota {
            Some(q) => match store.count(&plan.name, &k.id, q, now).await {
                Ok(s) => out.rate = Some((s.limit, s.remaining, s.reset)),
                Err(e) => {
                    if matches!(e, LimitError::QuotaExceeded { .. }) {
                        plan.outcomes.quota_exceeded.inc();
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
        plan.outcomes.admitted.inc();
    }
    Ok(Permit {
        api,
        route,
        parts,
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

/// Phase 8: forward to the upstream, or answer with the route's fixed response or issuer
/// endpoint. A request asking to switch protocols (WebSocket) is forwarded with its `Upgrade`
/// header; when the upstream answers `101`, the client gets that `101` and the two connections
/// are spliced ([`crate::upgrade`]). Any other answer to it is passed on as usual.
async fn forward<'s>(
    ctx: &Ctx<'_>,
    permit: Permit<'s>,
    body: ReqBody,
    out: &mut Outcome<'s>,
) -> Result<Response<ResponseBody>, Refusal> {
    let Permit {
        api,
        route,
        mut parts,
        principal,
        key,
    } = permit;
    let upstream = match &route.integration {
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
    let upgrade = crate::upgrade::take_requested(&mut parts, &route.upgrades);
    if upgrade.is_some() && upstream.protocol() != Protocol::Http1 {
        return Err(Refusal::UpgradeUnsupported);
    }
    let origin = Origin {
        client_ip: ctx.client_ip,
        peer: ctx.conn.peer.ip(),
        tls: ctx.conn.tls,
        trusted_proxies: &ctx.snap.trusted_proxies,
        request_id: &ctx.request_id,
        client_cert: ctx.conn.client_cert.as_ref(),
    };
    let admitted = Admitted {
        principal: &principal,
        key,
        api,
    };
    let allow_underscores = ctx.snap.allow_underscores;
    crate::forwarding::prepare(
        &mut parts,
        &origin,
        &admitted,
        allow_underscores,
        upgrade.is_some(),
    );
    let mut span = crate::telemetry::child(opentelemetry::trace::SpanKind::Client, || {
        format!("upstream {}", upstream.name())
    });
    if let (Some(trace), Some(tracing)) = (ctx.trace, &ctx.snap.tracing) {
        trace.propagate(
            &mut parts.headers,
            span.as_ref().map(crate::telemetry::ChildSpan::id),
            tracing.xray(),
        );
    }
    let failure = FailureCell::default();
    let limits = &ctx.snap.limits;
    let body = match body {
        ReqBody::Streaming(incoming) => Either::Left(
            GuardedBody::new(
                incoming,
                limits.max_body,
                limits.body_idle_timeout,
                failure.clone(),
            )
            .allowing_underscores(allow_underscores),
        ),
        ReqBody::Buffered(bytes) => Either::Right(Full::new(bytes)),
    };
    let (mut resp, took) = upstream
        .forward(Request::from_parts(parts, body), &failure, span.as_mut())
        .await?;
    drop(span);
    out.upstream = Some(took);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = upgrade else {
            // Switching protocols unasked would hand the client's connection to the upstream.
            return Err(Refusal::Upstream(UpstreamError::UnaskedSwitch));
        };
        if !client.granted_by(resp.headers()) {
            // Another protocol than the one asked for (and allowed) is not passed on.
            return Err(Refusal::Upstream(UpstreamError::OtherProtocol));
        }
        let info = crate::upgrade::SpliceInfo {
            request_id: ctx.request_id.clone(),
            route: route.key.clone(),
            idle_timeout: limits.upgrade_idle_timeout,
        };
        ctx.upgrades
            .splice(client, hyper::upgrade::on(&mut resp), info);
        let (head, _) = resp.into_parts();
        return Ok(Response::from_parts(head, Either::Left(Full::default())));
    }
    Ok(resp.map(Either::Right))
}

/// The client's `x-request-id` when it is sane (1-128 of `[A-Za-z0-9._:-]`), else the trace id
/// of a trace the gateway started (when tracing is on), else a new UUID.
fn request_id(h: &HeaderMap, trace: Option<&RequestTrace>) -> HeaderValue {
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
    // A continued trace spans several requests: its id would not tell them apart.
    if let Some(t) = trace.filter(|t| t.is_root()) {
        return HeaderValue::from_str(t.trace_id_hex()).expect("hex is a valid header value");
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("uuid is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, None), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        assert_eq!(request_id(&h, None).len(), 36);
        h.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(request_id(&h, None).len(), 36);
    }
}
