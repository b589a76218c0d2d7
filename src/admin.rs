//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/config`, `POST /reload`,
//! `POST /issuer/rotate`, `GET /usage`. Loopback by default; when a token is configured every
//! request must carry it as a bearer token.
//!
//! Without a token, the listener still refuses what only a browser would send, so that a web
//! page the operator happens to visit cannot use their browser against it (see
//! `browser_guard`): cross-site requests (an `Origin` header, or a `Sec-Fetch-Site` other than
//! `none`/`same-origin`), DNS rebinding (a `Host` that is neither the bind address nor an
//! `admin.hosts` name), and state changes sent the way an HTML form or a no-preflight `fetch`
//! can send them. A request carrying the right token is not checked for any of this: a browser
//! never adds a bearer token by itself.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body, Incoming};

use crate::config::units::{AdminHost, normalise_name};
use crate::gateway::Gateway;
use crate::snapshot::AdminSettings;

/// Paths whose `POST` changes state: they also refuse a body a browser form could send.
const MUTATING_PATHS: [&str; 2] = ["/reload", "/issuer/rotate"];

/// Content types a browser sends cross-site without a CORS preflight (what an HTML form or a
/// `no-cors` `fetch` can send): a state-changing request carrying one is refused.
const SIMPLE_CONTENT_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// `Sec-Fetch-Site` values that are not cross-site: typed in the address bar (`none`), or from
/// a page of the admin listener's own origin (whose `Host` is checked separately).
const ALLOWED_FETCH_SITES: [&str; 2] = ["none", "same-origin"];

/// The only name (besides `admin.hosts`) accepted for a loopback or wildcard bind: browsers
/// resolve it to loopback themselves, so no page can rebind it.
const LOOPBACK_NAME: &str = "localhost";

/// The port a `Host` without one means (the admin listener speaks plain HTTP).
const DEFAULT_HTTP_PORT: u16 = 80;

/// Splits a `Host` value (or URI authority) into host and port. Refuses an empty host, a bare
/// IPv6 address, userinfo and a port that is not a number.
fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || (host.contains(':') && !authority.starts_with('[')) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Whether a request naming `authority` (its `Host`) may be served by an admin listener bound
/// to `bind`. Accepted: an IP literal that is the bind address (any IP literal when bound to
/// `0.0.0.0` or `::`, as kubelet probes send `Host: <pod IP>:<port>`), `localhost` when bound to
/// loopback or a wildcard — both only with the listener's port — and any `admin.hosts` entry,
/// with any port (the operator vouches for the name). An IP literal cannot be a rebinding
/// attack: the browser connects to exactly that address. When `bind`'s port is 0 (the OS picks
/// one), the port is not checked.
pub fn host_allowed(authority: &str, bind: SocketAddr, hosts: &[AdminHost]) -> bool {
    let Some((host, port)) = split_host(authority) else {
        return false;
    };
    let port_ok = bind.port() == 0 || port.unwrap_or(DEFAULT_HTTP_PORT) == bind.port();
    let bound = bind.ip().to_canonical();
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return (port_ok && (bound.is_unspecified() || ip == bound))
            || hosts.contains(&AdminHost::Ip(ip));
    }
    let name = normalise_name(host);
    if port_ok && name == LOOPBACK_NAME && (bound.is_loopback() || bound.is_unspecified()) {
        return true;
    }
    hosts
        .iter()
        .any(|h| matches!(h, AdminHost::Name(n) if *n == name))
}

/// Checks a request that did not present the admin token for signs that a browser sent it on
/// a web page's behalf. Runs before routing, on every such request (when `admin.token` is set,
/// a request without it is refused 401 before this). Returns why it refuses, for the log:
/// - any `Origin` header (browsers send one on cross-origin requests and on every `POST`; curl,
///   Prometheus and kubelet never do);
/// - a `Sec-Fetch-Site` other than `none` or `same-origin` (a cross-site `GET`, e.g. an image);
/// - a `Host` (or absolute-form authority) not allowed by [`host_allowed`], or sent twice;
/// - on a state-changing `POST` ([`MUTATING_PATHS`]), a form-like content type
///   ([`SIMPLE_CONTENT_TYPES`]), or a body without any content type.
///
/// A request without `Host` (HTTP/1.0) is not a browser's and passes the host check.
fn browser_guard<B: Body>(req: &Request<B>, admin: &AdminSettings) -> Result<(), &'static str> {
    let headers = req.headers();
    if headers.contains_key(header::ORIGIN) {
        return Err("origin header");
    }
    for v in headers.get_all("sec-fetch-site") {
        let site = v.to_str().unwrap_or("").trim();
        if !ALLOWED_FETCH_SITES
            .iter()
            .any(|a| site.eq_ignore_ascii_case(a))
        {
            return Err("cross-site sec-fetch-site");
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("host header sent twice");
    }
    let named = host
        .map(|h| h.to_str().map_err(|_| ()))
        .into_iter()
        .chain(req.uri().authority().map(|a| Ok(a.as_str())));
    for authority in named {
        match authority {
            Ok(a) if host_allowed(a, admin.bind, &admin.hosts) => {}
            _ => return Err("host not allowed"),
        }
    }
    if req.method() == Method::POST && MUTATING_PATHS.contains(&req.uri().path()) {
        form_like_body(headers, req.body())?;
    }
    Ok(())
}

/// Refuses a body a browser could send cross-site without a preflight: a
/// [`SIMPLE_CONTENT_TYPES`] content type (even with an empty body, as an empty form sends), or
/// a non-empty body with no content type (a `fetch` of a `Blob`). No body and no content type
/// (`curl -X POST`), or any other content type (`application/json`), pass.
fn form_like_body<B: Body>(headers: &HeaderMap, body: &B) -> Result<(), &'static str> {
    let mut typed = false;
    for v in headers.get_all(header::CONTENT_TYPE) {
        typed = true;
        let Ok(v) = v.to_str() else {
            return Err("unreadable content-type");
        };
        let essence = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim_matches([' ', '\t', '\r', '\n']);
        if SIMPLE_CONTENT_TYPES
            .iter()
            .any(|t| essence.eq_ignore_ascii_case(t))
        {
            return Err("form-like content-type on a state-changing request");
        }
    }
    if !typed && body.size_hint().exact() != Some(0) {
        return Err("body without content-type on a state-changing request");
    }
    Ok(())
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    crate::answer::json(status, v.to_string())
}

/// Serves one admin request. Without `admin.token`, `browser_guard` runs first and refuses
/// with 403 `{"message":"Forbidden"}`; with it, a request without the token gets 401. Then the
/// path and method choose the endpoint.
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let snap = gw.snapshot();
    // With a token configured, only requests carrying it get here, and they are trusted.
    // Without one, requests that look sent by a browser on a page's behalf are refused.
    if snap.admin.token.is_none()
        && let Err(reason) = browser_guard(&req, &snap.admin)
    {
        tracing::info!(
            reason,
            method = %req.method(),
            path = req.uri().path(),
            "admin request refused"
        );
        return Ok(json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"message": "Forbidden"}),
        ));
    }
    if let Some(token) = &snap.admin.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let ok = presented.is_some_and(|p| {
            aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), token.as_bytes())
                .is_ok()
        });
        if !ok {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"message": "Unauthorized"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Ok(r);
        }
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if gw.is_ready() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not ready"}),
                )
            }
        }
        (&Method::GET, "/metrics") => crate::answer::fixed(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gw.metrics().render(),
        ),
        (&Method::GET, "/config") => {
            let loaded = snap
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json(
                StatusCode::OK,
                serde_json::json!({
                    "generation": snap.generation,
                    "hash": snap.hash,
                    "loaded_at": httpdate::fmt_http_date(snap.loaded_at),
                    "loaded_at_unix": loaded,
                    "path": gw.config_path().display().to_string(),
                    "routes": snap.routes.len(),
                    "apis": apis_json(&snap),
                    "state": state_json(&gw),
                    "last_error": gw.last_error(),
                }),
            )
        }
        (&Method::POST, "/reload") => match gw.reload() {
            Ok(generation) => json(
                StatusCode::OK,
                serde_json::json!({"result": "ok", "generation": generation}),
            ),
            Err(errs) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"result": "error", "errors": errs.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            ),
        },
        (&Method::GET, "/usage") => usage(&gw, &snap, req.uri().query().unwrap_or("")).await,
        (&Method::GET, "/openapi.json") => openapi(&gw, &snap, req.uri().query().unwrap_or("")),
        (&Method::POST, "/issuer/rotate") => match &snap.issuer {
            Some(issuer) => match issuer.keys().rotate() {
                Ok(kid) => json(
                    StatusCode::OK,
                    serde_json::json!({"result": "ok", "kid": kid}),
                ),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"result": "error", "error": e}),
                ),
            },
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"message": "no issuer is configured"}),
            ),
        },
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/issuer/rotate"
            | "/usage" | "/openapi.json",
        ) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"message": "Method Not Allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "Not Found"}),
        ),
    };
    Ok(resp)
}

/// `/config`'s `apis`: each API's name, stage, hosts, base path and route count.
fn apis_json(snap: &crate::snapshot::Snapshot) -> serde_json::Value {
    snap.apis
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::json!({
                "name": &*a.entry,
                "api": &*a.name,
                "stage": a.stage.as_deref(),
                "hosts": a.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "base_path": if a.base_path.is_empty() { "/" } else { &a.base_path },
                "strip_base_path": a.strip_base_path,
                "routes": snap.routes.iter().filter(|r| r.api == i).count(),
            })
        })
        .collect()
}

/// Longest range `/usage` reports at once.
const MAX_USAGE_DAYS: i64 = 400;

/// `GET /usage?key=ID[&api=NAME|&plan=NAME][&start=YYYY-MM-DD&end=YYYY-MM-DD]`: per-day used
/// and remaining for one key in one of its plans: the one covering `api`, the one named
/// `plan`, or its only plan (a key in several plans needs one of the two).
/// The range defaults to the current quota period (or the last 7 days without a quota).
/// `remaining` is what was left of the period's quota at the end of that day.
/// `/config`'s `state`: the backend, and for Redis its topology, whether it answers, and the
/// last error talking to it (a wrong CA, a refused password) until it answers again.
fn state_json(gw: &Gateway) -> serde_json::Value {
    match &gw.limits().store {
        crate::limits::Store::Memory(_) => serde_json::json!({"backend": "memory"}),
        crate::limits::Store::Redis(r) => {
            let (topology, error) = r.status();
            serde_json::json!({"backend": "redis", "topology": topology,
                               "connected": r.is_connected(), "error": error})
        }
    }
}

/// `GET /openapi.json[?api=NAME][&aws_extensions=true]`: what `tollgate openapi` writes, for
/// the running config. The file is read again for what the snapshot does not keep (authorizer
/// details); when it no longer is the running config's text the answer is 409, so the document
/// never mixes two configs. 400 without `api` when there are several APIs, 404 for an unknown one.
fn openapi(gw: &Gateway, snap: &crate::snapshot::Snapshot, query: &str) -> Response<Full<Bytes>> {
    let mut api = None;
    let mut aws = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "api" => api = Some(v.into_owned()),
            "aws_extensions" => aws = v == "true" || v == "1",
            _ => {}
        }
    }
    let parsed = match crate::config::read(gw.config_path()) {
        Ok(p) if p.hash == snap.hash => p,
        Ok(_) => {
            return json(
                StatusCode::CONFLICT,
                serde_json::json!({"message": "the config file changed since it was loaded: reload it first"}),
            );
        }
        Err(e) => {
            return json(
                StatusCode::CONFLICT,
                serde_json::json!({"message": format!("the config file cannot be read: {e}")}),
            );
        }
    };
    match crate::openapi::document(snap, &parsed.file, api.as_deref(), aws) {
        Ok(doc) => json(StatusCode::OK, doc),
        Err(e @ crate::openapi::OpenApiError::UnknownApi(_)) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": e.to_string()}),
        ),
        Err(e @ crate::openapi::OpenApiError::WhichApi(_)) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"message": e.to_string()}),
        ),
    }
}

async fn usage(
    gw: &Gateway,
    snap: &crate::snapshot::Snapshot,
    query: &str,
) -> Response<Full<Bytes>> {
    use crate::limits::period::{day_label, parse_day};
    let bad = |m: &str| json(StatusCode::BAD_REQUEST, serde_json::json!({"message": m}));
    let params: std::collections::HashMap<String, String> =
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
    let Some(id) = params.get("key") else {
        return bad("key is required: /usage?key=ID");
    };
    let Some(key) = snap.keys.as_ref().and_then(|t| t.by_id(id)) else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "no such API key"}),
        );
    };
    let key_plans: Vec<&crate::snapshot::Plan> =
        key.plans.iter().map(|&i| &snap.plans[i]).collect();
    let chosen = match (params.get("api"), params.get("plan")) {
        (Some(api), _) => {
            // `NAME` or `NAME/STAGE`, as in `usage_plans.*.apis`.
            let Ok(entries) = crate::snapshot::api_entries(&snap.apis, api) else {
                return json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"message": "no such API"}),
                );
            };
            match key_plans
                .iter()
                .find(|p| entries.iter().any(|&i| p.covers(i)))
            {
                Some(p) => Some(*p),
                None if key_plans.is_empty() => None,
                None => {
                    return json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"message": "none of this key's usage plans covers this API"}),
                    );
                }
            }
        }
        (None, Some(plan)) => match key_plans.iter().find(|p| &*p.name == plan.as_str()) {
            Some(p) => Some(*p),
            None => {
                return json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"message": "this key is not in that usage plan"}),
                );
            }
        },
        (None, None) => match key_plans.as_slice() {
            [] => None,
            [one] => Some(*one),
            several => {
                let names: Vec<&str> = several.iter().map(|p| &*p.name).collect();
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({
                        "message": "this key is in several usage plans: add api=NAME or plan=NAME",
                        "plans": names,
                    }),
                );
            }
        },
    };
    let Some(plan) = chosen else {
        return json(
            StatusCode::OK,
            serde_json::json!({"key": id, "plan": null, "items": []}),
        );
    };
    let now = time::OffsetDateTime::now_utc();
    let (default_start, default_end) = match plan.quota {
        Some(q) => {
            let (s, e) = q.period.bounds(now);
            (
                s.date(),
                (e - time::Duration::days(1)).date().min(now.date()),
            )
        }
        None => (now.date() - time::Duration::days(6), now.date()),
    };
    let parse = |name: &str, default| match params.get(name) {
        Some(v) => parse_day(v).ok_or(()),
        None => Ok(default),
    };
    let (Ok(start), Ok(end)) = (parse("start", default_start), parse("end", default_end)) else {
        return bad("start and end are dates: YYYY-MM-DD");
    };
    if end < start || (end - start).whole_days() >= MAX_USAGE_DAYS {
        return bad("end must not be before start, and the range is at most 400 days");
    }
    // Read from the start of the period containing `start`, so `remaining` is right.
    let from = plan
        .quota
        .map_or(start, |q| {
            q.period.bounds(start.midnight().assume_utc()).0.date()
        })
        .min(start);
    let days = match gw
        .limits()
        .store
        .usage(&plan.name, &key.id, from, end)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"message": format!("usage unavailable: {e}")}),
            );
        }
    };
    let mut items = Vec::new();
    let mut period = None;
    let mut used_in_period = 0u64;
    for d in days {
        let Some(date) = parse_day(&d.day) else {
            continue;
        };
        if let Some(q) = plan.quota {
            let label = q.period.label(date.midnight().assume_utc());
            if period.as_ref() != Some(&label) {
                period = Some(label);
                used_in_period = 0;
            }
            used_in_period += d.used;
        }
        if date >= start {
            items.push(serde_json::json!({
                "day": day_label(date),
                "used": d.used,
                "remaining": plan.quota.map(|q| q.limit.saturating_sub(used_in_period)),
            }));
        }
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "key": id,
            "plan": &*plan.name,
            "quota": plan.quota.map(|q| serde_json::json!({"limit": q.limit, "period": format!("{:?}", q.period).to_lowercase()})),
            "start": day_label(start),
            "end": day_label(end),
            "items": items,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<AdminHost> {
        list.iter().map(|s| AdminHost::parse(s).unwrap()).collect()
    }

    #[test]
    fn hosts_of_a_loopback_bind() {
        let bind: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        for ok in ["127.0.0.1:9901", "localhost:9901", "LocalHost.:9901"] {
            assert!(host_allowed(ok, bind, &[]), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "127.0.0.1:9902",
            "127.0.0.1",
            "10.0.0.1:9901",
            "localhost",
            "[::1]:9901",
            "",
            ":9901",
            "127.0.0.1:",
            "127.0.0.1:x",
            "user@127.0.0.1:9901",
            "::1:9901",
        ] {
            assert!(!host_allowed(bad, bind, &[]), "{bad}");
        }
        let v6: SocketAddr = "[::1]:9901".parse().unwrap();
        assert!(host_allowed("[::1]:9901", v6, &[]));
        assert!(host_allowed("localhost:9901", v6, &[]));
        assert!(!host_allowed("[::1]:80", v6, &[]));
    }

    #[test]
    fn hosts_of_a_wildcard_bind() {
        for bind in ["0.0.0.0:9901", "[::]:9901"] {
            let bind: SocketAddr = bind.parse().unwrap();
            for ok in [
                "10.1.2.3:9901",
                "[2001:db8::5]:9901",
                "localhost:9901",
                "0.0.0.0:9901",
            ] {
                assert!(host_allowed(ok, bind, &[]), "{ok}");
            }
            for bad in ["10.1.2.3:80", "10.1.2.3", "tollgate.internal:9901"] {
                assert!(!host_allowed(bad, bind, &[]), "{bad}");
            }
        }
    }

    #[test]
    fn configured_hosts_match_by_name_with_any_port() {
        let bind: SocketAddr = "10.0.0.5:9901".parse().unwrap();
        let hosts = names(&["Gateway-1.Example.Internal.", "198.51.100.7"]);
        assert!(host_allowed(
            "gateway-1.example.internal:9901",
            bind,
            &hosts
        ));
        assert!(host_allowed("GATEWAY-1.example.internal", bind, &hosts));
        assert!(host_allowed("198.51.100.7:443", bind, &hosts));
        assert!(host_allowed("10.0.0.5:9901", bind, &hosts));
        assert!(!host_allowed("10.0.0.6:9901", bind, &hosts));
        assert!(
            !host_allowed("localhost:9901", bind, &hosts),
            "not loopback"
        );
        assert!(!host_allowed(
            "gateway-2.example.internal:9901",
            bind,
            &hosts
        ));
        assert!(!host_allowed("example.internal:9901", bind, &hosts));
    }

    #[test]
    fn port_zero_binds_check_the_host_only() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(host_allowed("127.0.0.1:45678", bind, &[]));
        assert!(!host_allowed("evil.example:45678", bind, &[]));
    }

    #[test]
    fn admin_hosts_entries_are_validated() {
        assert_eq!(
            AdminHost::parse("[2001:db8::1]"),
            Ok(AdminHost::Ip("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            AdminHost::parse("tollgate_admin.svc.cluster.local"),
            Ok(AdminHost::Name("tollgate_admin.svc.cluster.local".into()))
        );
        for bad in [
            "",
            "gw.internal:9901",
            "http://gw.internal",
            "*.internal",
            "a..b",
            "-a.b",
            "gw internal",
            &"a".repeat(64),
        ] {
            assert!(AdminHost::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn request(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    }

    #[test]
    fn the_browser_guard() {
        let admin = AdminSettings {
            bind: "127.0.0.1:9901".parse().unwrap(),
            token: None,
            hosts: Vec::new(),
        };
        let host = ("host", "127.0.0.1:9901");
        let guard = |m, p, h: &[(&str, &str)], b| browser_guard(&request(m, p, h, b), &admin);
        assert_eq!(guard("GET", "/metrics", &[host], ""), Ok(()));
        assert_eq!(
            guard("GET", "/metrics", &[], ""),
            Ok(()),
            "HTTP/1.0 has no Host"
        );
        assert_eq!(
            guard("GET", "/metrics", &[host, ("sec-fetch-site", "none")], ""),
            Ok(())
        );
        assert!(guard("GET", "/config", &[host, ("origin", "null")], "").is_err());
        assert!(
            guard(
                "GET",
                "/config",
                &[host, ("sec-fetch-site", "cross-site")],
                ""
            )
            .is_err()
        );
        assert!(
            guard(
                "GET",
                "/config",
                &[host, ("sec-fetch-site", "same-site")],
                ""
            )
            .is_err()
        );
        assert!(guard("GET", "/config", &[("host", "evil.example:9901")], "").is_err());
        assert!(guard("GET", "/config", &[host, host], "").is_err());
        assert!(
            guard("GET", "http://evil.example:9901/config", &[host], "").is_err(),
            "an absolute-form target is checked too"
        );
        assert_eq!(guard("POST", "/reload", &[host], ""), Ok(()));
        assert_eq!(
            guard(
                "POST",
                "/reload",
                &[host, ("content-type", "application/json")],
                "{}"
            ),
            Ok(())
        );
        for ct in [
            "text/plain",
            "Text/Plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert!(
                guard("POST", "/issuer/rotate", &[host, ("content-type", ct)], "").is_err(),
                "{ct}"
            );
            assert_eq!(
                guard("POST", "/usage", &[host, ("content-type", ct)], "x"),
                Ok(()),
                "only state-changing endpoints check the body ({ct})"
            );
        }
        assert!(
            guard("POST", "/reload", &[host], "x").is_err(),
            "untyped body"
        );
    }
}
