//! The API definition: which API and stage it is, and its paths and methods as routes with
//! their integrations (upstreams, mocks), security (authorizers, scopes, API keys), CORS and
//! resource policy.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::api::{Api, Flavor, Imported, METHODS};
use super::authorizers::{self, Scheme};
use super::cx::{Cx, jp, map, s, slug, str_list, strings};

/// The managed gateway's default integration timeout, which is also tollgate's upstream
/// default: no `timeout` is written for it.
const DEFAULT_TIMEOUT_MS: u64 = 29_000;

/// One operation on its way to a route.
struct Op<'d> {
    key: String,
    method: &'static str,
    /// The route's path (`/pets/{id}`), or `None` for `$default`.
    path: Option<String>,
    at: String,
    op: &'d Value,
}

/// Translates every path and method of `doc` into routes.
pub(crate) fn translate(cx: &mut Cx, api: &Api, doc: &Value) -> Imported {
    let mut out = Imported::default();
    let schemes = authorizers::schemes(cx, api, doc);
    match doc
        .get("x-amazon-apigateway-api-key-source")
        .and_then(Value::as_str)
    {
        None | Some("HEADER") => {}
        Some(other) => cx.report(
            "$[\"x-amazon-apigateway-api-key-source\"]",
            format!("API keys come from `{other}` (a Lambda authorizer's usageIdentifierKey)"),
            "tollgate reads keys from a header only: have clients send the key in `x-api-key`",
        ),
    }
    for (name, sc) in &schemes {
        if let Scheme::ApiKey { header } = sc
            && !header.eq_ignore_ascii_case("x-api-key")
        {
            out.key_header = Some(header.to_ascii_lowercase());
            let _ = name;
        }
    }
    document_extensions(cx, doc);
    let mut ops = Vec::new();
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .expect("checked in Api::read");
    for (p, item) in paths {
        let at_path = jp("$.paths", p);
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let at = jp(&at_path, m);
            let method = if m == "x-amazon-apigateway-any-method" {
                "ANY"
            } else {
                leak_upper(m)
            };
            let default_route = p == "$default"
                || p == "/$default"
                || op.get("isDefaultRoute").and_then(Value::as_bool) == Some(true);
            if default_route {
                ops.push(Op {
                    key: "$default".into(),
                    method,
                    path: None,
                    at,
                    op,
                });
                continue;
            }
            let path = match route_path(p) {
                Ok(path) => path,
                Err(why) => {
                    cx.report(
                        &at_path,
                        format!("path {p:?} cannot be a tollgate route: {why}"),
                        "not imported: add a route by hand (docs/configuration.md, \"Route keys\")",
                    );
                    break;
                }
            };
            ops.push(Op {
                key: format!("{method} {path}"),
                method,
                path: Some(path),
                at,
                op,
            });
        }
    }
    let mut cors = Cors::default();
    let mut routes: Vec<(String, Option<String>, Mapping)> = Vec::new();
    for o in &ops {
        // A preflight mock's headers become `cors` (the gateway answers preflights itself);
        // an OPTIONS method that also demands credentials stays a route for plain OPTIONS.
        let secured =
            o.op.get("security")
                .or_else(|| doc.get("security"))
                .and_then(Value::as_array)
                .is_some_and(|alts| {
                    alts.iter()
                        .any(|a| a.as_object().is_some_and(|m| !m.is_empty()))
                });
        if o.method == "OPTIONS" && cors.take_preflight(o.op) && !secured {
            continue;
        }
        let mut r = Mapping::new();
        r.insert(s("route"), s(&o.key));
        integration(cx, api, o, &mut r);
        security(cx, doc, o, &schemes, &mut out, &mut r);
        if let Some(v) = o.op.get("x-amazon-apigateway-request-validator") {
            cx.report(
                &jp(&o.at, "x-amazon-apigateway-request-validator"),
                format!("requests are validated ({v}) against the method's models"),
                "tollgate does not validate bodies or parameters: validate in the service",
            );
        }
        routes.push((o.key.clone(), o.path.clone(), r));
    }
    if doc
        .get(crate::openapi::TOLLGATE_EXPORT)
        .and_then(Value::as_bool)
        != Some(true)
    {
        empty_tails(&mut routes);
    }
    let policies = super::policy::translate(cx, api, doc, &routes);
    // The policy most routes share (the first route's on a tie) is the entry's default; the
    // others are named per route.
    let mut by_policy: Vec<(String, usize)> = Vec::new();
    for (key, _, _) in &routes {
        let Some(p) = policies.route_policy.get(key) else {
            continue;
        };
        match by_policy.iter_mut().find(|(q, _)| q == p) {
            Some((_, n)) => *n += 1,
            None => by_policy.push((p.clone(), 1)),
        }
    }
    let most = by_policy.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let common = by_policy
        .into_iter()
        .find(|(_, n)| *n == most)
        .map(|(p, _)| p);
    if let Some(c) = &common {
        out.defaults.insert(s("policy"), s(c));
    }
    for (key, _, mut r) in routes {
        if let Some(p) = policies.route_policy.get(&key)
            && Some(p) != common.as_ref()
        {
            r.insert(s("policy"), s(p));
        }
        out.route_keys.push(key);
        out.routes.push(Y::Mapping(r));
    }
    out.policies = policies.policies;
    out.cors = cors.into_config(cx, doc);
    out
}

/// Document-level extensions this module translates elsewhere or that need nothing.
const HANDLED: [&str; 5] = [
    "x-amazon-apigateway-policy",
    "x-amazon-apigateway-cors",
    "x-amazon-apigateway-api-key-source",
    "x-amazon-apigateway-importexport-version",
    // Bodies pass through as bytes: binary media types need no setting.
    "x-amazon-apigateway-binary-media-types",
];

/// Reports the document-level `x-amazon-apigateway-*` settings tollgate has no counterpart for.
fn document_extensions(cx: &mut Cx, doc: &Value) {
    let Some(obj) = doc.as_object() else { return };
    for (k, v) in obj {
        if !k.starts_with("x-amazon-apigateway-") || HANDLED.contains(&k.as_str()) {
            continue;
        }
        let (what, action) = match k.as_str() {
            "x-amazon-apigateway-gateway-responses" => (
                "customised gateway responses (the managed gateway's own error answers)",
                "tollgate answers its refusals as the contract says (docs/configuration.md,                  answers): check clients do not depend on the customised bodies or headers",
            ),
            "x-amazon-apigateway-request-validators" | "x-amazon-apigateway-request-validator" => (
                "request validation against the methods' models",
                "tollgate does not validate bodies or parameters: validate in the service",
            ),
            "x-amazon-apigateway-endpoint-configuration" => (
                "endpoint configuration (private API, VPC endpoints, disabled execute-api URL)",
                "serve tollgate only where those clients reach it, and restrict it with a policy",
            ),
            "x-amazon-apigateway-minimum-compression-size" => (
                "answers are compressed above a size",
                "tollgate passes the upstream's encoding through: compress in the service",
            ),
            _ => (
                "a setting tollgate has no counterpart for",
                "check what it did and whether it matters",
            ),
        };
        let summary = match v {
            Value::Object(m) => format!("{} entries", m.len()),
            other => other.to_string(),
        };
        cx.report(&super::cx::jp("$", k), format!("{what}: {summary}"), action);
    }
}

/// A greedy `P/{x+}` takes at least one segment on the managed gateway, while tollgate's also
/// takes `P` itself: where no `ANY P` route exists, one is added that answers as the managed
/// gateway would have, with the `$default` route's settings when there is one, else its 403
/// `Missing Authentication Token`, so that `P` does not reach the greedy route's upstream
/// under the greedy route's (perhaps weaker) checks.
fn empty_tails(routes: &mut Vec<(String, Option<String>, Mapping)>) {
    let default = routes
        .iter()
        .find(|(k, _, _)| k == "$default")
        .map(|(_, _, r)| r.clone());
    let mut added: Vec<(String, Option<String>, Mapping)> = Vec::new();
    for (_, path, _) in routes.iter() {
        let Some(path) = path else { continue };
        let Some((prefix, last)) = path.rsplit_once('/') else {
            continue;
        };
        if !(last.starts_with('{') && last.ends_with("+}")) {
            continue;
        }
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        let key = format!("ANY {prefix}");
        if routes.iter().chain(&added).any(|(k, _, _)| *k == key) {
            continue;
        }
        let mut r = match &default {
            Some(d) => d.clone(),
            None => {
                let body =
                    serde_json::json!({"message": "Missing Authentication Token"}).to_string();
                let mut r = Mapping::new();
                r.insert(
                    s("respond"),
                    map([("status", Y::Number(403.into())), ("body", s(&body))]),
                );
                r.insert(s("authorizer"), s("none"));
                r
            }
        };
        r.insert(s("route"), s(&key));
        added.push((key, Some(prefix.to_string()), r));
    }
    routes.extend(added);
}

/// The upper-case method name of an operation key.
fn leak_upper(m: &str) -> &'static str {
    match m {
        "get" => "GET",
        "put" => "PUT",
        "post" => "POST",
        "delete" => "DELETE",
        "options" => "OPTIONS",
        "head" => "HEAD",
        _ => "PATCH",
    }
}

/// An OpenAPI path as a tollgate route path: the same template syntax (`{name}`, a last
/// `{name+}`), one trailing `/` dropped. Refuses what route keys cannot say.
pub(crate) fn route_path(p: &str) -> Result<String, String> {
    let trimmed = if p.len() > 1 {
        p.strip_suffix('/').unwrap_or(p)
    } else {
        p
    };
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    match crate::routes::RouteKey::parse(&format!("GET {trimmed}")) {
        Ok(_) => Ok(trimmed.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the route's `upstream` or `respond` from its `x-amazon-apigateway-integration`.
fn integration(cx: &mut Cx, api: &Api, o: &Op, r: &mut Mapping) {
    let at = jp(&o.at, "x-amazon-apigateway-integration");
    let Some(int) = o.op.get("x-amazon-apigateway-integration") else {
        cx.report(
            &o.at,
            "the operation has no integration (exported without `extensions='integrations'`?)",
            "export again with the integrations extension, or give the route an upstream",
        );
        not_migrated(r, "no integration in the export");
        return;
    };
    let ty = int
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let uri = int.get("uri").and_then(Value::as_str).unwrap_or("");
    match ty.as_str() {
        "http_proxy" | "http" => http_integration(cx, api, o, int, &at, ty == "http", r),
        "mock" => mock(cx, int, &at, r),
        "aws_proxy" if int.get("integrationSubtype").is_none() => {
            let function = super::api::lambda_function(uri);
            match cx.lambda_url(uri, function.as_deref()) {
                Some(url) => {
                    let name = cx.upstream(url.trim_end_matches('/'), None);
                    r.insert(s("upstream"), s(&name));
                    cx.report(
                        &at,
                        format!(
                            "Lambda proxy integration {} now served over HTTP at {url}",
                            function.as_deref().unwrap_or(uri)
                        ),
                        "the service there answers plain HTTP requests (not Lambda proxy events)",
                    );
                }
                None => {
                    cx.report(
                        &at,
                        format!(
                            "Lambda proxy integration {}",
                            function.as_deref().unwrap_or(uri)
                        ),
                        "serve the function over HTTP (a container or a function URL) and import \
                         again with --lambda ARN=URL; until then the route answers 501",
                    );
                    not_migrated(r, "Lambda integration not migrated");
                }
            }
        }
        _ => {
            let what = match int.get("integrationSubtype").and_then(Value::as_str) {
                Some(sub) => format!("AWS service integration {sub}"),
                None => format!("`{ty}` integration {uri}"),
            };
            cx.report(
                &at,
                what,
                "put an HTTP service in front of the AWS call and route to it; until then the \
                 route answers 501",
            );
            not_migrated(r, "integration not migrated");
        }
    }
}

/// A route that answers 501 because its integration could not be translated.
fn not_migrated(r: &mut Mapping, why: &str) {
    let body = serde_json::json!({"message": format!("not migrated: {why}")}).to_string();
    r.insert(
        s("respond"),
        map([("status", Y::Number(501.into())), ("body", s(&body))]),
    );
}

/// `http_proxy` and `http` integrations: an upstream by origin and path prefix.
fn http_integration(
    cx: &mut Cx,
    api: &Api,
    o: &Op,
    int: &Value,
    at: &str,
    non_proxy: bool,
    r: &mut Mapping,
) {
    let uri = int.get("uri").and_then(Value::as_str).unwrap_or("");
    let timeout = int
        .get("timeoutInMillis")
        .and_then(Value::as_u64)
        .filter(|t| *t != DEFAULT_TIMEOUT_MS);
    if int.get("connectionType").and_then(Value::as_str) == Some("VPC_LINK") {
        if !uri.starts_with("http://") && !uri.starts_with("https://") {
            cx.report(
                at,
                format!("VPC link integration to {uri}"),
                "route to the service's own address with --upstream, or add an upstream by hand; \
                 until then the route answers 501",
            );
            not_migrated(r, "VPC link not migrated");
            return;
        }
        cx.report(
            at,
            format!("VPC link integration to {uri} (the load balancer behind the link)"),
            "make sure tollgate can reach that address, or rewrite it with --upstream",
        );
    }
    // A stage variable in the URI becomes a placeholder host the report names.
    let mut stage_var = None;
    let mut uri = uri.to_string();
    while let Some(i) = uri.find("${stageVariables.") {
        let var: String = uri[i + 17..].chars().take_while(|c| *c != '}').collect();
        let end = (i + 17 + var.len() + 1).min(uri.len());
        uri.replace_range(i..end, &format!("stage-{}.invalid", slug(&var, "var")));
        stage_var.get_or_insert(var);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        cx.report(
            at,
            format!("integration URI {uri:?} is not an http(s) URL"),
            "give the route an upstream by hand; until then it answers 501",
        );
        not_migrated(r, "integration URI not understood");
        return;
    };
    let (authority, path_q) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (path, query) = match path_q.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_q, None),
    };
    if query.is_some() {
        cx.report(
            at,
            format!("the integration URI {uri} adds a query string"),
            "tollgate forwards the client's query unchanged: have the service default it",
        );
    }
    let origin = format!("{scheme}://{authority}");
    let prefix = match &o.path {
        Some(route) => prefix_of(path, route),
        None => Some(path.trim_end_matches('/').to_string()).filter(|_| !path.contains('{')),
    };
    let prefix = match prefix {
        Some(p) => p,
        None => {
            if api.flavor == Flavor::Http && (path.is_empty() || path == "/") {
                // HTTP APIs forward the request path when the URI names none.
                String::new()
            } else {
                cx.report(
                    at,
                    format!("the integration sends {} to path {path:?}", o.key),
                    "tollgate forwards the route's path (after the base path) to the upstream: \
                     serve that path in the service as well",
                );
                String::new()
            }
        }
    };
    let method = int
        .get("httpMethod")
        .and_then(Value::as_str)
        .unwrap_or("ANY");
    if method != "ANY" && o.method != "ANY" && !method.eq_ignore_ascii_case(o.method) {
        cx.report(
            &jp(at, "httpMethod"),
            format!("{} is sent to the service as {method}", o.key),
            "tollgate keeps the client's method: accept it in the service",
        );
    }
    let mapped: Vec<&str> = int
        .get("requestParameters")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, v)| {
                    // Path parameters passed through unchanged are what tollgate does anyway.
                    !(k.starts_with("integration.request.path.")
                        && v.as_str()
                            .is_some_and(|v| v.starts_with("method.request.path.")))
                })
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    if !mapped.is_empty() {
        cx.report(
            &jp(at, "requestParameters"),
            format!("request parameters are mapped: {}", mapped.join(", ")),
            "tollgate forwards the client's headers and query as they are: adapt the service",
        );
    }
    if non_proxy {
        let templates = int.get("requestTemplates").and_then(Value::as_object);
        let responses = int.get("responses").and_then(Value::as_object);
        let vtl = templates.is_some_and(|t| !t.is_empty())
            || responses.is_some_and(|r| {
                r.values().any(|v| {
                    v.get("responseTemplates")
                        .and_then(Value::as_object)
                        .is_some_and(|t| !t.is_empty())
                })
            });
        if vtl {
            cx.report(
                at,
                "non-proxy integration with VTL mapping templates",
                "tollgate proxies requests and answers unchanged: move the mapping into the service",
            );
        }
    }
    let target = format!("{origin}{prefix}");
    let name = cx.upstream(&target, timeout);
    if let Some(var) = stage_var {
        cx.report(
            &jp(at, "uri"),
            format!("the URI uses stage variable {var}"),
            format!("import again with --upstream {name}=URL (the variable's value)"),
        );
    }
    r.insert(s("upstream"), s(&name));
}

/// The part of an integration URI's path before the route's path, when the URI's path is
/// that prefix followed by the route's path (parameters matching by position, `{x}` for a
/// greedy `{x+}`), so that the upstream `ORIGIN+PREFIX` receives what the managed gateway sent.
fn prefix_of(uri_path: &str, route: &str) -> Option<String> {
    let segs = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with('{') {
                    "{}".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect()
    };
    let u = segs(uri_path);
    let r = segs(route);
    if r.len() > u.len() || u[u.len() - r.len()..] != r[..] {
        return None;
    }
    let prefix = &u[..u.len() - r.len()];
    if prefix.iter().any(|s| s == "{}") {
        return None;
    }
    Some(prefix.iter().map(|s| format!("/{s}")).collect())
}

/// `mock` integrations: a fixed answer from the response the request template selects.
fn mock(cx: &mut Cx, int: &Value, at: &str, r: &mut Mapping) {
    let template = int
        .get("requestTemplates")
        .and_then(Value::as_object)
        .and_then(|t| t.get("application/json").or_else(|| t.values().next()))
        .and_then(Value::as_str);
    let status = template
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| v.get("statusCode").and_then(Value::as_u64));
    if status.is_none() && template.is_some() {
        cx.report(
            &jp(at, "requestTemplates"),
            "the mock's status is chosen by a VTL template",
            "check the status written in `respond` (the default response's)",
        );
    }
    let responses = int.get("responses").and_then(Value::as_object);
    let chosen = responses.and_then(|rs| {
        let code = |v: &Value| -> Option<u64> {
            match v.get("statusCode")? {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            }
        };
        rs.values()
            .find(|v| status.is_some() && code(v) == status)
            .or_else(|| rs.get("default"))
            .or_else(|| rs.values().next())
            .map(|v| (v, code(v)))
    });
    let status = chosen.and_then(|(_, c)| c).or(status).unwrap_or(200);
    let mut respond = Mapping::new();
    respond.insert(s("status"), Y::Number(status.into()));
    if let Some((resp, _)) = chosen {
        let templates = resp.get("responseTemplates").and_then(Value::as_object);
        let body = templates
            .and_then(|t| t.get("application/json").or_else(|| t.values().next()))
            .and_then(Value::as_str);
        if let Some(body) = body {
            if is_vtl(body) {
                cx.report(
                    &jp(at, "responses"),
                    "the mock's body is a VTL template",
                    "tollgate answers the template text as it is: rewrite it as the literal body",
                );
            }
            respond.insert(s("body"), s(body));
        }
        let mut headers = Mapping::new();
        if let Some(params) = resp.get("responseParameters").and_then(Value::as_object) {
            for (k, v) in params {
                let Some(name) = k.strip_prefix("method.response.header.") else {
                    continue;
                };
                if name.to_ascii_lowercase().starts_with("access-control-") {
                    continue; // CORS headers come from `cors`.
                }
                match v
                    .as_str()
                    .and_then(|v| v.strip_prefix('\'')?.strip_suffix('\''))
                {
                    Some(lit) => {
                        headers.insert(s(&name.to_ascii_lowercase()), s(lit));
                    }
                    None => cx.report(
                        &jp(&jp(at, "responses"), k),
                        format!("header {name} is mapped from {v}"),
                        "tollgate's fixed answers have literal headers: write the value by hand",
                    ),
                }
            }
        }
        if let Some(ct) = templates.and_then(|t| t.keys().next())
            && ct != "application/json"
            && !headers.contains_key("content-type")
        {
            headers.insert(s("content-type"), s(ct));
        }
        if !headers.is_empty() {
            respond.insert(s("headers"), Y::Mapping(headers));
        }
    }
    r.insert(s("respond"), Y::Mapping(respond));
}

/// Whether a template uses VTL (variables or directives) rather than being literal text.
fn is_vtl(t: &str) -> bool {
    [
        "$input",
        "$context",
        "$util",
        "$stageVariables",
        "#set",
        "#if",
        "#foreach",
    ]
    .iter()
    .any(|m| t.contains(m))
}

/// Writes the route's `authorizer`, `scopes` and `api_key_required` from its `security`
/// (else the document's), and creates the authorizers it needs.
fn security(
    cx: &mut Cx,
    doc: &Value,
    o: &Op,
    schemes: &BTreeMap<String, Scheme>,
    out: &mut Imported,
    r: &mut Mapping,
) {
    let (reqs, at) = match o.op.get("security") {
        Some(v) => (v, jp(&o.at, "security")),
        None => match doc.get("security") {
            Some(v) => (v, "$.security".to_string()),
            None => (&Value::Null, o.at.clone()),
        },
    };
    let mut key = false;
    // Authorizer schemes in order of appearance, with the union of their scopes.
    let mut auth: Vec<(String, Vec<String>)> = Vec::new();
    for alt in reqs.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(alt) = alt.as_object() else { continue };
        for (name, scopes) in alt {
            let scopes = str_list(Some(scopes));
            match schemes.get(name) {
                Some(Scheme::ApiKey { .. }) => key = true,
                Some(_) => match auth.iter_mut().find(|(n, _)| n == name) {
                    Some((_, have)) => {
                        for sc in scopes {
                            if !have.contains(&sc) {
                                have.push(sc);
                            }
                        }
                    }
                    None => auth.push((name.clone(), scopes)),
                },
                None => {
                    cx.report(
                        &at,
                        format!(
                            "security names scheme {name:?}, which the document does not define"
                        ),
                        "its routes refuse every request until you write the authorizer",
                    );
                    if !auth.iter().any(|(n, _)| n == name) {
                        auth.push((name.clone(), scopes));
                    }
                }
            }
        }
    }
    // REST APIs' `x-amazon-apigateway-auth: {type: AWS_IAM}` on an operation.
    if let Some(t) =
        o.op.pointer("/x-amazon-apigateway-auth/type")
            .and_then(Value::as_str)
        && t.eq_ignore_ascii_case("aws_iam")
        && auth.is_empty()
    {
        let iam = schemes
            .iter()
            .find(|(n, sc)| matches!(sc, Scheme::Sigv4 { .. }) && *n != authorizers::IAM_SCHEME)
            .map_or(authorizers::IAM_SCHEME, |(n, _)| n.as_str());
        auth.push((iam.to_string(), Vec::new()));
    }
    // A scheme tollgate can enforce goes before one it cannot (which stays closed).
    auth.sort_by_key(|(n, _)| matches!(schemes.get(n), None | Some(Scheme::Unknown)));
    if auth.len() > 1 {
        let names: Vec<&str> = auth.iter().map(|(n, _)| n.as_str()).collect();
        cx.report(
            &at,
            format!("several authorizers: {}", names.join(", ")),
            format!(
                "a tollgate route has one authorizer; {} was kept: check the others' callers",
                names[0]
            ),
        );
    }
    match auth.into_iter().next() {
        None => {
            r.insert(s("authorizer"), s("none"));
        }
        Some((name, scopes)) => {
            let (authorizer, scopes) = authorizers::for_route(cx, &name, schemes, scopes, out);
            r.insert(s("authorizer"), s(&authorizer));
            if !scopes.is_empty() {
                r.insert(s("scopes"), strings(&scopes));
            }
        }
    }
    if key {
        r.insert(s("api_key_required"), Y::Bool(true));
    }
}

/// CORS, from an HTTP API's `x-amazon-apigateway-cors` or a REST API's OPTIONS mocks.
#[derive(Debug, Default)]
struct Cors {
    origins: Vec<String>,
    methods: Vec<String>,
    headers: Vec<String>,
    expose: Vec<String>,
    max_age: Option<u64>,
    credentials: bool,
}

impl Cors {
    /// Takes an OPTIONS operation that is a mock answering a preflight (the REST console's
    /// "Enable CORS"); the gateway answers preflights itself, so no route is written for it.
    fn take_preflight(&mut self, op: &Value) -> bool {
        let int = op.get("x-amazon-apigateway-integration");
        if int
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            != Some("mock".into())
        {
            return false;
        }
        let Some(params) = int
            .and_then(|i| i.pointer("/responses/default/responseParameters"))
            .and_then(Value::as_object)
        else {
            return false;
        };
        let lit = |name: &str| -> Option<String> {
            params
                .iter()
                .find(|(k, _)| {
                    k.strip_prefix("method.response.header.")
                        .is_some_and(|h| h.eq_ignore_ascii_case(name))
                })
                .and_then(|(_, v)| v.as_str())
                .map(|v| v.trim_matches('\'').to_string())
        };
        let Some(origin) = lit("Access-Control-Allow-Origin") else {
            return false;
        };
        // Some definitions quote each name inside the value (`'a', 'b'`): the quotes go.
        let list = |v: Option<String>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(|x| x.trim().trim_matches('\'').trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default()
        };
        merge(&mut self.origins, list(Some(origin)));
        merge(&mut self.methods, list(lit("Access-Control-Allow-Methods")));
        merge(&mut self.headers, list(lit("Access-Control-Allow-Headers")));
        merge(&mut self.expose, list(lit("Access-Control-Expose-Headers")));
        if let Some(age) = lit("Access-Control-Max-Age").and_then(|a| a.parse().ok()) {
            self.max_age = Some(self.max_age.map_or(age, |m: u64| m.min(age)));
        }
        self.credentials |= lit("Access-Control-Allow-Credentials").as_deref() == Some("true");
        true
    }

    fn into_config(mut self, cx: &mut Cx, doc: &Value) -> Option<Y> {
        if let Some(c) = doc.get("x-amazon-apigateway-cors") {
            let list = |k: &str| str_list(c.get(k));
            merge(&mut self.origins, list("allowOrigins"));
            merge(&mut self.methods, list("allowMethods"));
            merge(&mut self.headers, list("allowHeaders"));
            merge(&mut self.expose, list("exposeHeaders"));
            self.max_age = c.get("maxAge").and_then(Value::as_u64).or(self.max_age);
            self.credentials |= c.get("allowCredentials").and_then(Value::as_bool) == Some(true);
        }
        if self.origins.is_empty() {
            return None;
        }
        if self.credentials && self.origins.iter().any(|o| o == "*") {
            cx.report(
                "$[\"x-amazon-apigateway-cors\"]",
                "credentials are allowed for origin `*`",
                "browsers refuse that combination; credentials were left off: list the origins",
            );
            self.credentials = false;
        }
        let mut m = vec![("allow_origins", strings(&self.origins))];
        if !self.headers.is_empty() {
            m.push(("allow_headers", strings(&self.headers)));
        }
        if !self.methods.is_empty() {
            m.push(("allow_methods", strings(&self.methods)));
        }
        if !self.expose.is_empty() {
            m.push(("expose_headers", strings(&self.expose)));
        }
        if let Some(a) = self.max_age {
            m.push(("max_age", s(&format!("{a}s"))));
        }
        if self.credentials {
            m.push(("allow_credentials", Y::Bool(true)));
        }
        Some(map(m))
    }
}

fn merge(into: &mut Vec<String>, items: Vec<String>) {
    for i in items {
        if !into.contains(&i) {
            into.push(i);
        }
    }
}
