//! Compiling `routes`: route keys, integrations, each route's authorizer, scopes, throttle and
//! policy (or the `defaults`), the embedded issuer's built-in routes, and the route table.

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

use crate::clientip::Policy;
use crate::config::Parsed;
use crate::issuer::Issuer;
use crate::proxy::Upstream;
use crate::routes::{RouteKey, RouteTable};

/// Compiles the routes (the issuer's built-in ones first) and their keys in the same order,
/// each key with the index of the `routes:` entry it came from (`None` for built-in ones). A
/// route with errors is left out.
#[allow(clippy::too_many_arguments)]
pub(super) fn compile_routes(
    parsed: &Parsed,
    registry: &Registry,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    policies: &HashMap<&str, Arc<Policy>>,
    auth: &Authorizers<'_>,
    issuer: Option<&Arc<Issuer>>,
    errs: &mut Errors,
) -> (Vec<Route>, Vec<(Option<usize>, RouteKey)>) {
    let f = &parsed.file;
    let default_auth = f.defaults.authorizer.as_deref();
    if let Some(a) = default_auth
        && a != "none"
        && !auth.jwt.contains_key(a)
        && !f.authorizers.contains_key(a)
    {
        errs.at(
            "defaults.authorizer",
            format!("authorizer {a:?} is not defined"),
        );
    }
    let default_scopes = f.defaults.scopes.clone().unwrap_or_default();
    // Built-in issuer routes come first, so a user route that collides is the one reported.
    let mut keys: Vec<(Option<usize>, RouteKey)> = Vec::new();
    let mut routes = Vec::new();
    if let Some(iss) = issuer {
        for (key, endpoint) in crate::issuer::ROUTES {
            keys.push((
                None,
                RouteKey::parse(key).expect("built-in route keys parse"),
            ));
            routes.push(Route {
                key: key.into(),
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
    let default_allow_in_path = match &f.defaults.allow_in_path {
        Some(list) => allow_in_path(list, "defaults.allow_in_path", errs),
        None => Some(crate::canonical::Exceptions::NONE),
    };
    let default_upgrades = match &f.defaults.upgrades {
        Some(list) => upgrades(list, "defaults.upgrades", errs),
        None => Some(vec![Box::from("websocket")].into_boxed_slice()),
    };
    for (i, r) in f.routes.iter().enumerate() {
        let path = format!("routes.{i}");
        let key = match RouteKey::parse(&r.route) {
            Ok(k) => k,
            Err(e) => {
                errs.at(&format!("{path}.route"), e);
                continue;
            }
        };
        if issuer.is_some() && reserved_for_issuer(&key) {
            errs.at(
                &format!("{path}.route"),
                "this path belongs to the embedded issuer; choose another path",
            );
            continue;
        }
        let integration = match (&r.upstream, &r.respond) {
            (Some(u), None) => match upstreams.get(u.as_str()) {
                Some(up) => Integration::Proxy(up.clone()),
                None => {
                    if !f.upstreams.contains_key(u) {
                        errs.at(
                            &format!("{path}.upstream"),
                            format!("upstream {u:?} is not defined"),
                        );
                    }
                    continue;
                }
            },
            (None, Some(resp)) => match fixed_response(resp) {
                Ok(fr) => Integration::Respond(fr),
                Err(e) => {
                    errs.at(&format!("{path}.respond"), e);
                    continue;
                }
            },
            (Some(_), Some(_)) => {
                errs.at(
                    &path,
                    "a route has either `upstream` or `respond`, not both",
                );
                continue;
            }
            (None, None) => {
                errs.at(&path, "a route needs `upstream` or `respond`");
                continue;
            }
        };
        let auth_name = r.authorizer.as_deref().or(default_auth).unwrap_or("none");
        let explicit_scopes = r.scopes.is_some();
        let scopes: Vec<Box<str>> = r
            .scopes
            .clone()
            .unwrap_or_else(|| default_scopes.clone())
            .into_iter()
            .map(Into::into)
            .collect();
        let auth = if auth_name == "none" {
            if explicit_scopes && !scopes.is_empty() {
                errs.at(
                    &format!("{path}.scopes"),
                    "scopes need an authorizer; this route has none",
                );
                continue;
            }
            RouteAuth::None
        } else if let Some(v) = auth.sigv4.get(auth_name) {
            RouteAuth::SigV4 {
                verifier: v.clone(),
                scopes,
                name: HeaderValue::from_str(auth_name).unwrap_or(HeaderValue::from_static("sigv4")),
            }
        } else if let Some(ext) = auth.external.get(auth_name) {
            // An external authorizer grants no scopes: explicit ones are an error, inherited
            // `defaults.scopes` do not apply.
            if explicit_scopes && !scopes.is_empty() {
                errs.at(
                    &format!("{path}.scopes"),
                    "an http authorizer grants no scopes; remove `scopes` from this route",
                );
                continue;
            }
            RouteAuth::External {
                authorizer: ext.clone(),
                name: HeaderValue::from_str(auth_name).unwrap_or(HeaderValue::from_static("http")),
            }
        } else {
            match auth.jwt.get(auth_name) {
                Some(a) => match crate::auth::insufficient_scope_header(&scopes) {
                    Ok(h) => RouteAuth::Jwt {
                        authorizer: a.clone(),
                        scopes,
                        insufficient_scope: h,
                    },
                    Err(e) => {
                        errs.at(&format!("{path}.scopes"), e);
                        continue;
                    }
                },
                None => {
                    if r.authorizer.is_some() && !f.authorizers.contains_key(auth_name) {
                        errs.at(
                            &format!("{path}.authorizer"),
                            format!("authorizer {auth_name:?} is not defined"),
                        );
                    }
                    continue;
                }
            }
        };
        let throttle = match r.throttle.as_ref().or(f.defaults.throttle.as_ref()) {
            Some(t) => {
                let at = if r.throttle.is_some() {
                    format!("{path}.throttle")
                } else {
                    "defaults.throttle".into()
                };
                let Some(spec) = spec_at(t, &at, errs) else {
                    continue;
                };
                Some(
                    registry
                        .limits()
                        .throttle(&format!("route:{}", r.route), spec),
                )
            }
            None => None,
        };
        let policy = match r.policy.as_deref().or(f.defaults.policy.as_deref()) {
            None | Some("none") => None,
            Some(name) => match policies.get(name) {
                Some(p) => Some(p.clone()),
                None => {
                    if r.policy.is_some() && !f.policies.contains_key(name) {
                        errs.at(
                            &format!("{path}.policy"),
                            format!("policy {name:?} is not defined"),
                        );
                    }
                    continue;
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
            None => default_allow_in_path,
        };
        let upgrades = match &r.upgrades {
            Some(list) => upgrades(list, &format!("{path}.upgrades"), errs),
            None => default_upgrades.clone(),
        };
        let (Some(allow_in_path), Some(upgrades)) = (allow_in_path, upgrades) else {
            continue;
        };
        keys.push((Some(i), key));
        routes.push(Route {
            key: r.route.as_str().into(),
            auth,
            integration,
            api_key_required: r.api_key_required,
            throttle,
            index: routes.len(),
            policy,
            require_client_cert: r.require_client_cert,
            allow_in_path,
            upgrades,
            duration: Default::default(),
        });
    }
    (routes, keys)
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

/// The route table of `keys`; a clash is reported at the later route, naming the earlier one.
pub(super) fn route_table(
    parsed: &Parsed,
    keys: &[(Option<usize>, RouteKey)],
    errs: &mut Errors,
) -> Option<RouteTable> {
    match RouteTable::build(&keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()) {
        Ok(t) => Some(t),
        Err(c) => {
            // Name the earlier route by its line, since indexes skip routes that failed to compile.
            let earlier = match c.first.and_then(|f| keys[f].0) {
                Some(src) => format!(
                    " (routes.{src}, line {})",
                    parsed.map.locate(&format!("routes.{src}.route")).line
                ),
                None if c.first.is_some() => " (a built-in issuer route)".to_string(),
                None => String::new(),
            };
            match keys[c.index].0 {
                Some(src) => errs.at(
                    &format!("routes.{src}.route"),
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
