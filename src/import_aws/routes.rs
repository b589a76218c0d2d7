//! The definition's paths and methods as routes: their keys, security (authorizers, scopes,
//! API keys), CORS and resource policy; each route's integration is `integrations.rs`'s.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::api::{Api, Imported, METHODS, Op};
use super::authorizers::{self, Scheme};
use super::cx::{Cx, jp, map, s, str_list, strings};
use super::integrations::integration;

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
