//! Compiling the APIs: the default API (top-level `routes`, `defaults`, `cors`, and the embedded
//! issuer's built-in routes) and every entry of `apis` with its hosts, base path, stage and
//! CORS; each route's key, integration, authorizer, scopes, throttle and policy (or the API's
//! `defaults`, then the top-level ones); one route table per API, and the host selector.

use super::authorizers::Authorizers;
use super::errors::*;
use super::issuer::reserved_for_issuer;
use super::model::*;
use super::plans::spec_at;
use super::registry::Registry;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::apis::{HostPattern, Selector};
use crate::clientip::Policy;
use crate::config::Parsed;
use crate::config::schema::{DefaultsCfg, RouteCfg, ThrottleCfg};
use crate::cors::Cors;
use crate::issuer::Issuer;
use crate::proxy::Upstream;
use crate::routes::{RouteKey, RouteTable};

/// What every route of every API may refer to.
pub(super) struct RouteCx<'c> {
    pub(super) parsed: &'c Parsed,
    pub(super) registry: &'c Registry,
    pub(super) upstreams: &'c HashMap<&'c str, Arc<Upstream>>,
    pub(super) policies: &'c HashMap<&'c str, Arc<Policy>>,
    pub(super) auth: &'c Authorizers<'c>,
    pub(super) issuer: Option<&'c Arc<Issuer>>,
}

/// The compiled APIs, every route of them, and the selector (`None` when the APIs clash).
pub(super) struct CompiledApis {
    pub(super) apis: Vec<Api>,
    pub(super) routes: Vec<Route>,
    pub(super) selector: Option<Selector>,
}

/// One API as the file writes it.
struct ApiSource<'f> {
    /// Its index in the snapshot's APIs (0: the default API).
    index: usize,
    /// Where its settings are (`""` for the default API, `apis.NAME.` for others).
    at: String,
    /// Prefix of its route buckets' names (`""` for the default API, so names stay as before).
    bucket_prefix: String,
    /// Its own `defaults` (the default API has only the top-level ones).
    defaults: Option<&'f DefaultsCfg>,
    routes: &'f [RouteCfg],
}

/// An API's settings for routes that set none, with where each came from.
#[derive(Clone)]
struct Inherited<'f> {
    authorizer: Option<&'f str>,
    scopes: Vec<String>,
    throttle: Option<(&'f ThrottleCfg, String)>,
    policy: Option<&'f str>,
    allow_in_path: Option<crate::canonical::Exceptions>,
    upgrades: Option<Box<[Box<str>]>>,
}

/// Longest API and stage name; both are metric labels and header values.
const MAX_NAME_LEN: usize = 64;

/// Whether `s` may name an API or a stage: 1-64 of `[A-Za-z0-9_-]`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Compiles the default API and every entry of `apis`, in that order (the default API is index
/// 0; the others follow in name order). An API or route with errors is left out; every error
/// is located.
pub(super) fn compile_apis(cx: &RouteCx<'_>, errs: &mut Errors) -> CompiledApis {
    let f = &cx.parsed.file;
    let mut apis = Vec::new();
    let mut routes = Vec::new();
    let default = ApiSource {
        index: 0,
        at: String::new(),
        bucket_prefix: String::new(),
        defaults: None,
        routes: &f.routes,
    };
    let cors = f.cors.as_ref().and_then(|c| compile_cors(c, "cors", errs));
    let top = top_defaults(cx, errs);
    let table = compile_api_routes(cx, &default, &top, &mut routes, errs);
    apis.push(Api {
        name: DEFAULT_API.into(),
        entry: DEFAULT_API.into(),
        stage: None,
        stage_header: None,
        hosts: Vec::new(),
        base_path: "".into(),
        strip_base_path: true,
        prefix_header: None,
        cors,
        table: table.unwrap_or_default(),
    });
    let mut failed = false;
    for (name, a) in &f.apis {
        let at = format!("apis.{name}");
        if name == DEFAULT_API {
            errs.at_key(
                "apis",
                name,
                "`default` names the API of the top-level routes; choose another name",
            );
            failed = true;
            continue;
        }
        if !is_name(name) {
            errs.at_key(
                "apis",
                name,
                "an API name is 1-64 letters, digits, `_` or `-`",
            );
            failed = true;
            continue;
        }
        let mut ok = true;
        let api_name = a.api.as_deref().unwrap_or(name);
        if a.api.is_some() && (!is_name(api_name) || api_name == DEFAULT_API) {
            errs.at(
                &format!("{at}.api"),
                "an API name is 1-64 letters, digits, `_` or `-`, and not `default`",
            );
            ok = false;
        }
        let mut hosts = Vec::new();
        for (i, h) in a.hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(p) if hosts.contains(&p) => {
                    errs.at(
                        &format!("{at}.hosts.{i}"),
                        format!("host {h:?} is listed twice"),
                    );
                    ok = false;
                }
                Ok(p) => hosts.push(p),
                Err(e) => {
                    errs.at(&format!("{at}.hosts.{i}"), e);
                    ok = false;
                }
            }
        }
        let base_path = match crate::apis::parse_base_path(a.base_path.as_deref().unwrap_or("/")) {
            Ok(b) => b,
            Err(e) => {
                errs.at(&format!("{at}.base_path"), e);
                ok = false;
                "".into()
            }
        };
        if ok && a.hosts.is_empty() && base_path.is_empty() {
            errs.at(
                &at,
                "an API without `hosts` serves every unclaimed host, where the top-level routes \
                 have `/`: give it `hosts` or a `base_path`",
            );
            ok = false;
        }
        let stage = match &a.stage {
            Some(s) if !is_name(s) => {
                errs.at(
                    &format!("{at}.stage"),
                    "a stage name is 1-64 letters, digits, `_` or `-`",
                );
                ok = false;
                None
            }
            Some(s) => Some(Arc::<str>::from(s.as_str())),
            None => None,
        };
        let cors = match &a.cors {
            Some(c) => {
                let compiled = compile_cors(c, &format!("{at}.cors"), errs);
                ok &= compiled.is_some();
                compiled
            }
            None => None,
        };
        if let Some(other) = apis
            .iter()
            .find(|o| &*o.name == api_name && o.stage == stage)
        {
            let which = match &stage {
                Some(s) => format!("stage {s:?}"),
                None => "no stage".to_string(),
            };
            errs.at(
                &at,
                format!(
                    "entry {:?} is already API {api_name:?} with {which}: give each stage of an API its own `stage`",
                    other.entry
                ),
            );
            ok = false;
        }
        let src = ApiSource {
            index: apis.len(),
            at: format!("{at}."),
            bucket_prefix: format!("api:{name}:"),
            defaults: Some(&a.defaults),
            routes: &a.routes,
        };
        let first = routes.len();
        let table = compile_api_routes(cx, &src, &top, &mut routes, errs);
        let (Some(table), true) = (table, ok) else {
            routes.truncate(first);
            failed = true;
            continue;
        };
        let prefix_header = (a.strip_base_path.unwrap_or(true) && !base_path.is_empty())
            .then(|| HeaderValue::from_str(&base_path).expect("base paths are header-safe"));
        apis.push(Api {
            name: api_name.into(),
            entry: name.as_str().into(),
            stage_header: stage
                .as_deref()
                .map(|s| HeaderValue::from_str(s).expect("stage names are header-safe")),
            stage,
            hosts,
            base_path,
            strip_base_path: a.strip_base_path.unwrap_or(true),
            prefix_header,
            cors,
            table,
        });
    }
    let pairs: Vec<(&[HostPattern], &str)> = apis
        .iter()
        .map(|a| (a.hosts.as_slice(), &*a.base_path))
        .collect();
    let selector = match Selector::build(&pairs) {
        Ok(s) => Some(s),
        Err(clashes) => {
            for c in clashes {
                let (first, second) = (&apis[c.first].entry, &apis[c.second].entry);
                let msg = if c.host == "*" {
                    format!(
                        "APIs {first:?} and {second:?} both serve every unclaimed host under base path {:?}",
                        c.base
                    )
                } else {
                    format!(
                        "APIs {first:?} and {second:?} both claim host {:?} with base path {:?}",
                        c.host, c.base
                    )
                };
                errs.at_key("apis", second, msg);
            }
            None
        }
    };
    CompiledApis {
        apis,
        routes,
        selector: if failed { None } else { selector },
    }
}

/// A `cors:` section; its errors are reported under `at`.
fn compile_cors(c: &crate::config::schema::CorsCfg, at: &str, errs: &mut Errors) -> Option<Cors> {
    Cors::compile(c)
        .map_err(|list| {
            for (path, msg) in list {
                let rest = path.strip_prefix("cors").unwrap_or(path);
                errs.at(&format!("{at}{rest}"), msg);
            }
        })
        .ok()
}

/// The settings the default API's routes inherit: the top-level `defaults`, checked once (an
/// undefined authorizer is reported here; an undefined policy by `compile_policies`).
fn top_defaults<'f>(cx: &RouteCx<'f>, errs: &mut Errors) -> Inherited<'f> {
    let top = &cx.parsed.file.defaults;
    check_authorizer(cx, top.authorizer.as_deref(), "defaults.authorizer", errs);
    Inherited {
        authorizer: top.authorizer.as_deref(),
        scopes: top.scopes.clone().unwrap_or_default(),
        throttle: top
            .throttle
            .as_ref()
            .map(|t| (t, "defaults.throttle".into())),
        policy: top.policy.as_deref(),
        allow_in_path: match &top.allow_in_path {
            Some(list) => allow_in_path(list, "defaults.allow_in_path", errs),
            None => Some(crate::canonical::Exceptions::NONE),
        },
        upgrades: match &top.upgrades {
            Some(list) => upgrades(list, "defaults.upgrades", errs),
            None => Some(vec![Box::from("websocket")].into_boxed_slice()),
        },
    }
}

/// The settings an entry of `apis` inherits: its own `defaults` field by field (errors located
/// under `apis.NAME.defaults`), else the top-level ones in `top`.
fn api_defaults<'f>(
    cx: &RouteCx<'f>,
    own: &'f DefaultsCfg,
    at: &str,
    top: &Inherited<'f>,
    errs: &mut Errors,
) -> Inherited<'f> {
    check_authorizer(
        cx,
        own.authorizer.as_deref(),
        &format!("{at}defaults.authorizer"),
        errs,
    );
    if let Some(p) = own.policy.as_deref()
        && p != "none"
        && !cx.parsed.file.policies.contains_key(p)
    {
        errs.at(
            &format!("{at}defaults.policy"),
            format!("policy {p:?} is not defined"),
        );
    }
    Inherited {
        authorizer: own.authorizer.as_deref().or(top.authorizer),
        scopes: own.scopes.clone().unwrap_or_else(|| top.scopes.clone()),
        throttle: match &own.throttle {
            Some(t) => Some((t, format!("{at}defaults.throttle"))),
            None => top.throttle.clone(),
        },
        policy: own.policy.as_deref().or(top.policy),
        allow_in_path: match &own.allow_in_path {
            Some(list) => allow_in_path(list, &format!("{at}defaults.allow_in_path"), errs),
            None => top.allow_in_path,
        },
        upgrades: match &own.upgrades {
            Some(list) => upgrades(list, &format!("{at}defaults.upgrades"), errs),
            None => top.upgrades.clone(),
        },
    }
}

/// Reports a defaults' authorizer (at `at`) that no authorizer section defines.
fn check_authorizer(cx: &RouteCx<'_>, name: Option<&str>, at: &str, errs: &mut Errors) {
    if let Some(a) = name
        && a != "none"
        && !cx.auth.jwt.contains_key(a)
        && !cx.parsed.file.authorizers.contains_key(a)
    {
        errs.at(at, format!("authorizer {a:?} is not defined"));
    }
}

/// Compiles one API's routes onto the end of `routes` (the default API's issuer routes first)
/// and builds its table. A route with errors is left out; a table clash is reported at the
/// later route and leaves the API without a table.
fn compile_api_routes<'f>(
    cx: &RouteCx<'f>,
    src: &ApiSource<'f>,
    top: &Inherited<'f>,
    routes: &mut Vec<Route>,
    errs: &mut Errors,
) -> Option<RouteTable> {
    let own;
    let inh = match src.defaults {
        Some(d) => {
            own = api_defaults(cx, d, &src.at, top, errs);
            &own
        }
        None => top,
    };
    let first = routes.len();
    // Route keys with the index of the entry they came from (`None`: a built-in issuer route).
    let mut keys: Vec<(Option<usize>, RouteKey)> = Vec::new();
    if let (0, Some(iss)) = (src.index, cx.issuer) {
        // Built-in issuer routes come first, so a user route that collides is the one reported.
        for (key, endpoint) in crate::issuer::ROUTES {
            keys.push((
                None,
                RouteKey::parse(key).expect("built-in route keys parse"),
            ));
            routes.push(Route {
                key: key.into(),
                api: 0,
                auth: RouteAuth::None,
                integration: Integration::Issuer(iss.clone(), endpoint),
                api_key_required: false,
                throttle: None,
                index: routes.len(),
                policy: None,
                require_client_cert: false,
                allow_in_path: crate::canonical::Exceptions::NONE,
                upgrades: Box::default(),
                duration: Default::default(),
            });
        }
    }
    for (i, r) in src.routes.iter().enumerate() {
        let path = format!("{}routes.{i}", src.at);
        if let Some((key, route)) = compile_route(cx, src, inh, r, &path, routes.len(), errs) {
            keys.push((Some(i), key));
            routes.push(route);
        }
    }
    route_table(cx.parsed, src, &keys, first, errs)
}

/// Compiles one route (at `path` in the file) as route `index`; `None` after reporting errors.
#[allow(clippy::too_many_arguments)]
fn compile_route(
    cx: &RouteCx<'_>,
    src: &ApiSource<'_>,
    inh: &Inherited<'_>,
    r: &RouteCfg,
    path: &str,
    index: usize,
    errs: &mut Errors,
) -> Option<(RouteKey, Route)> {
    let f = &cx.parsed.file;
    let path = path.to_string();
    let key = match RouteKey::parse(&r.route) {
        Ok(k) => k,
        Err(e) => {
            errs.at(&format!("{path}.route"), e);
            return None;
        }
    };
    if cx.issuer.is_some() && src.index == 0 && reserved_for_issuer(&key) {
        errs.at(
            &format!("{path}.route"),
            "this path belongs to the embedded issuer; choose another path",
        );
        return None;
    }
    let integration = match (&r.upstream, &r.respond) {
        (Some(u), None) => match cx.upstreams.get(u.as_str()) {
            Some(up) => Integration::Proxy(up.clone()),
            None => {
                if !f.upstreams.contains_key(u) {
                    errs.at(
                        &format!("{path}.upstream"),
                        format!("upstream {u:?} is not defined"),
                    );
                }
                return None;
            }
        },
        (None, Some(resp)) => match fixed_response(resp) {
            Ok(fr) => Integration::Respond(fr),
            Err(e) => {
                errs.at(&format!("{path}.respond"), e);
                return None;
            }
        },
        (Some(_), Some(_)) => {
            errs.at(
                &path,
                "a route has either `upstream` or `respond`, not both",
            );
            return None;
        }
        (None, None) => {
            errs.at(&path, "a route needs `upstream` or `respond`");
            return None;
        }
    };
    let auth_name = r.authorizer.as_deref().or(inh.authorizer).unwrap_or("none");
    let explicit_scopes = r.scopes.is_some();
    let scopes: Vec<Box<str>> = r
        .scopes
        .clone()
        .unwrap_or_else(|| inh.scopes.clone())
        .into_iter()
        .map(Into::into)
        .collect();
    let auth = if auth_name == "none" {
        if explicit_scopes && !scopes.is_empty() {
            errs.at(
                &format!("{path}.scopes"),
                "scopes need an authorizer; this route has none",
            );
            return None;
        }
        RouteAuth::None
    } else if let Some(v) = cx.auth.sigv4.get(auth_name) {
        RouteAuth::SigV4 {
            verifier: v.clone(),
            scopes,
            name: HeaderValue::from_str(auth_name).unwrap_or(HeaderValue::from_static("sigv4")),
        }
    } else if let Some(ext) = cx.auth.external.get(auth_name) {
        // An external authorizer grants no scopes: explicit ones are an error, inherited
        // `defaults.scopes` do not apply.
        if explicit_scopes && !scopes.is_empty() {
            errs.at(
                &format!("{path}.scopes"),
                "an http authorizer grants no scopes; remove `scopes` from this route",
            );
            return None;
        }
        RouteAuth::External {
            authorizer: ext.clone(),
            name: HeaderValue::from_str(auth_name).unwrap_or(HeaderValue::from_static("http")),
        }
    } else {
        match cx.auth.jwt.get(auth_name) {
            Some(a) => match crate::auth::insufficient_scope_header(&scopes) {
                Ok(h) => RouteAuth::Jwt {
                    authorizer: a.clone(),
                    scopes,
                    insufficient_scope: h,
                },
                Err(e) => {
                    errs.at(&format!("{path}.scopes"), e);
                    return None;
                }
            },
            None => {
                if r.authorizer.is_some() && !f.authorizers.contains_key(auth_name) {
                    errs.at(
                        &format!("{path}.authorizer"),
                        format!("authorizer {auth_name:?} is not defined"),
                    );
                }
                return None;
            }
        }
    };
    let throttle = match r
        .throttle
        .as_ref()
        .map(|t| (t, format!("{path}.throttle")))
        .or_else(|| inh.throttle.clone())
    {
        Some((t, at)) => {
            let spec = spec_at(t, &at, errs)?;
            Some(
                cx.registry
                    .limits()
                    .throttle(&format!("{}route:{}", src.bucket_prefix, r.route), spec),
            )
        }
        None => None,
    };
    let policy = match r.policy.as_deref().or(inh.policy) {
        None | Some("none") => None,
        Some(name) => match cx.policies.get(name) {
            Some(p) => Some(p.clone()),
            None => {
                if r.policy.is_some() && !f.policies.contains_key(name) {
                    errs.at(
                        &format!("{path}.policy"),
                        format!("policy {name:?} is not defined"),
                    );
                }
                return None;
            }
        },
    };
    if r.api_key_required && f.api_keys.is_none() {
        errs.at(
            &format!("{path}.api_key_required"),
            "API keys are required here but no `api_keys:` section is configured",
        );
    }
    let allow_in_path = match &r.allow_in_path {
        Some(list) => allow_in_path(list, &format!("{path}.allow_in_path"), errs),
        None => inh.allow_in_path,
    };
    let upgrades = match &r.upgrades {
        Some(list) => upgrades(list, &format!("{path}.upgrades"), errs),
        None => inh.upgrades.clone(),
    };
    let (Some(allow_in_path), Some(upgrades)) = (allow_in_path, upgrades) else {
        return None;
    };
    Some((
        key,
        Route {
            key: r.route.as_str().into(),
            api: src.index,
            auth,
            integration,
            api_key_required: r.api_key_required,
            throttle,
            index,
            policy,
            require_client_cert: r.require_client_cert,
            allow_in_path,
            upgrades,
            duration: Default::default(),
        },
    ))
}

/// An `allow_in_path` list. Dot segments, control bytes and bad UTF-8 cannot be allowed.
fn allow_in_path(
    list: &[String],
    at: &str,
    errs: &mut Errors,
) -> Option<crate::canonical::Exceptions> {
    let mut set = crate::canonical::Exceptions::NONE;
    for (i, name) in list.iter().enumerate() {
        match crate::canonical::Exceptions::parse(name) {
            Some(e) => set = set.union(e),
            None => {
                errs.at(
                    &format!("{at}.{i}"),
                    format!(
                        "{name:?} cannot be allowed in paths; the choices are encoded_slash, empty_segments and semicolon (dot segments, control bytes and bad UTF-8 never are)"
                    ),
                );
                return None;
            }
        }
    }
    Some(set)
}

/// An `upgrades` list: protocol names (RFC 9110 7.8 tokens), lower-cased. `h2c` is refused: an
/// HTTP/2 connection spliced to the upstream would carry requests the gateway never sees.
fn upgrades(list: &[String], at: &str, errs: &mut Errors) -> Option<Box<[Box<str>]>> {
    let mut out = Vec::new();
    for (i, name) in list.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let proto = lower.split('/').next().unwrap_or("");
        if proto == "h2c" || proto == "h2" || proto.starts_with("http") {
            errs.at(
                &format!("{at}.{i}"),
                format!("{name:?} cannot be allowed: requests on the switched connection would bypass every check"),
            );
            return None;
        }
        if proto.is_empty()
            || !proto
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            errs.at(
                &format!("{at}.{i}"),
                format!("{name:?} is not a protocol name"),
            );
            return None;
        }
        out.push(Box::from(proto));
    }
    Some(out.into_boxed_slice())
}

/// The route table of one API's `keys` (route `first + i` for `keys[i]`); a clash is reported
/// at the later route, naming the earlier one.
fn route_table(
    parsed: &Parsed,
    src: &ApiSource<'_>,
    keys: &[(Option<usize>, RouteKey)],
    first: usize,
    errs: &mut Errors,
) -> Option<RouteTable> {
    let at = &src.at;
    match RouteTable::build_from(
        &keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
        first,
    ) {
        Ok(t) => Some(t),
        Err(c) => {
            // Name the earlier route by its line, since indexes skip routes that failed to compile.
            let earlier = match c.first.and_then(|f| keys[f].0) {
                Some(i) => format!(
                    " ({at}routes.{i}, line {})",
                    parsed.map.locate(&format!("{at}routes.{i}.route")).line
                ),
                None if c.first.is_some() => " (a built-in issuer route)".to_string(),
                None => String::new(),
            };
            match keys[c.index].0 {
                Some(i) => errs.at(
                    &format!("{at}routes.{i}.route"),
                    format!("{}{earlier}", c.message),
                ),
                None => errs.at("issuer", c.message),
            }
            None
        }
    }
}

/// A `respond:` integration in its response-ready form.
fn fixed_response(r: &crate::config::schema::RespondCfg) -> Result<FixedResponse, String> {
    let status = StatusCode::from_u16(r.status).map_err(|_| format!("bad status {}", r.status))?;
    let mut headers = Vec::new();
    let mut has_ct = false;
    for (k, v) in &r.headers {
        let name = HeaderName::from_str(k).map_err(|_| format!("bad header name {k:?}"))?;
        if name == http::header::CONTENT_TYPE {
            has_ct = true;
        }
        let value = HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k:?}"))?;
        headers.push((name, value));
    }
    if !has_ct {
        headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    Ok(FixedResponse {
        status,
        headers,
        body: Bytes::from(r.body.clone()),
    })
}
