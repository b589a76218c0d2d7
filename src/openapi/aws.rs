//! `tollgate openapi --aws-extensions`: the managed gateway's `x-amazon-apigateway-*` fields,
//! written the way its own exports write them, so that `tollgate import aws` reads the document
//! back into an equivalent config (routes, upstreams, mocks, authorizers, scopes, API keys,
//! CORS, resource policies).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::schema::{AuthorizerCfg, CorsCfg, FileConfig, RouteCfg};
use crate::routes::MethodSel;
use crate::snapshot::{Api, Integration, Route, Snapshot};

/// Marks a document `tollgate openapi --aws-extensions` wrote (see [`document`]).
pub const TOLLGATE_EXPORT: &str = "x-tollgate-export";

/// The managed gateway's operation key for `ANY`.
pub(super) const ANY_METHOD: &str = "x-amazon-apigateway-any-method";

/// The config's entry for `route` (top-level routes for the default API).
fn route_cfg<'f>(file: &'f FileConfig, api: &Api, route: &Route) -> Option<&'f RouteCfg> {
    let routes = match file.apis.get(&*api.entry) {
        Some(a) => &a.routes,
        None => &file.routes,
    };
    routes.iter().find(|r| *r.route == *route.key)
}

/// Adds `x-amazon-apigateway-integration`: `http_proxy` to the upstream's first target with
/// the route's path (`{x+}` as `{x}`), or a `mock` with the fixed answer.
pub(super) fn integration(op: &mut Value, file: &FileConfig, route: &Route, path: &str) {
    let int = match &route.integration {
        Integration::Proxy(up) => {
            let Some(cfg) = file.upstreams.get(up.name()) else {
                return;
            };
            let target = cfg.targets.first().map_or("", |t| t.trim_end_matches('/'));
            let mut i = json!({"type": "http_proxy", "httpMethod": "ANY",
                               "uri": format!("{target}{}", path.replace("+}", "}")),
                               "passthroughBehavior": "when_no_match"});
            if let Some(t) = cfg.timeout {
                i["timeoutInMillis"] = json!(t.0.as_millis() as u64);
            }
            i
        }
        Integration::Respond(f) => {
            let status = f.status.as_u16();
            let content_type = f
                .headers
                .iter()
                .find(|(n, _)| n == http::header::CONTENT_TYPE)
                .and_then(|(_, v)| v.to_str().ok())
                .unwrap_or("application/json");
            let params: serde_json::Map<String, Value> = f
                .headers
                .iter()
                .filter(|(n, _)| n != http::header::CONTENT_TYPE)
                .filter_map(|(n, v)| {
                    Some((
                        format!("method.response.header.{n}"),
                        json!(format!("'{}'", v.to_str().ok()?)),
                    ))
                })
                .collect();
            let mut templates = serde_json::Map::new();
            templates.insert(
                content_type.to_string(),
                json!(String::from_utf8_lossy(&f.body)),
            );
            json!({"type": "mock",
                   "requestTemplates": {"application/json": format!("{{\"statusCode\": {status}}}")},
                   "responses": {"default": {"statusCode": status.to_string(),
                                             "responseParameters": params,
                                             "responseTemplates": templates}}})
        }
        Integration::Issuer(..) => return,
    };
    op["x-amazon-apigateway-integration"] = int;
}

/// Adds `x-amazon-apigateway-authorizer` to the scheme of authorizer `name`: `jwt` with its
/// issuer and audience, `request` with the external authorizer's URL, identity sources and
/// cache TTL (SigV4's `awsSigv4` auth type is written by the plain document already).
pub(super) fn authorizer(sc: &mut Value, file: &FileConfig, snap: &Snapshot, name: &str) {
    match file.authorizers.get(name) {
        Some(AuthorizerCfg::Jwt(j)) => {
            let issuer = match (&*j.issuer, &snap.issuer) {
                ("self", Some(i)) => i.url().to_string(),
                (other, _) => other.to_string(),
            };
            let header = j.header.as_deref().unwrap_or("Authorization");
            sc["x-amazon-apigateway-authorizer"] = json!({
                "type": "jwt",
                "identitySource": format!("$request.header.{header}"),
                "jwtConfiguration": {"issuer": issuer, "audience": j.audience},
            });
        }
        Some(AuthorizerCfg::Http(h)) => {
            let sources: Vec<String> = h
                .identity
                .iter()
                .map(|i| match i.split_once(':') {
                    Some(("header", n)) => format!("method.request.header.{n}"),
                    Some(("query", n)) => format!("method.request.querystring.{n}"),
                    _ => "$context.routeKey".to_string(),
                })
                .collect();
            let mut a = json!({"type": "request", "authorizerUri": h.url,
                               "identitySource": sources.join(", ")});
            if let Some(ttl) = h.cache_ttl {
                a["authorizerResultTtlInSeconds"] = json!(ttl.0.as_secs());
            }
            sc["x-amazon-apigateway-authorizer"] = a;
        }
        Some(AuthorizerCfg::Sigv4(_)) | None => {}
    }
}

/// The resource policy name of `route` (its own, else its API's default, else the top
/// level's), `None` for no policy.
pub(super) fn route_policy(file: &FileConfig, api: &Api, route: &Route) -> Option<String> {
    let own = route_cfg(file, api, route).and_then(|r| r.policy.clone());
    let api_default = file
        .apis
        .get(&*api.entry)
        .and_then(|a| a.defaults.policy.clone());
    own.or(api_default)
        .or_else(|| file.defaults.policy.clone())
        .filter(|p| p != "none")
}

/// The route as a policy resource: `execute-api:/STAGE/METHOD/PATH`, parameters as `*`.
pub(super) fn resource(api: &Api, method: &MethodSel, path: &str) -> String {
    let stage = api.stage.as_deref().unwrap_or("*");
    let method = match method {
        MethodSel::Any => "*".to_string(),
        MethodSel::One(m) => m.as_str().to_string(),
    };
    let path: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| if s.starts_with('{') { "*" } else { s })
        .collect();
    format!("execute-api:/{stage}/{method}/{}", path.join("/"))
}

/// The document-level extensions: the API key source, CORS and the resource policy (an Allow
/// for every route, then per policy a Deny outside its allow list and a Deny of its deny list
/// on the routes that use it).
pub(super) fn document(
    doc: &mut Value,
    file: &FileConfig,
    api: &Api,
    policies: &[(String, String)],
) {
    if file.api_keys.is_some() {
        doc["x-amazon-apigateway-api-key-source"] = json!("HEADER");
    }
    // Marks tollgate's own export for `import aws`: a greedy `{x+}` also takes the empty rest
    // (the managed gateway's does not, so no route is added for the bare prefix), and each
    // policy statement lists exactly the routes it was written for.
    doc[TOLLGATE_EXPORT] = json!(true);
    let cors = match file.apis.get(&*api.entry) {
        Some(a) => a.cors.as_ref(),
        None => file.cors.as_ref(),
    };
    if let Some(c) = cors {
        doc["x-amazon-apigateway-cors"] = cors_ext(c);
    }
    if policies.is_empty() {
        return;
    }
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, res) in policies {
        by_name.entry(name).or_default().push(res);
    }
    let mut statements = vec![json!({"Effect": "Allow", "Principal": "*",
                                     "Action": "execute-api:Invoke", "Resource": "execute-api:/*"})];
    for (name, resources) in by_name {
        let Some(p) = file.policies.get(name) else {
            continue;
        };
        if let Some(allow) = &p.allow {
            statements.push(json!({"Effect": "Deny", "Principal": "*",
                "Action": "execute-api:Invoke", "Resource": resources,
                "Condition": {"NotIpAddress": {"aws:SourceIp": allow}}}));
        }
        if !p.deny.is_empty() {
            statements.push(json!({"Effect": "Deny", "Principal": "*",
                "Action": "execute-api:Invoke", "Resource": resources,
                "Condition": {"IpAddress": {"aws:SourceIp": p.deny}}}));
        }
    }
    doc["x-amazon-apigateway-policy"] = json!({"Version": "2012-10-17", "Statement": statements});
}

fn cors_ext(c: &CorsCfg) -> Value {
    let mut v = json!({"allowOrigins": c.allow_origins, "allowCredentials": c.allow_credentials});
    for (k, list) in [
        ("allowHeaders", &c.allow_headers),
        ("allowMethods", &c.allow_methods),
        ("exposeHeaders", &c.expose_headers),
    ] {
        if !list.is_empty() {
            v[k] = json!(list);
        }
    }
    if let Some(a) = c.max_age {
        v["maxAge"] = json!(a.0.as_secs());
    }
    v
}
