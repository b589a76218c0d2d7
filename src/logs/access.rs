//! The access record: what one request did, written as one `tollgate::access` log line and
//! counted in the request metrics, whatever the pipeline answered.

use std::net::IpAddr;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, StatusCode};

use crate::apikeys::ApiKey;
use crate::auth::Principal;
use crate::error::Reason;
use crate::metrics::Metrics;
use crate::snapshot::{Api, Route, RouteAuth};

/// What the phases found out about a request, filled in as they run.
#[derive(Default)]
pub(crate) struct Outcome<'s> {
    /// The API, once chosen.
    pub(crate) api: Option<&'s Api>,
    /// The route, once matched.
    pub(crate) route: Option<&'s Route>,
    /// The caller, once authenticated (also when the scope check then refused).
    pub(crate) principal: Option<Principal>,
    /// The API key, once checked.
    pub(crate) key: Option<&'s ApiKey>,
    /// `ratelimit-*` values (limit, remaining, reset) for an admitted keyed request.
    pub(crate) rate: Option<(u64, u64, u64)>,
    /// How long the upstream took to answer with a head.
    pub(crate) upstream: Option<Duration>,
    /// Why the request was refused, if it was.
    pub(crate) reason: Option<Reason>,
    /// The routed request's canonical URI, kept for a sampled request's server span.
    pub(crate) path: Option<http::Uri>,
}

/// The `api` and `route` label of a request refused before either was chosen.
const UNMATCHED: &str = "$unmatched";

/// The request and its answer, as the access line shows them.
pub(crate) struct Access<'a> {
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) client_ip: IpAddr,
    pub(crate) method: &'a Method,
    /// The path as the client sent it.
    pub(crate) path: &'a str,
    pub(crate) status: StatusCode,
    pub(crate) latency: Duration,
    /// The trace id (hex) when tracing is on.
    pub(crate) trace_id: Option<&'a str>,
}

/// Writes the access line and updates `tollgate_requests_total`, the duration histogram and,
/// for a refusal, `tollgate_denied_total{reason}`. Requests refused before an API or a route
/// was chosen have the label `$unmatched` there.
pub(crate) fn record(m: &Metrics, a: &Access<'_>, out: &Outcome<'_>) {
    let route = out.route.map_or(UNMATCHED, |r| &*r.key);
    let api = out.api.map_or(UNMATCHED, |a| &*a.name);
    let stage = out.api.and_then(|a| a.stage.as_deref()).unwrap_or("");
    m.requests
        .with_label_values(&[
            api,
            stage,
            route,
            crate::metrics::method_label(a.method),
            a.status.as_str(),
        ])
        .inc();
    let series = || m.request_duration.with_label_values(&[api, stage, route]);
    let latency = a.latency.as_secs_f64();
    match out.route {
        Some(r) => r.duration.get_or_init(series).observe(latency),
        None => series().observe(latency),
    }
    let reason = out.reason.map(Reason::as_str);
    if let Some(reason) = reason {
        m.denied
            .with_label_values(&[api, stage, route, reason])
            .inc();
    }
    let authorizer = out.route.and_then(authorizer_name);
    tracing::info!(
        target: "tollgate::access",
        request_id = a.request_id.to_str().unwrap_or("-"),
        client_ip = %a.client_ip,
        method = %a.method,
        path = a.path,
        api,
        stage = (!stage.is_empty()).then_some(stage),
        route,
        status = a.status.as_u16(),
        latency_ms = latency * 1000.0,
        upstream_ms = out.upstream.map(|d| d.as_secs_f64() * 1000.0),
        authorizer,
        principal = out.principal.as_ref().and_then(Principal::log_name),
        api_key_id = out.key.map(|k| &*k.id),
        reason,
        trace_id = a.trace_id,
    );
}

/// The name of the route's authorizer; `None` for an open route.
pub(crate) fn authorizer_name(r: &Route) -> Option<&str> {
    match &r.auth {
        RouteAuth::Jwt { authorizer, .. } => Some(&**authorizer.name()),
        RouteAuth::External { authorizer, .. } => Some(&**authorizer.name()),
        RouteAuth::SigV4 { name, .. } => name.to_str().ok(),
        RouteAuth::None => None,
    }
}
