//! An operation's `x-amazon-apigateway-integration` as the route's `upstream` (by origin and
//! path prefix) or `respond` (mocks, and 501 for what cannot be proxied), with a report of what
//! the managed gateway did that the route will not.

use serde_json::Value;
use serde_norway::{Mapping, Value as Y};

use super::api::{Api, Flavor, Op, lambda_function};
use super::cx::{Cx, jp, map, s, slug};

/// The managed gateway's default integration timeout, which is also tollgate's upstream
/// default: no `timeout` is written for it.
const DEFAULT_TIMEOUT_MS: u64 = 29_000;

/// Writes the route's `upstream` or `respond` from its `x-amazon-apigateway-integration`.
pub(crate) fn integration(cx: &mut Cx, api: &Api, o: &Op, r: &mut Mapping) {
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
            let function = lambda_function(uri);
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
